"""RegMean statistics on disk: Gram files, checked against their model and memory-mapped.

File: safetensors, float32 [in, in] per stored module, with `__metadata__` {format:
"mergescope-grams", version, fingerprint (of the model's safetensors, `Checkpoint.fingerprint`),
model, data, samples, tokens, modules, aliases (JSON)}. Layers that read the very same input tensor
share one stored Gram; `aliases` maps the others to it. The engine refuses a file whose fingerprint is
not its model's (a Gram file of another model, or of the donor given for the VLM) before touching any
weight, and memory-maps the file: a Gram is read only when a regmean tensor needs it. The Grams
themselves are computed by `merging.run.collect_grams`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from merging.errors import CheckpointError, MergescopeError, PlanError
from merging.io.checkpoint import Checkpoint, write_safetensors

FORMAT = "mergescope-grams"
VERSION = "1"
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


def save_grams(path: str | Path, grams: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Stream the Grams into one safetensors file (one tensor in host memory at a time)."""
    specs = [(name, torch.float32, tuple(g.shape)) for name, g in sorted(grams.items())]
    return write_safetensors(Path(path), specs, lambda name: grams[name].cpu(),
                             dict(metadata, format=FORMAT, version=VERSION))


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

    def __init__(self, linear_modules: dict[str, str], fan_in: dict[str, int],
                 donor_modules: dict[str, str] | None = None):
        self.linear_modules = linear_modules
        # the donor's names for the same layers: they differ where the VLM interleaves layers the
        # donor lacks (Mllama: VLM layers.4 is donor layers.2), see Layout.layer_map
        self.donor_modules = donor_modules or linear_modules
        self._fan_in = fan_in
        self._vlm: GramFile | None = None
        self._by_donor: dict[str, GramFile] = {}  # donor fingerprint → its Gram file

    def open(self, path: str | Path, model: Checkpoint, role: str) -> GramFile:
        """`path` as the Gram file of `model` (role "vlm" or "donor"). Raises MergescopeError for a file
        of another model or version, PlanError for Grams whose shapes do not fit this architecture."""
        grams = GramFile(path, model.fingerprint(), "VLM" if role == "vlm" else "donor")
        for slot_name, module in self._modules(role).items():
            fan_in = self._fan_in[slot_name]
            if module in grams and grams.shape(module) != (fan_in, fan_in):
                raise PlanError(f"{grams.path}: the Gram of {module} is {list(grams.shape(module))}, but that "
                                f"layer takes {fan_in} inputs — Gram file of another architecture")
        return grams

    def _modules(self, role: str) -> dict[str, str]:
        """Slot name → module name in the Gram file of `role` ("vlm" or "donor")."""
        return self.linear_modules if role == "vlm" else self.donor_modules

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
            modules = self._modules(role)
            lacking = [modules[n] for n in needing if modules[n] not in grams]
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
        return files["vlm"].get(module).to(device), files["donor"].get(self.donor_modules[slot_name]).to(device)
