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

File: safetensors, float32 [in, in] per stored module, with `__metadata__` {format:
"mergescope-grams", version, fingerprint (of the model's safetensors, `Checkpoint.fingerprint`),
model, data, samples, tokens, modules, aliases (JSON)}. The engine refuses a file whose fingerprint is
not its model's (a Gram file of another model, or of the donor given for the VLM) before touching any
weight, and memory-maps the file: a Gram is read only when a regmean tensor needs it.

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

from .checkpoint import Checkpoint
from .errors import CheckpointError, MergescopeError, PlanError

FORMAT = "mergescope-grams"
VERSION = "1"
SCOPES = ("all", "attention")
HEAD_MODULE = "lm_head"


def decoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The language model's linear layers by decoder-relative name (`layers.0.mlp.up_proj`), plus the
    untied LM head as `lm_head` — the same names the layout uses for their weights (+ `.weight`)."""
    decoder = model.get_decoder()
    linears = {name: m for name, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)}
    head = model.get_output_embeddings()
    embed = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    if isinstance(head, torch.nn.Linear) and (embed is None or head.weight is not embed.weight):
        linears[HEAD_MODULE] = head
    return linears


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
    from .generate import build_inputs
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


def save_grams(path: str | Path, grams: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Stream the Grams into one safetensors file (one tensor in host memory at a time)."""
    from .checkpoint import write_safetensors
    specs = [(name, torch.float32, tuple(g.shape)) for name, g in sorted(grams.items())]
    return write_safetensors(Path(path), specs, lambda name: grams[name].cpu(),
                             dict(metadata, format=FORMAT, version=VERSION))


def run_grams(model: str | Path, data: str | Path, out: str | Path, *, scope: str = "all",
              max_samples: int | None = None, dtype: str = "auto", device: str = "cpu",
              progress=None) -> dict:
    """Load `model` (VLM or text LLM), compute its Grams on `data`, write them to `out`."""
    from .evaluate import load_eval_set
    from .pair import VLM_FILES, load_vlm, resolve_model_dir
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


def gram_paths(vlm: str | None, donor: str | None) -> dict[str, str] | None:
    """The `grams=` of MergeEngine from two command-line paths: both (RegMean needs the statistics of
    both models) or neither."""
    if (vlm is None) != (donor is None):
        raise MergescopeError("give both --grams-vlm and --grams-donor (RegMean needs the statistics of both "
                              "models), or neither")
    return {"vlm": vlm, "donor": donor} if vlm is not None else None


class GramFile:
    """A Gram file opened lazily (memory-mapped), checked against the model it claims to describe."""

    def __init__(self, path: str | Path, expected_fingerprint: str | None = None, role: str = "model"):
        self.path = Path(path)
        try:
            self._ckpt = Checkpoint(self.path)
        except CheckpointError as exc:
            raise MergescopeError(f"{role} Gram file: {exc}") from None
        meta = self._ckpt.metadata
        if meta.get("format") != FORMAT:
            raise MergescopeError(f"{self.path}: not a Mergescope Gram file (its metadata has no "
                                  f"format={FORMAT!r}); compute one with `python -m merging grams`")
        if meta.get("version") != VERSION:
            raise MergescopeError(f"{self.path}: Gram file version {meta.get('version')!r}; this Mergescope "
                                  f"reads version {VERSION!r} — recompute it")
        self.fingerprint_of_model = meta.get("fingerprint", "")
        if expected_fingerprint is not None and self.fingerprint_of_model != expected_fingerprint:
            raise MergescopeError(
                f"{self.path}: these Gram statistics belong to another model — computed for "
                f"{meta.get('model', '?')} (fingerprint {self.fingerprint_of_model}), but the {role} has "
                f"fingerprint {expected_fingerprint}; compute them for this {role} with `python -m merging grams`")
        try:
            self.aliases: dict[str, str] = json.loads(meta.get("aliases", "{}"))
        except json.JSONDecodeError as exc:
            raise MergescopeError(f"{self.path}: corrupt 'aliases' metadata ({exc})") from None
        self.metadata = meta
        self.scope = meta.get("modules", "?")

    def stored(self) -> list[str]:
        """The modules whose Gram is stored (the others alias one of them)."""
        return self._ckpt.keys()

    def __contains__(self, module: str) -> bool:
        return self.aliases.get(module, module) in self._ckpt

    def shape(self, module: str) -> tuple[int, ...]:
        """The [in, in] shape of `module`'s Gram (aliases resolved), from the header."""
        return self._ckpt.shape(self.aliases.get(module, module))

    def get(self, module: str) -> torch.Tensor:
        """A zero-copy float32 view of `module`'s Gram (never write to it)."""
        return self._ckpt.get(self.aliases.get(module, module))

    def fingerprint(self) -> str:
        """Identifies the statistics themselves (changes when the file is recomputed)."""
        return self._ckpt.fingerprint()


class GramSet:
    """The Gram files a RegMean merge reads: the VLM's, and one per donor, kept with its donor.

    `linear_modules` maps the name of every resident parameter that is a linear layer's weight
    (RegMean's domain) to its decoder-relative module name; `fan_in` gives that layer's input width.
    Files are opened with `open` (fingerprint and shape checks) and installed with `install`, so a
    bad file is refused before anything changes. A donor's file is looked up by the donor's
    fingerprint: switching donors and back brings its statistics back with it.
    """

    def __init__(self, linear_modules: dict[str, str], fan_in: dict[str, int]):
        self.linear_modules = linear_modules
        self._fan_in = fan_in
        self._vlm: GramFile | None = None
        self._by_donor: dict[str, GramFile] = {}  # donor fingerprint → its Gram file

    def open(self, path: str | Path, model: Checkpoint, role: str) -> GramFile:
        """`path` as the Gram file of `model` (role "vlm" or "donor"). Raises MergescopeError for a file
        of another model or version, PlanError for Grams whose shapes do not fit this architecture."""
        grams = GramFile(path, model.fingerprint(), "VLM" if role == "vlm" else "donor")
        for slot_name, module in self.linear_modules.items():
            fan_in = self._fan_in[slot_name]
            if module in grams and grams.shape(module) != (fan_in, fan_in):
                raise PlanError(f"{grams.path}: the Gram of {module} is {list(grams.shape(module))}, but that "
                                f"layer takes {fan_in} inputs — Gram file of another architecture")
        return grams

    def files(self, donor_fingerprint: str) -> dict[str, GramFile]:
        """The attached files a merge with that donor uses, by role ("vlm", "donor")."""
        found = {"vlm": self._vlm, "donor": self._by_donor.get(donor_fingerprint)}
        return {role: grams for role, grams in found.items() if grams is not None}

    def install(self, files: dict[str, GramFile], donor_fingerprint: str) -> None:
        """Make `files` (from `open`; a missing role detaches that role) the ones used with that donor."""
        self._vlm = files.get("vlm")
        if "donor" in files:
            self._by_donor[donor_fingerprint] = files["donor"]
        else:
            self._by_donor.pop(donor_fingerprint, None)

    def fingerprints(self, donor_fingerprint: str) -> dict[str, str | None]:
        """Identity of the statistics a merge with that donor uses (part of a regmean answer's cache key)."""
        files = self.files(donor_fingerprint)
        return {role: files[role].fingerprint() if role in files else None for role in ("vlm", "donor")}

    def identity(self, needing: dict[str, str], donor_fingerprint: str) -> str:
        """The fingerprint pair that tags regmean targets, after checking that every linear layer in
        `needing` (slot name → method name) has a Gram in both files. Raises PlanError naming what is
        missing and how to compute it."""
        files = self.files(donor_fingerprint)
        methods = sorted(set(needing.values()))
        missing_files = [role for role in ("vlm", "donor") if role not in files]
        if missing_files:
            raise PlanError(f"method {methods[0]!r} needs Gram statistics of both models; not attached: "
                            f"{' and '.join(missing_files)}. Compute them with `python -m merging grams --model M "
                            f"--data D --out F` and attach them with MergeEngine(pair, grams={{'vlm': F_vlm, "
                            f"'donor': F_donor}}) (CLI: --grams-vlm, --grams-donor)")
        for role, grams in files.items():
            lacking = [self.linear_modules[n] for n in needing if self.linear_modules[n] not in grams]
            if lacking:
                raise PlanError(f"{grams.path} ({role}, modules: {grams.scope}) has no Gram for {len(lacking)} "
                                f"linear layer(s) the plan merges with {methods[0]!r}, e.g. {lacking[:3]}; "
                                f"restrict the rule (e.g. to self_attn) or recompute with --modules all")
        return "{}:{}".format(files["vlm"].fingerprint(), files["donor"].fingerprint())

    def pair_for(self, slot_name: str, donor_fingerprint: str,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(G_VLM, G_donor), float32 [in, in] on `device`, for a linear layer's weight; None for any
        other tensor (RegMean merges those linearly)."""
        module = self.linear_modules.get(slot_name)
        if module is None:
            return None
        files = self.files(donor_fingerprint)
        return files["vlm"].get(module).to(device), files["donor"].get(module).to(device)
