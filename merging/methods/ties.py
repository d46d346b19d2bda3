"""TIES-merging: trim each task vector to its largest magnitudes, elect a sign, merge what agrees."""

from __future__ import annotations

import math

import torch

from merging.methods.registry import MergekitSpec, ParamDef, Tensor, chunks, merge_method
from merging.methods.task_arithmetic import LAMBDA, task_vector_merge

TIES_DENSITY = ParamDef("density", float, 0.2, 0.0, 1.0,
                        "fraction of each task vector kept: its largest-magnitude entries", low_open=True)
TIES_NORMALIZE = ParamDef("normalize", int, 1, 0, 1,
                          "1: divide by the summed weights of the agreeing entries (a weighted mean, "
                          "mergekit's ties default); 0: plain weighted sum")


def keep_count(density: float, n: int) -> int:
    """k = ⌈density·n⌉ entries kept, at least 1 (the 1e-6 absorbs float error in density·n)."""
    return min(n, max(1, math.ceil(density * n - 1e-6)))


def magnitude_threshold(x: Tensor, base: Tensor, density: float) -> float:
    """The k-th largest |x − θ_B| over the whole tensor, k = ⌈density·n⌉ (0.0 when k = n).

    Memory: one full-size fp32 |τ| buffer (a k-th value needs the whole tensor)."""
    n = x.numel()
    k = keep_count(density, n)
    if k >= n:
        return 0.0
    return task_magnitudes(x, base).kthvalue(n - k + 1).values.item()


def task_magnitudes(x: Tensor, base: Tensor) -> Tensor:
    """|x − θ_B| as one flat full-size fp32 tensor, computed chunk by chunk with τ's arithmetic."""
    mags = torch.empty(x.numel(), dtype=torch.float32, device=x.device)
    for m, xc, bc in chunks(mags, x.reshape(-1), base.reshape(-1)):
        torch.sub(xc.to(torch.float32), bc.to(torch.float32), out=m).abs_()  # same arithmetic as τ
    return mags


@merge_method("ties", formula="τ̂_i = top-density |θ_i − θ_B|; s = sgn Σ w_i·τ̂_i; "
                              "θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i [/ Σ_{sgn τ̂_i = s} w_i if normalize]; w = (1−α, α)",
              source="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708); mergekit `ties`",
              params=(TIES_DENSITY, LAMBDA, TIES_NORMALIZE), needs_base=True,
              mergekit=MergekitSpec("common", per_model=("density",), shared=("lambda", "normalize"), notes=(
    "ties: mergekit keeps the int(density·n) largest |τ| (Mergescope: ⌈density·n⌉, and every",
    "entry tied with the threshold); identical when density·n is whole and magnitudes distinct.")))
def ties(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """Trim keeps |τ_i| ≥ the k-th largest of the tensor (entries tied with the threshold are all kept,
    so a few more than k may survive). With normalize = 1, where only one task vector survives (or
    agrees), the merge is that vector at full size whatever its weight: e.g. with the VLM as its own
    base (τ_V = 0), θ = θ_V + λ·τ̂_L for every α > 0. With normalize = 0, density = 1 and task vectors
    that never disagree in sign, TIES is exactly task_arithmetic with the same λ.
    """
    thresholds = [magnitude_threshold(x, base, params["density"]) for x in (vlm, donor)]

    def trim(i: int, tau: Tensor) -> Tensor:
        return tau.masked_fill_(tau.abs() < thresholds[i], 0.0) if thresholds[i] > 0 else tau

    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"], sparsify=trim, consensus=True,
                      normalize=bool(params["normalize"]))
