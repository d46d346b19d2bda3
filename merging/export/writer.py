"""Export a merge: a checkpoint `from_pretrained` loads, and the plan as a mergekit configuration.

    python -m merging export --vlm V --llm L [--base B] --plan P --out DIR
                             [--grams-vlm F --grams-donor F] [--max-shard-size 5GB] [--overwrite]

DIR receives
- `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`: every tensor of the VLM's own
  safetensors, under the VLM's own keys (so the layout on disk is the VLM's: vision tower included),
  the language-model tensors the plan merges holding their merged values — bit-identical to what
  `MergeEngine.apply(plan)` writes into the resident model — and everything else the VLM's value in
  the resident model's dtype;
- `config.json` and `generation_config.json` (from the resident model, so the dtype is right) and
  every other non-weight file of the VLM's folder (tokenizer, processor, chat template);
- `mergescope_plan.yaml`, the plan; `README.md`, the model card (`merging.export.model_card`: Hub
  metadata, the sources with their fingerprints, the plan, its mergekit YAML, the methods, the per-layer α);
- `mergekit.yaml`, the plan as a mergekit configuration, where mergekit can express it (below).

Streaming: tensors are computed and written one at a time (a merged tensor in a scratch buffer on the
model's device, then its bytes to the shard file), so the memory above the resident model is a few
tensors' worth (the scratch, its CPU copy, the methods' fp32 chunks) — a shard is never assembled in
memory — and the engine's resident weights and plan are left as they were. The files are written into a
temporary folder beside DIR and renamed at the end: a failed export leaves no partial checkpoint.

The mergekit configuration comes from `merging.export.mergekit_config`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from merging.io.checkpoint import INDEX_NAME, write_safetensors
from merging.errors import MergescopeError
from merging.export.mergekit_config import MERGEKIT_NAME, MergekitUnsupported, mergekit_yaml
from merging.export.model_card import CARD_NAME, model_card
from merging.plan.merge_plan import PLAN_NAME, MergePlan

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
SKIPPED_FILES = {INDEX_NAME, "pytorch_model.bin.index.json", "README.md", ".gitattributes"}
DEFAULT_SHARD_BYTES = 5 * 10**9


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', '1e9' or an int → bytes."""
    if isinstance(text, int):
        value = text
    else:
        units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
        lowered = str(text).strip().lower()
        unit = next((u for u in units if lowered.endswith(u)), "")
        try:
            value = int(float(lowered[:len(lowered) - len(unit)] if unit else lowered) * units.get(unit, 1))
        except ValueError:
            raise MergescopeError(f"size {text!r}: expected e.g. 5GB, 500MB or 2GiB") from None
    if value < 1:
        raise MergescopeError(f"size {text!r} must be positive")
    return value


# -- the checkpoint --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    key: str                  # key in the VLM's files (and in the export)
    dtype: torch.dtype
    shape: tuple[int, ...]
    slot: str | None          # the engine slot (merged or not), or None: copied from the VLM's files

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _entries(engine) -> list[_Entry]:
    pair = engine.pair
    params = dict(pair.vlm.named_parameters(remove_duplicate=False))  # tied names too (lm_head → embedding)
    by_key = {s.vlm_key: s for s in pair.layout.slots}
    slot_of = {id(params[s.name]): s.name for s in pair.layout.slots}
    entries = []
    for key in sorted(pair.vlm_files.keys()):
        slot = by_key.get(key)
        if slot is not None:
            param = params[slot.name]
            entries.append(_Entry(key, param.dtype, tuple(param.shape), slot.name))
            continue
        shape, dtype = pair.vlm_files.shape(key), pair.vlm_files.dtype(key)
        # the resident tensor of the same name (file `visual.x` is `model.visual.x` in memory)
        same = list({id(p): p for n, p in params.items()
                     if (n == key or n.endswith("." + key)) and tuple(p.shape) == shape}.values())
        if len(same) == 1 and id(same[0]) in slot_of:
            # a tied model whose file also stores its head: the head IS the (merged) embedding, so
            # write that; the file's stale copy would make the reload untie and differ
            entries.append(_Entry(key, same[0].dtype, shape, slot_of[id(same[0])]))
            continue
        if len(same) == 1 and dtype.is_floating_point:
            dtype = same[0].dtype  # what the loader cast it to, so the export reloads into the same model
        entries.append(_Entry(key, dtype, shape, None))
    return entries


