"""Model Stock: move from the base towards the fine-tunes' average by a ratio set by the angle between
their task vectors. mergekit takes no per-model weights here: α blends from θ_V to the merge."""

from __future__ import annotations

import torch

from merging.methods.interpolation import toward
from merging.methods.registry import MergekitSpec, ParamDef, Tensor, merge_method

FILTER_WISE = ParamDef("filter_wise", int, 0, 0, 1,
                       "1: one angle and ratio per row (filter); 0: one for the whole tensor (mergekit's default)")


def model_stock_merge(vlm: Tensor, donor: Tensor, base: Tensor, filter_wise: bool) -> Tensor:
    """mergekit's model_stock for the two fine-tunes θ_V, θ_L of θ_B, in fp32 and its operation order:
    cos = ⟨τ_V, τ_L⟩/max(‖τ_V‖‖τ_L‖, 1e-6) clamped to [−1, 1], t = 2·cos/(1 + cos) (0 where
    |1 + cos| < 1e-6), θ = t·(θ_V + θ_L)/2 + (1 − t)·θ_B. Memory: a few full-size fp32 temporaries."""
    w_0, ws = base.to(torch.float32), [vlm.to(torch.float32), donor.to(torch.float32)]
    if filter_wise:
        if w_0.dim() == 1:
            w_0, ws = w_0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w_0, ws = w_0.reshape(-1), [w.reshape(-1) for w in ws]
    a, b = (w - w_0 for w in ws)
    norm_product = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
    cos = ((a * b).sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1)
    cos = torch.stack([cos]).mean(dim=0).unsqueeze(-1)  # mergekit's mean over the one pair
    count = len(ws)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos),
                    (count * cos) / torch.where(singular, torch.ones_like(denominator), denominator))
    average = sum(ws) / count
    return (t * average + (1 - t) * w_0).reshape(base.shape)


@merge_method("model_stock", formula="cos = ⟨τ_V, τ_L⟩/(‖τ_V‖‖τ_L‖), t = 2cos/(1 + cos); "
                                     "M = t·(θ_V + θ_L)/2 + (1 − t)·θ_B; θ = θ_V + α·(M − θ_V) "
                                     "(mergekit's model_stock is α = 1)",
              source="Jang et al. 2024, Model Stock (arXiv:2403.19522); mergekit `model_stock` "
                     "(defined for two fine-tunes and a base)",
              params=(FILTER_WISE,), needs_base=True,
              mergekit=MergekitSpec("common", "none", shared=("filter_wise",)))
def model_stock(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """Model Stock of the two fine-tunes (VLM, donor) of the base. It has no per-model weights (the
    angle sets the ratio), so α moves from θ_V (α = 0) to the Model Stock merge (α = 1)."""
    toward(out, vlm, alpha, lambda: model_stock_merge(vlm, donor, base, bool(params["filter_wise"])))
