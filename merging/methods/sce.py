"""SCE: select the task-vector entries where the models vary most, weight each model by its task
vector's energy, erase entries against the elected sign, merge. mergekit takes no per-model weights
here: α blends from θ_V to the merge."""

from __future__ import annotations

import torch

from merging.methods.interpolation import toward
from merging.methods.registry import MergekitSpec, ParamDef, Tensor, merge_method
from merging.methods.task_arithmetic import sign_agreement

SELECT_TOPK = ParamDef("select_topk", float, 1.0, 0.0, 1.0,
                       "fraction of entries kept: those where the task vectors' variance across models is "
                       "largest (1 keeps all; mergekit's default)", low_open=True)


def sce_merge(vlm: Tensor, donor: Tensor, base: Tensor, select_topk: float) -> Tensor:
    """mergekit's sce for θ_V, θ_L over θ_B, in fp32 and its operation order. Memory: a few
    full-size fp32 temporaries (the selection needs the whole tensor)."""
    b = base.to(torch.float32)
    tvs = torch.stack([vlm.to(torch.float32) - b, donor.to(torch.float32) - b], dim=0)
    if select_topk < 1:
        var = torch.var(tvs, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * select_topk)
        mask = torch.zeros_like(var)
        if k > 0:
            mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
        tvs = tvs * mask.unsqueeze(0)
    erase = torch.stack(sign_agreement(list(tvs)))
    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(weights).item()
    weights = torch.ones_like(weights) / weights.shape[0] if abs(total) < 1e-6 else weights / total
    erased = weights.view(-1, *([1] * (tvs.dim() - 1))) * erase
    merged = (tvs * erased).sum(dim=0)
    return b + merged / torch.sum(erased, dim=0).clamp(min=1e-6)


@merge_method("sce", formula="τ_i = θ_i − θ_B masked to the top-select_topk variance entries; "
                             "w_i ∝ mean(τ_i²); s = sgn Σ τ_i; "
                             "M = θ_B + Σ_{sgn τ_i = s} w_i·τ_i / Σ_{sgn τ_i = s} w_i; "
                             "θ = θ_V + α·(M − θ_V) (mergekit's sce is α = 1)",
              source="Wan et al. 2024, FuseChat (SCE, arXiv:2408.07990); mergekit `sce`",
              params=(SELECT_TOPK,), needs_base=True,
              mergekit=MergekitSpec("common", "none", shared=("select_topk",)))
def sce(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """SCE of the two task vectors; its weights come from the task vectors themselves, so α moves from
    θ_V (α = 0) to the SCE merge (α = 1)."""
    toward(out, vlm, alpha, lambda: sce_merge(vlm, donor, base, params["select_topk"]))
