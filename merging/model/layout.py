"""Map every VLM language-model parameter to its donor tensor, by decoder-relative name.

Families differ in where the decoder lives (in memory: `model.language_model` for Qwen2.5-VL and
LLaVA, `model.text_model` for Idefics3/SmolVLM, `model` for a plain causal LM; on disk: `model.`,
`language_model.model.`, `model.text_model.`, ...), but below the decoder every family uses the
names of the text LLM itself (`layers.3.self_attn.q_proj.weight`). So we find the decoder with
`get_decoder()`, take parameter names relative to it, and locate the same relative names in each
checkpoint by detecting that checkpoint's decoder prefix — no per-family string surgery.

One thing is not a name: a decoder may interleave layers the donor's architecture does not have
(Llama 3.2 Vision / Mllama adds gated cross-attention layers between the self-attention layers of
the Llama 3.1 it was built from). `layer_map` numbers the other layers consecutively, so VLM layer
i pairs with donor layer `layer_map[i]`, slots and α curves count mapped layers only, and the extra
layers' tensors are `vlm_only`: never merged, never blamed on the donor.
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
    layer: int | None     # mapped layer index (the donor's, where α curves are evaluated); None for
                          # embed_tokens, norm, lm_head. Equals the VLM's index unless layers interleave
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

    `slots` are what can merge; `unmatched`, `mismatched` and `notes` report what cannot and why;
    `vlm_only` are the tensors of interleaved layers the donor's architecture cannot have."""
    num_layers: int       # mapped decoder layers: the α curve's length
    slots: list[Slot]
    layer_map: dict[int, int] = field(default_factory=dict)  # VLM layer index → mapped (donor) layer index
    vlm_only: list[str] = field(default_factory=list)        # VLM params in layers absent from the donor's architecture
    unmatched: list[str] = field(default_factory=list)                    # VLM params with no donor tensor
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, vlm shape, donor shape)
    notes: list[str] = field(default_factory=list)                        # e.g. vocab-size report
    missing_in_index: list[str] = field(default_factory=list)  # unmatched names a stale index still lists

    @property
    def interleaved(self) -> list[int]:
        """VLM layer indices that have no counterpart in the donor's architecture (e.g. cross-attention)."""
        return sorted({int(n.split(".layers.")[1].split(".")[0]) for n in self.vlm_only})

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


