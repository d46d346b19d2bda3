"""Arcee Fusion: keep the donor's changes only where their importance (size of the change times the
row's KL divergence) is an outlier. mergekit takes no per-model weights here: α scales the move."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from merging.methods.interpolation import toward
from merging.methods.registry import MergekitSpec, Tensor, merge_method

QUANTILES = (0.25, 0.5, 0.75)


def arcee_fusion_merge(vlm: Tensor, donor: Tensor) -> Tensor:
    """mergekit's arcee_fusion with the VLM as its base, in fp32 and its operation order: importance
    = |θ_L − θ_V| · KL(softmax θ_L ‖ softmax θ_V) per row (last dim); the donor's change is kept where
    importance ≥ median + 1.5·IQR. The quartiles are exact (the sorted value at int(q·(n − 1)));
    mergekit estimates them from 10⁶ random samples for tensors larger than that. Memory: a few
    full-size fp32 temporaries."""
    a, b = vlm.to(torch.float32), donor.to(torch.float32)
    p = F.softmax(b, dim=-1) + 1e-8
    q = F.softmax(a, dim=-1) + 1e-8
    importance = (b - a).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    flat = importance.reshape(-1)
    ranks = (torch.tensor(QUANTILES) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = (flat.kthvalue(r + 1).values for r in ranks)
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    return a + (b - a) * mask


@merge_method("arcee_fusion", formula="I = |θ_L − θ_V|·KL(softmax θ_L ‖ softmax θ_V) per row; "
                                      "M = θ_V + [I ≥ median I + 1.5·IQR(I)]·(θ_L − θ_V); θ = θ_V + α·(M − θ_V) "
                                      "(mergekit's arcee_fusion with the VLM as base is α = 1)",
              source="Arcee AI, Arcee Fusion (arcee.ai); mergekit `arcee_fusion`",
              mergekit=MergekitSpec("vlm", "none", notes=(
    "arcee_fusion: mergekit estimates the importance quartiles from 10⁶ random samples for",
    "tensors larger than that; Mergescope computes them exactly.")))
def arcee_fusion(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """Arcee Fusion with the VLM in mergekit's base role; α moves from θ_V to the fused tensor."""
    toward(out, vlm, alpha, lambda: arcee_fusion_merge(vlm, donor))
