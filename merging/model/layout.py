"""Map every VLM language-model parameter to its donor tensor, by decoder-relative name.

Families differ in where the decoder lives (in memory: `model.language_model` for Qwen2.5-VL and
LLaVA, `model.text_model` for Idefics3/SmolVLM, `model` for a plain causal LM; on disk: `model.`,
`language_model.model.`, `model.text_model.`, ...), but below the decoder every family uses the
names of the text LLM itself (`layers.3.self_attn.q_proj.weight`). So we find the decoder with
`get_decoder()`, take parameter names relative to it, and locate the same relative names in each
checkpoint by detecting that checkpoint's decoder prefix — no per-family string surgery.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from merging.io.checkpoint import Checkpoint
from merging.errors import CheckpointError, LayoutError
from merging.io.quantization import refusal

ATTENTION_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_ROLES = ("gate_proj", "up_proj", "down_proj")
NORM_ROLES = ("input_layernorm", "post_attention_layernorm")
NON_LAYER_ROLES = ("embed_tokens", "norm", "lm_head")
# Groups a plan may name instead of single roles. Family-specific roles (e.g. Gemma's q_norm) join
# the group of the submodule they live in.
GROUPS = ("self_attn", "mlp", "norms", "all")
KNOWN_COMPONENTS = frozenset(ATTENTION_ROLES + MLP_ROLES + NORM_ROLES + NON_LAYER_ROLES + GROUPS)
HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Slot:
    """One mergeable VLM parameter and where its donor and original values live."""

    name: str             # parameter name in the resident VLM, e.g. model.language_model.layers.0.mlp.up_proj.weight
    rel: str              # decoder-relative name, e.g. layers.0.mlp.up_proj.weight (or lm_head.weight)
    role: str             # q_proj, ..., input_layernorm, embed_tokens, norm, lm_head
    group: str            # self_attn, mlp, norms, or the role itself outside layers
    layer: int | None     # decoder layer index; None for embed_tokens, norm, lm_head
    donor_key: str        # key in the donor's safetensors
    vlm_key: str          # key of the original in the VLM's own safetensors
    shape: tuple[int, ...]
    shared_rows: int | None = None  # vocab mismatch: only the first rows are merged

    def matches(self, component: str) -> bool:
        """Whether a plan component (`all`, a group such as `mlp`, or a role such as `q_proj`) covers this slot."""
        return component in ("all", self.role, self.group)


@dataclass
class Layout:
    """The mapping from the resident VLM's language-model parameters to the donor's tensors.

    `slots` are what can merge; `unmatched`, `mismatched` and `notes` report what cannot and why."""
    num_layers: int
    slots: list[Slot]
    unmatched: list[str] = field(default_factory=list)                    # VLM params with no donor tensor
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, vlm shape, donor shape)
    notes: list[str] = field(default_factory=list)                        # e.g. vocab-size report
    missing_in_index: list[str] = field(default_factory=list)  # unmatched names a stale index still lists

    @property
    def total(self) -> int:
        """How many VLM language-model tensors there are: mergeable, without a donor tensor, or mismatched."""
        return len(self.slots) + len(self.unmatched) + len(self.mismatched)

    def coverage(self) -> str:
        """'51 of 51' or '44 of 51': language-model tensors the donor can merge, of all of them."""
        return f"{len(self.slots)} of {self.total}"

    def check_coverage(self, allow_partial: bool, path: object = "the donor") -> None:
        """Refuse a donor that lacks tensors the VLM's layout maps (LayoutError naming them), unless
        `allow_partial`: then note, in `notes` (shown by the CLI, the card and the UI), what keeps the VLM's values."""
        if not self.unmatched:
            return
        more = len(self.unmatched) - 6
        listed = ", ".join(self.unmatched[:6]) + (f" (and {more} more)" if more > 0 else "")
        stale = (f"; {len(self.missing_in_index)} of them are listed in its index but in no shard (stale index)"
                 if self.missing_in_index else "")
        if not allow_partial:
            raise LayoutError(f"{path}: partial checkpoint — {len(self.unmatched)} of the VLM's {self.total} "
                              f"language-model tensors have no donor tensor: {listed}{stale}; use the complete "
                              f"checkpoint, or pass --allow-partial (allow_partial=True) to merge the rest")
        note = (f"partial donor: {self.coverage()} language-model tensors can merge; {len(self.unmatched)} have no "
                f"donor tensor and keep the VLM's values: {listed}{stale}")
        if note not in self.notes:
            self.notes.append(note)
            warnings.warn(note, stacklevel=2)

    def require_compatible(self) -> None:
        """Raise LayoutError naming the tensors if the donor does not share the VLM's backbone."""
        if self.mismatched:
            listed = "; ".join(f"{n}: VLM {list(a)} vs donor {list(b)}" for n, a, b in self.mismatched[:8])
            more = f" (and {len(self.mismatched) - 8} more)" if len(self.mismatched) > 8 else ""
            raise LayoutError(f"the donor does not share the VLM's language backbone: "
                              f"{len(self.mismatched)} tensor shapes differ — {listed}{more}")
        if not self.slots:
            raise LayoutError("no VLM language-model tensor has a counterpart in the donor checkpoint")

    def roles(self) -> list[str]:
        """The roles present (q_proj, …, lm_head), in layout order."""
        return list(dict.fromkeys(s.role for s in self.slots))


def classify(rel: str) -> tuple[str, str, int | None]:
    """(role, group, layer) of a decoder-relative parameter name."""
    parts = rel.split(".")
    if parts[0] == "layers" and len(parts) >= 4 and parts[1].isdigit():
        role = parts[-2]
        if parts[2] in ("self_attn", "mlp"):
            group = parts[2]
        elif "norm" in role:
            group = "norms"
        else:
            group = parts[2]
        return role, group, int(parts[1])
    role = "lm_head" if rel == HEAD else parts[0]
    return role, role, None


