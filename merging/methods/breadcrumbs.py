"""Model Breadcrumbs: drop each task vector's smallest entries and its largest outliers, then merge
(linearly, or with TIES' sign election). Deterministic: magnitude ranks, no random draw."""

from __future__ import annotations

from typing import Optional

from merging.methods.registry import MergekitSpec, ParamDef, Tensor, merge_method
from merging.methods.task_arithmetic import LAMBDA, Sparsify, task_vector_merge
from merging.methods.ties import task_magnitudes

BREADCRUMBS_NOTES = (
    "breadcrumbs: both keep magnitude ranks [n − k − int(γn), n − int(γn)), k = int(density·n);",
    "Mergescope also keeps entries tied with the band's ends: identical with distinct magnitudes.")

BREADCRUMBS_DENSITY = ParamDef("density", float, 0.9, 0.0, 1.0,
                               "fraction of each task vector kept: the entries ranked below the top `gamma` "
                               "outliers (mergekit's default 1.0 keeps everything; the paper uses 0.9)",
                               low_open=True)
GAMMA = ParamDef("gamma", float, 0.01, 0.0, 1.0, "fraction of each task vector's largest-magnitude entries dropped "
                                                  "as outliers (reduced where needed to keep `density`)")
BREADCRUMBS_NORMALIZE = ParamDef("normalize", int, 0, 0, 1,
                                 "1: divide by the summed weights of the agreeing entries; 0: plain weighted sum "
                                 "(mergekit's breadcrumbs_ties default)")


def outlier_band(x: Tensor, base: Tensor, density: float, gamma: float) -> Optional[tuple[float, float]]:
    """The kept band [lo, hi] of |x − θ_B| (None: keep everything), mergekit's counts exactly:
    k = int(density·n) kept, n_top = int(gamma·n) outliers, n_bot = max(0, n − k − n_top) smallest
    dropped; the kept ranks (ascending) are n_bot … n_bot + k − 1. Entries tied with lo or hi are all
    kept (mergekit's sort picks among them arbitrarily). k = 0 keeps nothing: (inf, inf)."""
    if density >= 1:
        return None
    n = x.numel()
    k, n_top = int(density * n), int(gamma * n)
    if k == 0:
        return float("inf"), float("inf")
    n_bot = max(0, n - k - n_top)
    mags = task_magnitudes(x, base)
    return mags.kthvalue(n_bot + 1).values.item(), mags.kthvalue(n_bot + k).values.item()


def outlier_trim(vlm: Tensor, donor: Tensor, base: Tensor, density: float, gamma: float) -> Sparsify:
    """The Sparsify keeping each task vector's band of magnitudes (`outlier_band`)."""
    bands = [outlier_band(x, base, density, gamma) for x in (vlm, donor)]

    def trim(i: int, tau: Tensor) -> Tensor:
        if bands[i] is None:
            return tau
        lo, hi = bands[i]
        mags = tau.abs()
        return tau.mul_((mags >= lo) & (mags <= hi))

    return trim


@merge_method("breadcrumbs", formula="τ̂_i = θ_i − θ_B on its magnitude ranks [n − k − int(γn), n − int(γn)), "
                                     "k = int(density·n); θ = θ_B + λ·[(1−α)·τ̂_V + α·τ̂_L]",
              source="Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795); mergekit `breadcrumbs` "
                     "(sparsify.magnitude_outliers)",
              params=(BREADCRUMBS_DENSITY, GAMMA, LAMBDA), needs_base=True,
              mergekit=MergekitSpec("common", per_model=("density", "gamma"), shared=("lambda",),
                                    notes=BREADCRUMBS_NOTES))
def breadcrumbs(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """Each task vector loses its int(γ·n) largest entries and all but int(density·n) of the rest
    (smallest first), then task arithmetic with weights (1 − α, α) and λ; no rescale (mergekit's default)."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=outlier_trim(vlm, donor, base, params["density"], params["gamma"]))


@merge_method("breadcrumbs_ties", formula="τ̂_i as in breadcrumbs; s = sgn Σ w_i·τ̂_i; "
                                          "θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i [/ Σ_{sgn τ̂_i = s} w_i if normalize]; "
                                          "w = (1−α, α)",
              source="Davari & Belilovsky 2024 (arXiv:2312.06795) with TIES' sign election; mergekit "
                     "`breadcrumbs_ties`",
              params=(BREADCRUMBS_DENSITY, GAMMA, LAMBDA, BREADCRUMBS_NORMALIZE), needs_base=True,
              mergekit=MergekitSpec("common", per_model=("density", "gamma"), shared=("lambda", "normalize"),
                       notes=BREADCRUMBS_NOTES))
def breadcrumbs_ties(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """Breadcrumbs' trim, then TIES' sign election and disjoint merge; `normalize` defaults to 0 as in mergekit."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=outlier_trim(vlm, donor, base, params["density"], params["gamma"]),
                      consensus=True, normalize=bool(params["normalize"]))
