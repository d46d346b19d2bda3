"""RegMean statistics: per-linear-layer Gram matrices of a model's own inputs, on disk, loaded lazily.

    python -m merging grams --model VLM_OR_LLM --data EVAL.jsonl --out FILE.safetensors
                            [--modules all|attention] [--max-samples N] [--dtype D] [--device D]

For every linear layer of the language model (decoder-relative module name, e.g.
`layers.3.self_attn.q_proj`, plus `lm_head`), a forward pre-hook accumulates G = XᵀX / N over all N
token positions its input X takes, in float32, one sample per forward pass (no padding, nothing kept
between samples). A VLM sees each eval item's image and question through its own processor; a text
LLM (instantiated with AutoModelForCausalLM for this step only — the engine never instantiates the
donor) sees the question alone. Image tokens count as positions: they are part of what the VLM's
decoder reads.

Layers that read the very same input tensor (q/k/v read the input norm's output, gate/up the
post-attention norm's) share one Gram: it is stored once, under the first layer's name, and the file's
`aliases` map the others to it (attention: 2 stored per layer instead of 4; MLP: 2 instead of 3).
Sharing is detected at run time — a layer called right after another on the identical tensor object —
not assumed from names.

The file format and its checks: `merging.stats.gram_files`.

Memory and disk per model at 7B: README, *RegMean statistics*. Merging with `regmean` then solves in
float64 per layer (see `methods.regmean_solve`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator

import torch

from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set
from merging.io.checkpoint import Checkpoint
from merging.model.pair import VLM_FILES, load_vlm, resolve_model_dir
from merging.run.generate import build_inputs
from merging.stats.gram_files import decoder_linears, save_grams

SCOPES = ("all", "attention")


def select_modules(names: Iterable[str], scope: str) -> list[str]:
    """The linear layers of `names` in `scope` (all, or attention only); MergescopeError for another scope."""
    if scope not in SCOPES:
        raise MergescopeError(f"--modules {scope!r}: choose one of {list(SCOPES)}")
    names = list(names)
    return names if scope == "all" else [n for n in names if ".self_attn." in f".{n}."]


class GramAccumulator:
    """Forward pre-hooks that sum XᵀX (float32) per linear-layer input, one shared input counted once."""

    def __init__(self, model: torch.nn.Module, scope: str = "all"):
        linears = decoder_linears(model)
        self.names = select_modules(linears, scope)
        if not self.names:
            raise MergescopeError(f"{type(model).__name__}: no linear layers in scope {scope!r}")
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.aliases: dict[str, str] = {}     # module → the module whose stored Gram it shares
        self._last: tuple[str, torch.Tensor] | None = None  # the latest hooked (module, input)
        self._handles = [linears[n].register_forward_pre_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            if self._last is not None and self._last[1] is x:  # held, so `is` cannot see a recycled id
                owner = self.aliases.get(self._last[0], self._last[0])
                if name in self.sums or self.aliases.setdefault(name, owner) != owner:
                    raise MergescopeError(f"{name}: its input sharing changed between samples")
                return
            if name in self.aliases:
                raise MergescopeError(f"{name}: shared its input with {self.aliases[name]} before, not now")
            self._last = (name, x)
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            total = self.sums.get(name)
            if total is None:
                total = self.sums[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32,
                                                      device=flat.device)
            total.addmm_(flat.T, flat)
            self.counts[name] = self.counts.get(name, 0) + flat.shape[0]

        return hook

    def end_sample(self) -> None:
        """Forget the last hooked input: nothing is shared across samples."""
        self._last = None  # drop the held input: nothing survives between samples

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._last = None

    def grams(self) -> dict[str, torch.Tensor]:
        """G = XᵀX / N per stored module (in place: the sums become the means)."""
        return {name: total.div_(self.counts[name]) for name, total in self.sums.items()}


def _sample_inputs(model, processor, multimodal: bool, items, max_samples: int | None) -> Iterator[dict]:
    owner = SimpleNamespace(vlm=model, processor=processor, is_multimodal=multimodal)
    for item in items[:max_samples] if max_samples else items:
        image = item.image() if multimodal else None
        yield build_inputs(owner, item.question, image)


@torch.no_grad()
def compute_grams(model: torch.nn.Module, processor, items, *, scope: str = "all",
                  max_samples: int | None = None, progress=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Gram matrices of `model`'s linear-layer inputs over eval `items` (VLM: image + question, text
    LLM: question). Returns ({module: G}, info {samples, tokens, aliases}); `progress(done, total)`."""
    multimodal = hasattr(processor, "image_processor")
    acc = GramAccumulator(model, scope)
    samples, total = 0, min(len(items), max_samples or len(items))
    try:
        for inputs in _sample_inputs(model, processor, multimodal, items, max_samples):
            model(**inputs)
            acc.end_sample()
            samples += 1
            if progress is not None:
                progress(samples, total)
    finally:
        acc.remove()
    if not samples:
        raise MergescopeError("no samples: the eval set is empty")
    missing = [n for n in acc.names if n not in acc.sums and n not in acc.aliases]
    if missing:
        raise MergescopeError(f"{len(missing)} linear layer(s) saw no input, e.g. {missing[:3]}")
    tokens = max(acc.counts.values())
    return acc.grams(), {"samples": samples, "tokens": tokens, "aliases": dict(sorted(acc.aliases.items()))}


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()[:16]


def run_grams(model: str | Path, data: str | Path, out: str | Path, *, scope: str = "all",
              max_samples: int | None = None, dtype: str = "auto", device: str = "cpu",
              progress=None) -> dict:
    """Load `model` (VLM or text LLM), compute its Grams on `data`, write them to `out`."""
    if scope not in SCOPES:
        raise MergescopeError(f"--modules {scope!r}: choose one of {list(SCOPES)}")
    if max_samples is not None and max_samples < 1:
        raise MergescopeError(f"--max-samples must be ≥ 1, got {max_samples}")
    items = load_eval_set(data)
    model_dir = resolve_model_dir(model, VLM_FILES)
    fingerprint = Checkpoint(model_dir).fingerprint()
    start = time.perf_counter()
    vlm, processor = load_vlm(model_dir, dtype, device)
    grams, info = compute_grams(vlm, processor, items, scope=scope, max_samples=max_samples, progress=progress)
    metadata = {"fingerprint": fingerprint, "model": str(model), "data": str(data),
                "data_sha256": _file_sha256(Path(data)) if Path(data).is_file() else "",
                "samples": str(info["samples"]), "tokens": str(info["tokens"]), "modules": scope,
                "aliases": json.dumps(info["aliases"], sort_keys=True), "dtype": str(next(vlm.parameters()).dtype)}
    nbytes = save_grams(out, grams, metadata)
    return {"out": str(out), "fingerprint": fingerprint, "samples": info["samples"], "tokens": info["tokens"],
            "modules": scope, "stored": len(grams), "shared": len(info["aliases"]), "bytes": nbytes,
            "seconds": round(time.perf_counter() - start, 3)}