def _shards(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _model_dirs(pair) -> dict[str, Path]:
    dirs = {"VLM": pair.vlm_files.path, "donor": pair.donor.path}
    if pair.base is not None:
        dirs["base"] = pair.base.path
    return {role: (p if p.is_dir() else p.parent).resolve() for role, p in dirs.items()}


def _check_out(out: Path, pair, overwrite: bool) -> None:
    for role, folder in _model_dirs(pair).items():
        if out.resolve() == folder:
            raise MergescopeError(f"--out {out} is the {role}'s own folder; export to a new folder")
        if folder.is_relative_to(out.resolve()):  # --overwrite would delete the model
            raise MergescopeError(f"--out {out} contains the {role} ({folder}); export to a new folder")
    if out.exists() and not out.is_dir():
        raise MergescopeError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MergescopeError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")


def export_checkpoint(engine, plan: MergePlan, out: str | Path, *, max_shard_bytes: int | str = DEFAULT_SHARD_BYTES,
                      overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `plan`'s merge of `engine`'s pair to `out` (see the module docstring); returns a report.

    Validates the plan (and the Gram statistics it needs) before writing anything; leaves the engine's
    resident weights and plan as they were.
    """
    start = time.perf_counter()
    pair = engine.pair
    out = Path(out)
    targets = engine.resolve(plan)            # PlanError here: nothing written
    pair.check_files()                        # CheckpointError here for a file changed on disk
    max_shard_bytes = parse_size(max_shard_bytes)
    _check_out(out, pair, overwrite)
    try:
        mergekit_text, mergekit_reason = mergekit_yaml(plan, pair), None
    except MergekitUnsupported as exc:
        mergekit_text, mergekit_reason = None, str(exc)
    entries = _entries(engine)
    shards = _shards(entries, max_shard_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    work.chmod(0o755)  # mkdtemp makes it private; the checkpoint is an ordinary folder
    try:
        _copy_side_files(pair, work)
        weight_map, total, done = {}, 0, 0
        by_key = {e.key: e for e in entries}

        def produce(key: str) -> torch.Tensor:
            nonlocal done
            entry = by_key[key]
            if entry.slot is not None:
                tensor = engine.export_tensor(entry.slot, targets.get(entry.slot))
            else:
                tensor = pair.vlm_files.get(key).to(entry.dtype)
            done += 1
            if progress is not None:
                progress(done, len(entries))
            return tensor

        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(work / name, [(e.key, e.dtype, e.shape) for e in shard], produce, {"format": "pt"})
            for e in shard:
                weight_map[e.key] = name
                total += e.nbytes
        (work / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total},
                                                   "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")
        (work / PLAN_NAME).write_text(plan.to_yaml())
        if mergekit_text is not None:
            (work / MERGEKIT_NAME).write_text(mergekit_text)
        (work / CARD_NAME).write_text(model_card(engine, plan, targets, out, mergekit_text, mergekit_reason))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"out": str(out), "shards": len(shards), "tensors": len(entries), "merged": len(targets),
            "lm_tensors": pair.layout.total, "unmatched": list(pair.layout.unmatched),
            "bytes": total, "mergekit": MERGEKIT_NAME if mergekit_text is not None else None,
            "mergekit_reason": mergekit_reason, "plan_hash": plan.hash(),
            "seconds": round(time.perf_counter() - start, 3)}


def _copy_side_files(pair, work: Path) -> None:
    """Tokenizer, processor, chat template ... from the VLM's folder; config files from the model."""
    folder = _model_dirs(pair)["VLM"]
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in SKIPPED_FILES and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(path, work / path.name)  # follows the hub cache's symlinks
    pair.vlm.config.save_pretrained(work)
    generation = getattr(pair.vlm, "generation_config", None)
    if generation is not None and pair.vlm.can_generate():
        generation.save_pretrained(work)
