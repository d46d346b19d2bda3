"""DARE: drop task-vector entries at random, rescale the survivors, then merge (linearly or as TIES).

Masks are seeded per tensor (seed, which task vector, shape, tensor name), so the same plan gives the
same weights in place, in an export and after a restart.
"""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.registry import MergekitSpec, ParamDef, Tensor, merge_method
from merging.methods.task_arithmetic import LAMBDA, Sparsify, task_vector_merge

RESCALE = (("rescale", True),)  # mergekit: kept entries rescaled to the task vector's L1 norm


def mask_notes(who: str, scale: str) -> tuple[str, ...]:
    """mergekit.yaml's note on how random-mask methods differ from mergekit's (`{seeds}`: the plan's)."""
    return (f"{who}: mergekit draws its masks from torch's global generator (mergekit-yaml",
            "--random-seed; the plan's seed {seeds} does not carry over) and rescales",
            "kept entries to the task vector's L1 norm (rescale: true); Mergescope scales them by",
            f"{scale}, with per-tensor seeded masks. Equal in expectation, not per element.")


DARE_NOTES = mask_notes("DARE", "1/density")

DARE_DENSITY = ParamDef("density", float, 0.5, 0.0, 1.0,
                        "probability of keeping each task-vector entry; kept ones are scaled by 1/density",
                        low_open=True)
SEED = ParamDef("seed", int, 0, 0, 2**31 - 1, "seed of DARE's random drop masks (mixed with each tensor's name)")
DARE_TIES_NORMALIZE = ParamDef("normalize", int, 0, 0, 1,
                               "1: divide by the summed weights of the agreeing entries; 0: plain "
                               "weighted sum (mergekit's dare_ties default)")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def name_hash(name: str) -> int:
    """FNV-1a, 64 bit, of the UTF-8 name: a fixed value in every process (unlike Python's hash())."""
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def stream_seed(seed: int, shape: tuple[int, ...], stream: int, name: Optional[str] = None) -> int:
    """A fixed 64-bit mix of (seed, which task vector, shape, tensor name): the same in every process.

    The engine passes the tensor's decoder-relative name, so every tensor draws its own mask; called
    without a name (directly, in tests), same-shaped tensors share one. The VLM's (stream 0) and the
    donor's (stream 1) masks are independent.
    """
    h = 0
    for value in (seed, stream, len(shape), *shape):
        h = _splitmix64(h ^ value)
    if name is not None:
        h = _splitmix64(h ^ name_hash(name))
    return h


def stream_generators(seed: int, like: Tensor, name: Optional[str] = None) -> list[torch.Generator]:
    """One torch.Generator per task vector (VLM's, donor's), on `like`'s device, seeded by `stream_seed`."""
    generators = []
    for stream in (0, 1):
        gen = torch.Generator(device=like.device)
        gen.manual_seed(stream_seed(seed, tuple(like.shape), stream, name))
        generators.append(gen)
    return generators


def random_drop(density: float, seed: int, like: Tensor, name: Optional[str] = None) -> Optional[Sparsify]:
    """Keep each entry with probability `density`, scale kept ones ×1/density (None when density ≥ 1).

    The 1/density rescale (the paper's 1/(1−p), FusionBench's) keeps E[τ̂] = τ per entry; mergekit's
    `rescale` instead scales the masked vector to the original's L1 norm. The mask is drawn as
    U[0,1) < density from one torch.Generator per task vector, on `like`'s device, chunk after
    chunk: deterministic for a seed and device type (CPU and CUDA generators give different masks).
    """
    if density >= 1:
        return None
    generators = stream_generators(seed, like, name)

    def drop(i: int, tau: Tensor) -> Tensor:
        keep = torch.rand(tau.shape, generator=generators[i], device=tau.device) < density
        return tau.mul_(keep).div_(density)

    return drop


@merge_method("dare_linear", formula="τ̂_i = m_i ⊙ (θ_i − θ_B) / density, m_i ~ Bernoulli(density); "
                                     "θ = θ_B + λ·[(1−α)·τ̂_V + α·τ̂_L]",
              source="Yu et al. 2024, Language models are Super Mario (DARE, arXiv:2311.03099); mergekit `dare_linear`",
              params=(DARE_DENSITY, LAMBDA, SEED), needs_base=True, context=("name",),
              mergekit=MergekitSpec("common", per_model=("density",), shared=("lambda",), fixed=RESCALE,
                                    notes=DARE_NOTES))
def dare_linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, *,
                name: Optional[str] = None, **params) -> None:
    """DARE's drop and rescale, then task arithmetic; masks seeded by (seed, tensor name)."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=random_drop(params["density"], params["seed"], out, name))


@merge_method("dare_ties", formula="τ̂_i = m_i ⊙ (θ_i − θ_B) / density; s = sgn Σ w_i·τ̂_i; "
                                   "θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i [/ Σ_{sgn τ̂_i = s} w_i if normalize]; "
                                   "w = (1−α, α)",
              source="Yu et al. 2024 (DARE) with Yadav et al. 2023 (TIES); mergekit `dare_ties`",
              params=(DARE_DENSITY, LAMBDA, SEED, DARE_TIES_NORMALIZE), needs_base=True, context=("name",),
              mergekit=MergekitSpec("common", per_model=("density",), shared=("lambda", "normalize"), fixed=RESCALE,
                       notes=DARE_NOTES))
def dare_ties(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, *,
              name: Optional[str] = None, **params) -> None:
    """DARE's drop and rescale, then TIES' sign election and disjoint merge (without its magnitude
    trim); `normalize` defaults to 0, mergekit's dare_ties default."""
    task_vector_merge(out, vlm, donor, base, alpha, params["lambda"],
                      sparsify=random_drop(params["density"], params["seed"], out, name),
                      consensus=True, normalize=bool(params["normalize"]))
