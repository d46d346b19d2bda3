"""Task arithmetic, and the task-vector merge that TIES and DARE build on.

Task vectors are τ_V = θ_V − θ_B and τ_L = θ_L − θ_B for a common base θ_B (the ancestor both models
were fine-tuned from); the weights are w = (w_V, w_L) = (1 − α, α).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from merging.methods.registry import MergekitSpec, ParamDef, Tensor, chunks, merge_method

LAMBDA = ParamDef("lambda", float, 1.0, 0.0, 3.0,
                  "scale λ of the merged task vector added to the base (1 = unscaled)")
Sparsify = Callable[[int, Tensor], Tensor]  # (0 = VLM's / 1 = donor's task vector, fp32 chunk) -> chunk


def task_vector_merge(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, lam: float, *,
                      sparsify: Optional[Sparsify] = None, consensus: bool = False,
                      normalize: bool = False) -> None:
    """θ = θ_B + λ·merge(w_V·τ̂_V, w_L·τ̂_L), chunk by chunk in fp32, written into `out`.

    τ̂_i = sparsify(i, τ_i) (or τ_i). Without consensus, merge = the plain sum. With consensus (TIES),
    per element: the elected sign s = sgn(w_V·τ̂_V + w_L·τ̂_L) (+ when that sum is 0); an entry agrees
    when it is nonzero with sign s; merge = Σ_agreeing w_i·τ̂_i, divided by Σ_agreeing w_i if
    `normalize` (0 where nothing agrees) — mergekit's generalized task arithmetic, "sum" consensus.
    """
    weights = (1.0 - alpha, alpha)
    for o, v, d, b in chunks(out, vlm, donor, base):
        b32 = b.to(torch.float32)  # may alias the base: never edited in place
        taus = [x.to(torch.float32) - b32 for x in (v, d)]  # fresh tensors, edited in place below
        if sparsify is not None:
            taus = [sparsify(i, tau) for i, tau in enumerate(taus)]
        weighted = [tau.mul_(w) for tau, w in zip(taus, weights)]
        merged = disjoint_merge(weighted, weights, normalize) if consensus else weighted[0].add_(weighted[1])
        o.copy_(merged.mul_(lam).add_(b32))


def disjoint_merge(weighted: list[Tensor], weights: tuple[float, ...], normalize: bool) -> Tensor:
    """TIES' elect-sign and disjoint merge of weighted task-vector chunks (consumes them)."""
    agree = sign_agreement(weighted)
    merged = weighted[0].mul_(agree[0])
    for x, a in zip(weighted[1:], agree[1:]):
        merged.add_(x.mul_(a))
    if normalize:
        divisor = sum(a.to(torch.float32) * w for a, w in zip(agree, weights))
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged


def sign_agreement(vectors: list[Tensor]) -> list[Tensor]:
    """TIES' elected sign s = sgn Σ x_i (+ where the sum is 0); per vector, where it is nonzero with sign s."""
    positive = torch.stack(vectors).sum(dim=0) >= 0
    return [torch.where(positive, x > 0, x < 0) for x in vectors]  # zero entries never agree


@merge_method("task_arithmetic", formula="θ = θ_B + λ·[(1−α)·(θ_V − θ_B) + α·(θ_L − θ_B)]",
              source="Ilharco et al. 2023, Editing models with task arithmetic; mergekit `task_arithmetic`",
              params=(LAMBDA,), needs_base=True,
              mergekit=MergekitSpec("common", shared=("lambda",)))
def task_arithmetic(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, **params) -> None:
    """At λ = 1 the base cancels: θ_V + α·(θ_L − θ_V), linear interpolation up to fp32 rounding
    (bit-identical to `linear`'s fp32 path when θ_B = θ_V). That is the reading when VLM and donor
    are both fine-tunes of the base: α moves along the line between them, and λ ≠ 1 scales both task
    vectors together (λ > 1 extrapolates away from the base, λ < 1 shrinks towards it).
    """
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"])
