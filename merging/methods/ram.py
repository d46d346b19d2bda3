"""RAM and RAM+ (tensor-local): task-vector entries only one model changed are kept whole, entries
both changed are averaged (RAM+ also boosts the unique entries of a model that shares many). mergekit
takes no per-model weights here: α blends from θ_V to the merge."""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.interpolation import toward_chunks
from merging.methods.registry import MergekitSpec, ParamDef, Tensor, chunks, merge_method

RAM_EPSILON = ParamDef("epsilon", float, 1e-5, 0.0, 1.0,
                       "an entry counts as changed by a model where |θ_i − θ_B| > epsilon")
R = ParamDef("r", float, 0.1, 0.0, 10.0, "RAM+ boost rate r of a model's unique entries: λ_i = 1 + r·min(ρ_i, "
                                         "rho_max)")
RHO_MAX = ParamDef("rho_max", float, 0.2, 0.0, 10.0,
                   "cap on ρ_i = shared/unique changed entries of model i (mergekit's `alpha`, renamed here "
                   "because α is the donor's weight)")


def _changed(vlm: Tensor, donor: Tensor, base: Tensor, epsilon: float) -> list[Tensor]:
    """Per model, where its task vector's entry exceeds epsilon (fp32 chunk inputs)."""
    return [(x - base).abs() > epsilon for x in (vlm, donor)]


def ram_chunk(vlm: Tensor, donor: Tensor, base: Tensor, epsilon: float, boost: Optional[Tensor] = None) -> Tensor:
    """mergekit's ram on fp32 chunks, in its operation order: θ_B + Σ_i [τ_i where only model i changed
    the entry (× boost_i, RAM+), τ_i / #changed where both did]."""
    tv = torch.stack([vlm - base, donor - base], dim=0)
    nonzero = torch.stack(_changed(vlm, donor, base, epsilon))
    counts = nonzero.sum(dim=0, keepdim=True)
    overlap, unique = counts > 1, counts == 1
    tv_z = tv * nonzero
    kept = tv_z * unique
    if boost is not None:
        kept = kept * boost.unsqueeze(-1)
    return base + (kept + (tv_z * overlap / counts.clamp(min=1))).sum(dim=0)


def ramplus_boost(vlm: Tensor, donor: Tensor, base: Tensor, epsilon: float, r: float, rho_max: float) -> Tensor:
    """RAM+'s per-model factors λ_i = 1 + r·clamp(ρ_i, 0, rho_max), ρ_i = #shared/max(#unique, ε) of the
    entries model i changed, counted over the whole tensor chunk by chunk (exact integer counts) and
    combined with mergekit's operations."""
    shared = torch.zeros(2, dtype=torch.int64, device=vlm.device)
    unique = torch.zeros(2, dtype=torch.int64, device=vlm.device)
    for v, d, b in chunks(vlm, donor, base):
        nonzero = torch.stack(_changed(v.to(torch.float32), d.to(torch.float32), b.to(torch.float32), epsilon))
        counts = nonzero.sum(dim=0, keepdim=True)
        shared += (nonzero & (counts > 1)).sum(dim=1)
        unique += (nonzero & (counts == 1)).sum(dim=1)
    rho = shared / unique.clamp(min=epsilon)
    return 1 + r * rho.clamp(min=0, max=rho_max)


@merge_method("ram", formula="τ_i = θ_i − θ_B where |τ_i| > ε; M = θ_B + Σ_i [τ_i if only i changed it, "
                             "τ_i/2 if both did]; θ = θ_V + α·(M − θ_V) (mergekit's ram is α = 1)",
              source="Reinforced Agent Merging (arXiv:2601.13572); mergekit `ram`",
              params=(RAM_EPSILON,), needs_base=True,
              mergekit=MergekitSpec("common", "none", shared=("epsilon",)))
def ram(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """RAM of the two task vectors; it has no per-model weights, so α moves from θ_V to the merge."""
    toward_chunks(out, vlm, alpha, lambda v, d, b: ram_chunk(v, d, b, params["epsilon"]), donor, base)


@merge_method("ramplus_tl", formula="as ram, with model i's unique entries scaled by 1 + r·min(ρ_i, rho_max), "
                                    "ρ_i = #shared/#unique changed entries of τ_i in the tensor; "
                                    "θ = θ_V + α·(M − θ_V) (mergekit's ramplus_tl is α = 1)",
              source="Reinforced Agent Merging Plus (arXiv:2601.13572), tensor-local; mergekit `ramplus_tl`",
              params=(R, RHO_MAX, RAM_EPSILON), needs_base=True,
              mergekit=MergekitSpec("common", "none", shared=("r", "rho_max", "epsilon"),
                                    rename=(("rho_max", "alpha"),), notes=(
    "ramplus_tl: mergekit's `alpha` is the plan's rho_max (α is the donor's weight here).",)))
def ramplus_tl(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """RAM+ computed per tensor; α moves from θ_V to the merge."""
    if alpha == 0:
        out.copy_(vlm)
        return
    boost = ramplus_boost(vlm, donor, base, params["epsilon"], params["r"], params["rho_max"])
    toward_chunks(out, vlm, alpha, lambda v, d, b: ram_chunk(v, d, b, params["epsilon"], boost), donor, base)
