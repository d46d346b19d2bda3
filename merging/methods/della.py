"""DELLA: drop task-vector entries at random with a keep probability that grows with the entry's
magnitude rank in its row (MagPrune), rescale the survivors, then merge (as TIES, or linearly).

Masks are seeded per tensor as DARE's are (seed, which task vector, shape, tensor name), so the same
plan gives the same weights in place, in an export and after a restart.
"""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.dare import RESCALE, SEED, mask_notes, stream_generators
from merging.methods.registry import MergekitSpec, CHUNK_ELEMENTS, ParamDef, Tensor, merge_method
from merging.methods.task_arithmetic import LAMBDA, Sparsify, task_vector_merge

DELLA_NOTES = mask_notes("DELLA", "1/p (p: the entry's keep probability)")

DELLA_DENSITY = ParamDef("density", float, 0.5, 0.0, 1.0,
                         "mean probability of keeping a task-vector entry (1 keeps everything; mergekit's default)",
                         low_open=True)
EPSILON = ParamDef("epsilon", float, 0.15, 0.0, 0.5,
                   "spread of the keep probabilities: density − ε for a row's smallest entry to density + ε "
                   "for its largest")
DELLA_NORMALIZE = ParamDef("normalize", int, 1, 0, 1,
                           "1: divide by the summed weights of the agreeing entries (mergekit's della default); "
                           "0: plain weighted sum")


def check_epsilon(params: dict) -> Optional[str]:
    """mergekit's condition: with density < 1, density ± epsilon must lie inside (0, 1)."""
    d, e = params["density"], params["epsilon"]
    if d < 1 and (d + e >= 1 or d - e <= 0):
        return f"epsilon={e} with density={d}: density ± epsilon must lie inside (0, 1)"
    return None


def keep_probabilities(x: Tensor, base: Tensor, density: float, epsilon: float) -> Tensor:
    """Flat fp32 keep probabilities of τ = x − θ_B: p = density − ε + 2ε·r/(m − 1), r the entry's
    0-based magnitude rank along dim 1 (a 1-D tensor is one row of m = n entries), as mergekit's
    della_magprune ranks; p = density where m = 1 (mergekit divides by zero there). Computed in blocks
    of whole rows; memory: one full-size fp32 result."""
    shape = (1, x.numel(), 1) if x.dim() < 2 else (x.shape[0], x.shape[1], x[0, 0].numel())
    m = shape[1]
    probs = torch.full(shape, float(density), dtype=torch.float32, device=x.device)
    if m == 1:
        return probs.view(-1)
    x3, b3 = x.reshape(shape), base.reshape(shape)
    step = max(1, CHUNK_ELEMENTS // (m * shape[2]))
    order_values = torch.arange(m, dtype=torch.float32, device=x.device).view(1, m, 1)
    for start in range(0, shape[0], step):
        rows = slice(start, start + step)
        mags = (x3[rows].to(torch.float32) - b3[rows].to(torch.float32)).abs()
        order = torch.argsort(mags, dim=1, stable=True)
        ranks = torch.empty_like(mags).scatter_(1, order, order_values.expand_as(mags).contiguous())
        probs[rows] = ranks.mul_(2 * epsilon / (m - 1)).add_(density - epsilon)
    return probs.view(-1)


def magprune(vlm: Tensor, donor: Tensor, base: Tensor, density: float, epsilon: float, seed: int,
             name: Optional[str]) -> Optional[Sparsify]:
    """Keep each entry with its probability p (`keep_probabilities`), scale kept ones ×1/p (None when
    density ≥ 1). The 1/p rescale is the paper's (E[τ̂] = τ per entry); mergekit's `rescale` instead
    scales the masked vector to the original's L1 norm. Uniform draws as in DARE's `random_drop`."""
    if density >= 1:
        return None
    probs = [keep_probabilities(x, base, density, epsilon) for x in (vlm, donor)]
    generators = stream_generators(seed, vlm, name)
    offsets = [0, 0]  # task_vector_merge hands over each task vector's chunks in order

    def drop(i: int, tau: Tensor) -> Tensor:
        p = probs[i][offsets[i]:offsets[i] + tau.numel()]
        offsets[i] += tau.numel()
        keep = torch.rand(tau.shape, generator=generators[i], device=tau.device) < p
        return tau.mul_(keep).div_(p)

    return drop


def _sparsify(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, name: Optional[str], params: dict):
    return magprune(vlm, donor, base, params["density"], params["epsilon"], params["seed"], name)


@merge_method("della", formula="p = density − ε + 2ε·rank(|τ_i|)/(m−1) per row; τ̂_i = m_i ⊙ τ_i / p, "
                               "m_i ~ Bernoulli(p); s = sgn Σ w_i·τ̂_i; "
                               "θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i [/ Σ_{sgn τ̂_i = s} w_i if normalize]; w = (1−α, α)",
              source="Deep et al. 2024, DELLA-Merging (arXiv:2406.11617); mergekit `della` (sparsify.della_magprune)",
              params=(DELLA_DENSITY, EPSILON, LAMBDA, DELLA_NORMALIZE, SEED), needs_base=True, context=("name",),
              check=check_epsilon,
              mergekit=MergekitSpec("common", per_model=("density", "epsilon"), shared=("lambda", "normalize"),
                                    fixed=RESCALE, notes=DELLA_NOTES))
def della(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, *,
          name: Optional[str] = None, **params) -> None:
    """MagPrune's rank-dependent drop and 1/p rescale, then TIES' sign election and disjoint merge;
    masks seeded by (seed, tensor name)."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=_sparsify(out, vlm, donor, base, name, params),
                      consensus=True, normalize=bool(params["normalize"]))


@merge_method("della_linear", formula="τ̂_i as in della; θ = θ_B + λ·[(1−α)·τ̂_V + α·τ̂_L]",
              source="Deep et al. 2024 (arXiv:2406.11617); mergekit `della_linear`",
              params=(DELLA_DENSITY, EPSILON, LAMBDA, SEED), needs_base=True, context=("name",),
              check=check_epsilon,
              mergekit=MergekitSpec("common", per_model=("density", "epsilon"), shared=("lambda",), fixed=RESCALE,
                       notes=DELLA_NOTES))
def della_linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, *,
                 name: Optional[str] = None, **params) -> None:
    """MagPrune's drop and rescale, then task arithmetic; masks seeded by (seed, tensor name)."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=_sparsify(out, vlm, donor, base, name, params))
