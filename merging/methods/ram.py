"""RAM and RAM+ (tensor-local): task-vector entries only one model changed are kept whole, entries
both changed are averaged (RAM+ also boosts the unique entries of a model that shares many). mergekit
takes no per-model weights here: α blends from θ_V to the merge."""

from __future__ import annotations

import torch

from .interpolation import toward
from .registry import ParamDef, Tensor, merge_method

RAM_EPSILON = ParamDef("epsilon", float, 1e-5, 0.0, 1.0,
                       "an entry counts as changed by a model where |θ_i − θ_B| > epsilon")
R = ParamDef("r", float, 0.1, 0.0, 10.0, "RAM+ boost rate r of a model's unique entries: λ_i = 1 + r·min(ρ_i, "
                                         "rho_max)")
RHO_MAX = ParamDef("rho_max", float, 0.2, 0.0, 10.0,
                   "cap on ρ_i = shared/unique changed entries of model i (mergekit's `alpha`, renamed here "
                   "because α is the donor's weight)")


def ram_merge(vlm: Tensor, donor: Tensor, base: Tensor, epsilon: float, r: float = 0.0,
              rho_max: float = 0.0, plus: bool = False) -> Tensor:
    """mergekit's ram (plus = False) or ramplus_tl (plus = True) for θ_V, θ_L over θ_B, in fp32 and
    its operation order. Memory: a few full-size fp32 temporaries."""
    b = base.to(torch.float32)
    tv = torch.stack([vlm.to(torch.float32) - b, donor.to(torch.float32) - b], dim=0).view(2, -1)
    nonzero = tv.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    overlap, unique = counts > 1, counts == 1
    tv_z = tv * nonzero
    kept = tv_z * unique
    if plus:
        rho = (nonzero & overlap).sum(dim=1) / (nonzero & unique).sum(dim=1).clamp(min=epsilon)
        kept = kept * (1 + r * rho.clamp(min=0, max=rho_max)).unsqueeze(-1)
    merged = (kept + (tv_z * overlap / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return b + merged.reshape_as(b)


@merge_method("ram", formula="τ_i = θ_i − θ_B where |τ_i| > ε; M = θ_B + Σ_i [τ_i if only i changed it, "
                             "τ_i/2 if both did]; θ = θ_V + α·(M − θ_V) (mergekit's ram is α = 1)",
              source="Reinforced Agent Merging (arXiv:2601.13572); mergekit `ram`",
              params=(RAM_EPSILON,), needs_base=True)
def ram(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """RAM of the two task vectors; it has no per-model weights, so α moves from θ_V to the merge."""
    toward(out, vlm, alpha, lambda: ram_merge(vlm, donor, base, params["epsilon"]))


@merge_method("ramplus_tl", formula="as ram, with model i's unique entries scaled by 1 + r·min(ρ_i, rho_max), "
                                    "ρ_i = #shared/#unique changed entries of τ_i in the tensor; "
                                    "θ = θ_V + α·(M − θ_V) (mergekit's ramplus_tl is α = 1)",
              source="Reinforced Agent Merging Plus (arXiv:2601.13572), tensor-local; mergekit `ramplus_tl`",
              params=(R, RHO_MAX, RAM_EPSILON), needs_base=True)
def ramplus_tl(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """RAM+ computed per tensor; α moves from θ_V to the merge."""
    toward(out, vlm, alpha, lambda: ram_merge(vlm, donor, base, params["epsilon"], params["r"],
                                              params["rho_max"], plus=True))
