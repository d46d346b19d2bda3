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
- `mergescope_plan.yaml`, the plan; `README.md`, a model card naming the sources (paths and
  fingerprints), the plan, the methods and the per-layer α;
- `mergekit.yaml`, the plan as a mergekit configuration, where mergekit can express it (below).

Streaming: tensors are computed and written one at a time (a merged tensor in a scratch buffer on the
model's device, then its bytes to the shard file), so the memory above the resident model is a few
tensors' worth (the scratch, its CPU copy, the methods' fp32 chunks) — a shard is never assembled in
memory — and the engine's resident weights and plan are left as they were. (Measured: a 118 MiB
model with 4 MiB tensors, 40 MB shards: +18 MiB anonymous memory at peak.) The files are written into a temporary folder beside DIR and renamed at the end: a failed
export leaves no partial checkpoint.

mergekit (checked against mergekit 0.1.5): one merge method per configuration, no RegMean, no
vocabulary-size mismatch handling like ours, no "keep the VLM" for tensors outside every rule (we
give those weight 1 to the VLM and 0 to the donor, or t = 0 for slerp). Our components become
substring `filter`s (`.self_attn.`, `.mlp.`, `.q_proj.`, `.input_layernorm.`, `embed_tokens`,
`.norm.`, `lm_head`), first match wins as in our plans; a curve becomes a gradient — a constant a
scalar, `anchors` their own list (mergekit's gradient is our anchors formula), any other curve its
exact per-layer list. mergekit evaluates a gradient at x = (l/(L−1))·(L−1), which is not exactly l
for some l and L (e.g. L = 24, l = 13); the generator simulates mergekit's parameter resolution for
every tensor and, where a per-layer list would not reproduce α exactly, writes one single-layer slice
per layer with scalar values instead. Plans mergekit cannot express get a clear reason instead of a
file (`MergekitUnsupported`).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from . import curves
from .checkpoint import DTYPES, INDEX_NAME
from .errors import MergescopeError
from .methods import REGISTRY, get_method
from .plan import MergePlan, Target

DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
SKIPPED_FILES = {INDEX_NAME, "pytorch_model.bin.index.json", "README.md", ".gitattributes"}
DEFAULT_SHARD_BYTES = 5 * 10**9
PLAN_NAME, CARD_NAME, MERGEKIT_NAME = "mergescope_plan.yaml", "README.md", "mergekit.yaml"


class MergekitUnsupported(MergescopeError):
    """A plan mergekit cannot express; the message says why."""


# -- safetensors, streamed ------------------------------------------------------------------------
def write_safetensors(path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      produce: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file tensor by tensor: the header from `specs` (name, dtype, shape), then
    each tensor's bytes as `produce(name)` returns it (on the CPU). Returns the file's size."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape in specs:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape) or tensor.device.type != "cpu":
                raise MergescopeError(f"{name}: produced {tensor.dtype}{list(tensor.shape)} on {tensor.device}, "
                                      f"expected {dtype}{list(shape)} on cpu")
            if tensor.numel():
                f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    partial.replace(path)
    return 8 + len(raw) + offset


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
    params = dict(pair.vlm.named_parameters())
    by_key = {s.vlm_key: s for s in pair.layout.slots}
    entries = []
    for key in sorted(pair.vlm_files.keys()):
        slot = by_key.get(key)
        if slot is not None:
            param = params[slot.name]
            entries.append(_Entry(key, param.dtype, tuple(param.shape), slot.name))
            continue
        shape, dtype = pair.vlm_files.shape(key), pair.vlm_files.dtype(key)
        # the resident dtype of the same tensor (file `visual.x` is `model.visual.x` in memory): what
        # the loader cast it to, so the export reloads into the same model
        same = [p for n, p in params.items() if (n == key or n.endswith("." + key)) and tuple(p.shape) == shape]
        if len(same) == 1 and dtype.is_floating_point:
            dtype = same[0].dtype
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
        (work / CARD_NAME).write_text(model_card(engine, plan, targets, out, mergekit_reason))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"out": str(out), "shards": len(shards), "tensors": len(entries), "merged": len(targets),
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


# -- the model card --------------------------------------------------------------------------------
def model_card(engine, plan: MergePlan, targets: dict[str, Target], out: Path, mergekit_reason: str | None) -> str:
    pair = engine.pair
    fps = pair.fingerprints()
    layout = pair.layout
    used = sorted({t.method for t in targets.values()})
    lines = ["---", "tags: [mergescope, merge]", "---", "",
             f"# {out.name}", "",
             f"A layer-wise merge of the vision-language model `{pair.vlm_files.path}` with the text LLM "
             f"`{pair.donor.path}`, written by Mergescope (`python -m merging export`). α is the donor's "
             f"weight (0 = the VLM). The vision tower and projector are the VLM's own.", "",
             "## Sources", "", "| role | model | fingerprint |", "|---|---|---|",
             f"| VLM | `{pair.vlm_files.path}` | `{fps['vlm']}` |",
             f"| donor LLM | `{pair.donor.path}` | `{fps['donor']}` |"]
    if pair.base is not None:
        lines.append(f"| base | `{pair.base.path}` | `{fps['base']}` |")
    for role, gram in engine.grams.items():
        if any(get_method(t.method).needs_grams for t in targets.values()):
            lines.append(f"| Gram statistics ({role}) | `{gram.path}` | `{gram.fingerprint()}` |")
    lines += ["", f"## Plan (hash `{plan.hash()}`, also in `{PLAN_NAME}`)", "", "```yaml",
              plan.to_yaml().rstrip() if plan.rules else "rules: []", "```", "",
              f"{len(targets)} of {len(layout.slots)} language-model tensors merged; the others keep the "
              f"VLM's values."]
    for note in layout.notes:
        lines.append(f"Note: {note}")
    if used:
        lines += ["", "## Methods", "", "| method | formula | parameters |", "|---|---|---|"]
        for name in used:
            m = REGISTRY[name]
            params = "; ".join(f"`{p.name}`: {p.doc}" for p in m.params) or "–"
            formula = m.formula.replace("|", "\\|")  # a literal | inside a table cell
            lines.append(f"| `{name}` | {formula} | {params} |")
        lines += ["", "## α per layer", "", _alpha_table(layout, targets)]
    lines += ["", "## mergekit", ""]
    lines.append(f"`{MERGEKIT_NAME}` expresses this plan for mergekit." if mergekit_reason is None
                 else f"No `{MERGEKIT_NAME}`: {mergekit_reason}")
    lines += ["", "## Reproduce", "", "```bash",
              f"python -m merging export --vlm {pair.vlm_files.path} --llm {pair.donor.path}"
              + (f" --base {pair.base.path}" if pair.base is not None else "")
              + f" --plan {PLAN_NAME} --out {out.name}", "```", ""]
    return "\n".join(lines)


def _alpha_table(layout, targets: dict[str, Target]) -> str:
    groups = list(dict.fromkeys(s.group for s in layout.slots if s.layer is not None))
    rows = ["| layer | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]

    def cell(slots) -> str:
        values = sorted({f"{targets[s.name].method} {targets[s.name].alpha:.4g}" for s in slots if s.name in targets})
        return ", ".join(values) if values else "–"

    for layer in range(layout.num_layers):
        in_layer = [s for s in layout.slots if s.layer == layer]
        rows.append(f"| {layer} | " + " | ".join(cell([s for s in in_layer if s.group == g]) for g in groups) + " |")
    outside = [s for s in layout.slots if s.layer is None]
    for role in dict.fromkeys(s.role for s in outside):
        rows.append(f"| {role} | " + cell([s for s in outside if s.role == role]) + " |" + " |" * (len(groups) - 1))
    return "\n".join(rows)


# -- mergekit --------------------------------------------------------------------------------------
MERGEKIT_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties")
_TASK_VECTOR = ("task_arithmetic", "ties", "dare_linear", "dare_ties")


@dataclass(frozen=True)
class _Filter:
    text: str | None  # mergekit's substring filter; None: every tensor (a rule on `all`)
    layer: bool       # matches decoder-layer tensors (else embeddings, final norm, head)


def _filters(component: str, layout, curve: dict, sliced: bool) -> list[_Filter]:
    if component == "all":
        # one unfiltered entry; mergekit evaluates it at t = 0 for the tensors outside the layers, which is
        # our α_0 unless the curve gives `non_layer` (or each slice holds one layer's scalar): then those
        # tensors get their own filters first
        explicit = "non_layer" in curve or sliced
        outside = list(dict.fromkeys(s.role for s in layout.slots if s.layer is None)) if explicit else []
        return [f for role in outside for f in _filters(role, layout, curve, sliced)] + [_Filter(None, True)]
    if component == "norms":
        return [f for role in dict.fromkeys(s.role for s in layout.slots if s.group == "norms")
                for f in _filters(role, layout, curve, sliced)]
    if component in ("embed_tokens", "lm_head"):
        return [_Filter(component, False)]
    if component == "norm":
        return [_Filter(".norm.", False)]
    return [_Filter(f".{component}.", True)]


def _layer_value(curve: dict, alphas: list[float], per_layer: bool, layer: int | None):
    """The mergekit value for a layer filter: a scalar, the anchors, or the per-layer list."""
    if layer is not None:
        return alphas[layer]
    if len(set(alphas)) == 1:
        return alphas[0]
    if curve["preset"] == "anchors" and not per_layer:
        return list(curve["values"])
    return list(alphas)


def _complement(value):
    return [1.0 - v for v in value] if isinstance(value, list) else 1.0 - value


def _setting(items: list[tuple[str | None, Any]], fallback: Any):
    """A mergekit parameter setting: [{filter, value}, ..., {value: fallback}] (first match wins), or one
    value where a single entry covers every tensor."""
    entries = []
    for flt, value in items + [(None, fallback)]:
        entries.append({"filter": flt, "value": value} if flt is not None else {"value": value})
        if flt is None:
            break  # nothing after an unfiltered entry is ever reached
    values = [e["value"] for e in entries]
    if len(entries) == 1 or (not any(isinstance(v, list) for v in values) and len(set(values)) == 1):
        return values[0]
    return entries


def _parameters(method: str, plan: MergePlan, layout, layer: int | None) -> tuple[dict, dict, dict]:
    """(VLM's, donor's, shared) mergekit parameters; `layer` set: scalars for that layer's slice."""
    L = layout.num_layers
    alpha_items, density_items, lambda_items, normalize_items = [], [], [], []
    for rule in plan.rules:
        alphas = curves.layer_alphas(rule.curve, L)
        for component in rule.components:
            for f in _filters(component, layout, rule.curve, sliced=layer is not None):
                value = (_layer_value(rule.curve, alphas, per_layer=layer is not None, layer=layer) if f.layer
                         else curves.non_layer_alpha(rule.curve, alphas))
                alpha_items.append((f.text, value))
                if "density" in rule.params:
                    density_items.append((f.text, rule.params["density"]))
                lambda_items.append((f.text, rule.params.get("lambda", 1.0)))
                if "normalize" in rule.params:
                    normalize_items.append((f.text, bool(rule.params["normalize"])))
    if method == "slerp":
        return {}, {}, {"t": _setting(alpha_items, 0.0)}
    vlm = {"weight": _setting([(f, _complement(v)) for f, v in alpha_items], 1.0)}
    donor = {"weight": _setting(alpha_items, 0.0)}
    shared: dict[str, Any] = {}
    if method == "linear":
        shared["normalize"] = False
        return vlm, donor, shared
    if density_items:
        vlm["density"] = donor["density"] = _setting(density_items, 1.0)
    shared["lambda"] = _setting(lambda_items, 1.0)
    if normalize_items:
        defaults = {p.name: p.default for p in get_method(method).params}
        shared["normalize"] = _setting(normalize_items, defaults.get("normalize") == 1)
    if method.startswith("dare"):
        shared["rescale"] = True
    return vlm, donor, shared


def _model_path(ckpt) -> str:
    path = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    return str(path.resolve())  # absolute: mergekit takes a relative name for a hub id


def mergekit_config(plan: MergePlan, pair) -> dict:
    """`plan` as a mergekit configuration (a dict), or MergekitUnsupported saying why it cannot be."""
    layout = pair.layout
    targets = plan.targets(layout, has_base=pair.base is not None)
    if not targets:
        raise MergekitUnsupported("the plan merges nothing (it is the base VLM); there is nothing for mergekit to do")
    used: dict[str, list[int]] = {}
    for i, rule in enumerate(plan.rules):
        if any(any(s.matches(c) for c in rule.components) and targets.get(s.name) is not None
               and targets[s.name].method == rule.method for s in layout.slots):
            used.setdefault(rule.method, []).append(i)
    if len(used) > 1:
        listed = ", ".join(f"{m} (rule{'s' * (len(rules) > 1)} {', '.join(map(str, rules))})"
                           for m, rules in used.items())
        raise MergekitUnsupported(f"mergekit applies one merge method per configuration; this plan mixes {listed}")
    (method,) = used
    if method not in MERGEKIT_METHODS:
        what = "RegMean" if method == "regmean" else repr(method)
        raise MergekitUnsupported(f"mergekit has no {what} merge method")
    shared_rows = [s.rel for s in layout.slots if s.shared_rows is not None and s.name in targets]
    if shared_rows:
        raise MergekitUnsupported(f"the vocabularies differ ({', '.join(shared_rows)}): Mergescope merges the shared "
                                  f"rows and keeps the VLM's extra ones, which mergekit's tokenizer handling does not")
    live_rules = used[method]
    plan = MergePlan(tuple(r for i, r in enumerate(plan.rules) if i in live_rules))  # drop unreachable rules
    vlm, donor = _model_path(pair.vlm_files), _model_path(pair.donor)
    base = _model_path(pair.base) if method in _TASK_VECTOR else None
    dtype = dict(pair.vlm.named_parameters())[layout.slots[0].name].dtype
    out_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    head: dict[str, Any] = {"merge_method": method}
    if method == "slerp":
        head["base_model"] = vlm
    elif base is not None:
        head["base_model"] = base

    def models_form() -> dict:
        p_vlm, p_donor, shared = _parameters(method, plan, layout, None)
        models = [{"model": vlm, **({"parameters": p_vlm} if p_vlm else {})},
                  {"model": donor, **({"parameters": p_donor} if p_donor else {})}]
        if base is not None:
            models.append({"model": base})
        return {**head, "models": models, **({"parameters": shared} if shared else {}),
                "dtype": "float32", "out_dtype": out_dtype}

    def slices_form() -> dict:
        slices = []
        for layer in range(layout.num_layers):
            p_vlm, p_donor, shared = _parameters(method, plan, layout, layer)
            sources = [{"model": vlm, "layer_range": [layer, layer + 1], **({"parameters": p_vlm} if p_vlm else {})},
                       {"model": donor, "layer_range": [layer, layer + 1], **({"parameters": p_donor} if p_donor else {})}]
            if base is not None:
                sources.append({"model": base, "layer_range": [layer, layer + 1]})
            slices.append({"sources": sources, **({"parameters": shared} if shared else {})})
        return {**head, "slices": slices, "dtype": "float32", "out_dtype": out_dtype}

    config = models_form()
    if _mismatches(config, method, plan, pair, targets):
        config = slices_form()
        bad = _mismatches(config, method, plan, pair, targets)
        if bad:
            raise MergekitUnsupported(f"mergekit's filters cannot reproduce this plan for {bad[0]}")
    return config


# a port of mergekit's parameter resolution (mergekit.config.evaluate_setting, ConfigReader,
# MergePlanner.plan_slice), to check the generated configuration before anyone runs it
def _evaluate(setting, name: str, t: float):
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return setting
    if isinstance(setting, list) and setting:
        if all(isinstance(e, (bool, int, float)) for e in setting):
            if any(isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            flt = cond.get("filter")
            if flt is None or flt == "*" or (name and flt in name):
                return _evaluate(cond["value"], name, t)
    return None


def _resolve(scopes: list[dict | None], param: str, name: str, t: float):
    for scope in scopes:
        if scope and param in scope:
            value = _evaluate(scope[param], name, t)
            if value is not None:
                return value
    return None


def _mismatches(config: dict, method: str, plan: MergePlan, pair, targets: dict[str, Target]) -> list[str]:
    layout = pair.layout
    L = layout.num_layers
    bad = []
    for slot in layout.slots:
        if "slices" in config:
            index = slot.layer if slot.layer is not None else (0 if slot.role == "embed_tokens" else -1)
            piece = config["slices"][index]
            sources, shared_scope = piece["sources"], piece.get("parameters")
            t = 1.0 if slot.layer is not None else 0.0  # a one-layer slice evaluates gradients at t = 1
        else:
            sources, shared_scope = config["models"], None
            t = (slot.layer / (L - 1) if L > 1 else 1.0) if slot.layer is not None else 0.0
        top = config.get("parameters")

        def get(param: str, model: int | None):
            scopes = ([sources[model].get("parameters")] if model is not None else []) + [shared_scope, top]
            return _resolve(scopes, param, slot.vlm_key if model != 1 else slot.donor_key, t)

        target = targets.get(slot.name)
        alpha = target.alpha if target is not None else 0.0
        params = dict(target.params) if target is not None else {}
        want: list[tuple[str, int | None, Any, float]] = []  # (param, model, value, tolerance)
        if method == "slerp":
            want.append(("t", None, alpha, 0.0))
        else:
            want += [("weight", 1, alpha, 0.0), ("weight", 0, 1.0 - alpha, 1e-12)]
            if method != "linear":
                want.append(("lambda", None, params.get("lambda", 1.0), 0.0))
                if any(p.name == "density" for p in get_method(method).params):
                    want += [("density", m, params.get("density", 1.0), 0.0) for m in (0, 1)]
                if target is not None and "normalize" in params:
                    want.append(("normalize", None, bool(params["normalize"]), 0.0))
        for param, model, value, tol in want:
            got = get(param, model)
            if got is None or abs(float(got) - float(value)) > tol:
                bad.append(f"{slot.rel} ({param}: mergekit {got}, plan {value})")
                break
    return bad


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # write shared values out, no YAML anchors
        return True


_Dumper.add_representer(list, lambda d, data: d.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(isinstance(e, (int, float)) for e in data)))


def mergekit_yaml(plan: MergePlan, pair) -> str:
    """`mergekit_config` as commented YAML (raises MergekitUnsupported where mergekit cannot express the plan)."""
    config = mergekit_config(plan, pair)
    method = config["merge_method"]
    targets = plan.targets(pair.layout, has_base=pair.base is not None)
    partial = len(targets) < len(pair.layout.slots)
    notes = [f"mergekit configuration of Mergescope plan {plan.hash()} ({PLAN_NAME}); α = the donor's weight.",
             "Components are substring filters, first match wins; the last entry (no filter) is for tensors",
             "no rule matches, which keep the VLM."]
    if method == "linear":
        notes += ["linear: weights (1−α, α), normalize false → (1−α)·θ_V + α·θ_L. Mergescope computes",
                  "θ_V + α·(θ_L − θ_V) (bf16: one fused lerp): equal up to fp32 rounding, which can move",
                  "a rare element by one bf16 step."]
    elif method == "slerp":
        notes += ["slerp: the VLM is base_model, so t = α (t = 0 → the VLM). Equal up to fp32 rounding."]
    else:
        notes += [f"{method}: weights (1−α, α) on the task vectors θ_i − θ_B, base_model = the common base."]
        if partial:
            notes += ["Tensors outside every rule get weights (1, 0) and density 1: θ_B + (θ_V − θ_B), equal to",
                      "θ_V up to one fp32 rounding (Mergescope keeps θ_V exactly)."]
        if method == "ties":
            notes += ["ties: mergekit keeps the int(density·n) largest |τ| (Mergescope: ⌈density·n⌉, and every",
                      "entry tied with the threshold); identical when density·n is whole and magnitudes distinct."]
        if method.startswith("dare"):
            seeds = sorted({r.params.get("seed", 0) for r in plan.rules if r.method == method})
            notes += ["DARE: mergekit draws its masks from torch's global generator (mergekit-yaml",
                      f"--random-seed; the plan's seed {', '.join(map(str, seeds))} does not carry over) and rescales",
                      "kept entries to the task vector's L1 norm (rescale: true); Mergescope scales by 1/density",
                      "with per-tensor seeded masks. Equal in expectation, not per element."]
    if "slices" in config:
        notes += ["One single-layer slice per layer: a per-layer gradient list would not reproduce every α",
                  "exactly at this depth (mergekit evaluates it at (l/(L−1))·(L−1), which is not always l)."]
    if pair.is_multimodal:
        notes += ["The VLM is a vision-language model: mergekit merges models of one architecture, so this",
                  "file documents the merge (or serves a VLM pair of the same family); `python -m merging",
                  "export` writes the merged VLM itself."]
    header = "".join(f"# {line}\n" for line in notes)
    return header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