def interleaved_layers(config: object) -> tuple[int, ...]:
    """Decoder layer indices of `config` (a VLM's config) that are the VLM's own addition, absent from
    the text LLM it was built from: Mllama's `cross_attention_layers`; () for every other family."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return tuple(sorted(getattr(text, "cross_attention_layers", None) or ()))


def map_layers(num_layers: int, extra: tuple[int, ...]) -> dict[int, int]:
    """VLM layer index → mapped index: the layers not in `extra`, numbered consecutively from 0
    (Mllama 11B, extra 3, 8, ...: VLM 0, 1, 2, 4 → 0, 1, 2, 3)."""
    kept = [i for i in range(num_layers) if i not in extra]
    return {vlm_index: mapped for mapped, vlm_index in enumerate(kept)}


def mapped_rel(rel: str, layer_map: dict[int, int]) -> str | None:
    """The donor-side name of VLM-relative `rel` (`layers.4.mlp…` → `layers.3.mlp…` after one extra
    layer); None for a tensor of an extra layer; names outside layers unchanged."""
    parts = rel.split(".")
    if parts[0] != "layers" or len(parts) < 2 or not parts[1].isdigit():
        return rel
    mapped = layer_map.get(int(parts[1]))
    return None if mapped is None else ".".join(["layers", str(mapped), *parts[2:]])


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


def _decoder_params(vlm: torch.nn.Module) -> tuple[dict[str, torch.nn.Parameter], dict[str, str], int]:
    """(decoder-relative name → parameter, relative → full name, decoder layers) of the VLM, with an
    untied head as `lm_head.weight`."""
    decoder_name, decoder = _named_decoder(vlm)
    params = {rel: p for rel, p in decoder.named_parameters()}
    prefix = decoder_name + "." if decoder_name else ""
    names = {rel: prefix + rel for rel in params}
    head = vlm.get_output_embeddings()
    if head is not None and head.weight is not params.get("embed_tokens.weight"):
        head_name = next(n for n, p in vlm.named_parameters() if p is head.weight)
        params[HEAD], names[HEAD] = head.weight, head_name
    return params, names, len(decoder.layers)


def _key_in(ckpt: Checkpoint, keys: list[str], dprefix: str, rel: str) -> str | None:
    """The key of decoder-relative `rel` in `ckpt` (whose decoder prefix is `dprefix`), or None."""
    if rel != HEAD:
        return dprefix + rel if dprefix + rel in ckpt else None
    # a tied checkpoint stores no head: its embedding matrix is the head
    embed = dprefix + "embed_tokens.weight"
    return find_head_key(keys, dprefix) or (embed if embed in ckpt else None)


def _shared_rows(layout: Layout, rel: str, role: str, vlm_shape: tuple, donor_shape: tuple) -> int | None | bool:
    """None for equal shapes; the shared row count for an embedding or head whose vocabularies differ
    (noted in `layout.notes`); False for any other mismatch."""
    if vlm_shape == donor_shape:
        return None
    if role in ("embed_tokens", "lm_head") and vlm_shape[1:] == donor_shape[1:]:
        shared = min(vlm_shape[0], donor_shape[0])
        layout.notes.append(f"{rel}: vocab sizes differ (VLM {vlm_shape[0]}, donor {donor_shape[0]}); "
                            f"merging the {shared} shared rows, the VLM keeps its own "
                            f"{max(0, vlm_shape[0] - shared)} extra rows")
        return shared
    return False


def build_layout(vlm: torch.nn.Module, vlm_files: Checkpoint, donor: Checkpoint, role: str = "donor") -> Layout:
    """Pair each VLM decoder (+ head) parameter with the donor tensor of the same relative name, after
    the layer map (`interleaved_layers`: layers the donor's architecture lacks are `vlm_only`).

    `donor` is the donor or (`role="base"`) the base. Raises CheckpointError for a quantization we do
    not read (naming the method) or a mapped tensor of a dtype we cannot merge (naming it), LayoutError
    when the VLM's own files lack an original. Donor tensors that are absent are listed in `unmatched`
    (see `Layout.check_coverage`)."""
    params, names, vlm_layers = _decoder_params(vlm)
    extra = interleaved_layers(vlm.config)
    layer_map = map_layers(vlm_layers, extra)
    donor_rels = {rel: mapped_rel(rel, layer_map) for rel in params}
    rels = [r for r in params if r != HEAD]
    # `donor` may be any object with keys/__contains__/shape (e.g. shapes from a meta model): the
    # checks that need a real Checkpoint are skipped for those
    quant = getattr(donor, "quantization", None)
    if quant is not None and not quant.dequantized:
        raise refusal(donor.path, role, quant)  # before the name search, whose "found none" would mislead
    donor_keys, vlm_keys = donor.keys(), vlm_files.keys()
    donor_prefix = find_decoder_prefix(donor_keys, [donor_rels[r] for r in rels if donor_rels[r] is not None])
    vlm_prefix = find_decoder_prefix(vlm_keys, rels)
    if donor_prefix is None:
        raise LayoutError(f"{donor.path}: found none of the VLM's decoder tensors "
                          f"(looked for e.g. '*{rels[0]}') — is this the matching text LLM?")
    if vlm_prefix is None:
        raise LayoutError(f"{vlm_files.path}: the VLM's own safetensors do not hold its decoder "
                          f"weights under any prefix; cannot restore originals")

    layout = Layout(num_layers=len(layer_map), slots=[], layer_map=layer_map)
    for rel, param in params.items():
        vlm_key = _key_in(vlm_files, vlm_keys, vlm_prefix, rel)
        if vlm_key is None:
            raise LayoutError(f"{vlm_files.path}: no original for VLM parameter {names[rel]} (looked for "
                              f"{vlm_prefix + rel!r}); the folder's weights do not match the loaded model")
        if donor_rels[rel] is None:
            layout.vlm_only.append(names[rel])
            continue
        donor_key = _key_in(donor, donor_keys, donor_prefix, donor_rels[rel])
        if donor_key is None:
            layout.unmatched.append(names[rel])
            if donor_prefix + donor_rels[rel] in getattr(donor, "index_only", ()):
                layout.missing_in_index.append(names[rel])
            continue
        for ckpt, key in ((donor, donor_key), (vlm_files, vlm_key)):
            problem = ckpt.float_problem(key) if hasattr(ckpt, "float_problem") else None
            if problem:
                raise CheckpointError(f"{ckpt.path}: {problem} (VLM parameter {names[rel]})")
        role, group, _ = classify(rel)
        shared_rows = _shared_rows(layout, rel, role, tuple(param.shape), donor.shape(donor_key))
        if shared_rows is False:
            layout.mismatched.append((names[rel], tuple(param.shape), donor.shape(donor_key)))
            continue
        layer = classify(donor_rels[rel])[2]
        layout.slots.append(Slot(names[rel], rel, role, group, layer, donor_key, vlm_key, tuple(param.shape),
                                 shared_rows))
    deepstack = getattr(getattr(vlm.config, "vision_config", None), "deepstack_visual_indexes", None)
    if deepstack:  # Qwen3-VL: where the α curve's first points act on vision features too
        layout.notes.append(f"DeepStack: vision features are added to the hidden states of decoder layers "
                            f"0–{len(deepstack) - 1}, so α on those layers also changes how they are read")
    if extra:
        layout.notes.append(f"{len(extra)} of the VLM's {vlm_layers} decoder layers ({', '.join(map(str, extra))}) "
                            f"are its own (cross-attention) and have no counterpart in the donor's architecture: "
                            f"their {len(layout.vlm_only)} tensors are VLM-only and never merge; the other "
                            f"{len(layer_map)} layers pair in order and α curves run over them")
    return layout