def find_decoder_prefix(keys: list[str], rels: list[str]) -> str | None:
    """The key prefix under which `rels` (decoder-relative names) appear in `keys`, or None."""
    keyset = set(keys)
    anchor = next((r for r in rels if r.startswith("layers.0.")), rels[0])
    candidates = {k[: -len(anchor)] for k in keys
                  if k.endswith(anchor) and (len(k) == len(anchor) or k[-len(anchor) - 1] == ".")}
    if not candidates:
        return None
    return max(sorted(candidates), key=lambda p: sum(p + r in keyset for r in rels))


def find_head_key(keys: list[str], decoder_prefix: str) -> str | None:
    """The checkpoint's untied LM head (`lm_head.weight`, `language_model.lm_head.weight`, ...)."""
    heads = [k for k in keys if k == HEAD or k.endswith("." + HEAD)]
    if len(heads) > 1:  # prefer the head that sits beside the decoder
        heads = [k for k in heads if decoder_prefix.startswith(k[: -len(HEAD)])] or heads
    return heads[0] if heads else None


def _named_decoder(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name, decoder
    raise LayoutError(f"{type(model).__name__}: get_decoder() is not a submodule")


def build_layout(vlm: torch.nn.Module, vlm_files: Checkpoint, donor: Checkpoint, role: str = "donor") -> Layout:
    """Pair each VLM decoder (+ head) parameter with the donor tensor of the same relative name.

    `donor` is the donor or (`role="base"`) the base. Raises CheckpointError for a quantization we do
    not read (naming the method) or a mapped tensor of a dtype we cannot merge (naming it), LayoutError
    when the VLM's own files lack an original. Donor tensors that are absent are listed in `unmatched`
    (see `Layout.check_coverage`)."""
    decoder_name, decoder = _named_decoder(vlm)
    params = {rel: p for rel, p in decoder.named_parameters()}
    prefix = decoder_name + "." if decoder_name else ""
    names = {rel: prefix + rel for rel in params}
    head = vlm.get_output_embeddings()
    if head is not None and head.weight is not params.get("embed_tokens.weight"):
        head_name = next(n for n, p in vlm.named_parameters() if p is head.weight)
        params[HEAD], names[HEAD] = head.weight, head_name

    rels = [r for r in params if r != HEAD]
    # `donor` may be any object with keys/__contains__/shape (e.g. shapes from a meta model): the
    # checks that need a real Checkpoint are skipped for those
    quant = getattr(donor, "quantization", None)
    if quant is not None and not quant.dequantized:
        raise refusal(donor.path, role, quant)  # before the name search, whose "found none" would mislead
    donor_keys, vlm_keys = donor.keys(), vlm_files.keys()
    donor_prefix = find_decoder_prefix(donor_keys, rels)
    vlm_prefix = find_decoder_prefix(vlm_keys, rels)
    if donor_prefix is None:
        raise LayoutError(f"{donor.path}: found none of the VLM's decoder tensors "
                          f"(looked for e.g. '*{rels[0]}') — is this the matching text LLM?")
    if vlm_prefix is None:
        raise LayoutError(f"{vlm_files.path}: the VLM's own safetensors do not hold its decoder "
                          f"weights under any prefix; cannot restore originals")

    def key_in(ckpt: Checkpoint, keys: list[str], dprefix: str, rel: str) -> str | None:
        if rel != HEAD:
            return dprefix + rel if dprefix + rel in ckpt else None
        # a tied checkpoint stores no head: its embedding matrix is the head
        embed = dprefix + "embed_tokens.weight"
        return find_head_key(keys, dprefix) or (embed if embed in ckpt else None)

    layout = Layout(num_layers=len(decoder.layers), slots=[])
    for rel, param in params.items():
        donor_key = key_in(donor, donor_keys, donor_prefix, rel)
        vlm_key = key_in(vlm_files, vlm_keys, vlm_prefix, rel)
        if vlm_key is None:
            raise LayoutError(f"{vlm_files.path}: no original for VLM parameter {names[rel]} (looked for "
                              f"{vlm_prefix + rel!r}); the folder's weights do not match the loaded model")
        if donor_key is None:
            layout.unmatched.append(names[rel])
            if donor_prefix + rel in getattr(donor, "index_only", ()):
                layout.missing_in_index.append(names[rel])
            continue
        for ckpt, key in ((donor, donor_key), (vlm_files, vlm_key)):
            problem = ckpt.float_problem(key) if hasattr(ckpt, "float_problem") else None
            if problem:
                raise CheckpointError(f"{ckpt.path}: {problem} (VLM parameter {names[rel]})")
        vlm_shape, donor_shape = tuple(param.shape), donor.shape(donor_key)
        role, group, layer = classify(rel)
        shared_rows = None
        if vlm_shape != donor_shape:
            if role in ("embed_tokens", "lm_head") and vlm_shape[1:] == donor_shape[1:]:
                shared_rows = min(vlm_shape[0], donor_shape[0])
                layout.notes.append(f"{rel}: vocab sizes differ (VLM {vlm_shape[0]}, donor {donor_shape[0]}); "
                                    f"merging the {shared_rows} shared rows, the VLM keeps its own "
                                    f"{max(0, vlm_shape[0] - shared_rows)} extra rows")
            else:
                layout.mismatched.append((names[rel], vlm_shape, donor_shape))
                continue
        layout.slots.append(Slot(names[rel], rel, role, group, layer, donor_key, vlm_key, vlm_shape, shared_rows))
    return layout
