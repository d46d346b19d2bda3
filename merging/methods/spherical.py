"""Spherical merges after mergekit: nuslerp (slerp of whole tensors, rows or columns), multislerp
(barycentric interpolation on the hypersphere) and the Karcher mean. nuslerp and multislerp take the
weights (1 − α, α); mergekit's karcher takes none, so α blends from θ_V to its mean.

mergekit's nuslerp and multislerp may interpolate task vectors over an optional base; these run
without one (the pair's base is not read). Memory: a few full-size fp32 temporaries (norms and
angles need the whole tensor or row).
"""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.interpolation import toward
from merging.methods.registry import MergekitSpec, ParamDef, Tensor, copy_endpoint, merge_method

ROW_WISE = ParamDef("nuslerp_row_wise", int, 0, 0, 1,
                    "1: slerp each column vector (mergekit: along dim 0); 0: each row, or the whole tensor "
                    "if flattened")
FLATTEN = ParamDef("nuslerp_flatten", int, 1, 0, 1, "1: slerp the whole tensor as one vector (mergekit's default)")
NORMALIZE_WEIGHTS = ParamDef("normalize_weights", int, 1, 0, 1,
                             "1: divide the weights by their sum (mergekit's default)")
MULTISLERP_EPS = ParamDef("eps", float, 1e-8, 0.0, 1e-2, "guard added to norms before dividing")
MAX_ITER = ParamDef("max_iter", int, 10, 1, 1000, "most fixed-point iterations of the Karcher mean")
TOL = ParamDef("tol", float, 1e-5, 0.0, 1.0, "stop when the tangent step's norm is below tol")


def nuslerp_vectors(t: float, v0: Tensor, v1: Tensor, row_wise: bool, flatten: bool, eps: float = 1e-8) -> Tensor:
    """mergekit's nuslerp of fp32 tensors: unit vectors' angle θ per vector (the whole tensor, rows or
    columns), (sin((1−t)θ)·v0 + sin(tθ)·v1)/sin θ, linear where 1 − cos²θ ≤ eps²."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x: Tensor) -> Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


@merge_method("nuslerp", formula="t = α/((1−α) + α); θ = [sin((1−t)Ω)·θ_V + sin(tΩ)·θ_L]/sin Ω per vector "
                                 "(whole tensor, rows or columns), cos Ω of the unit vectors; linear if collinear",
              source="mergekit `nuslerp` (merge_methods/nuslerp.py), without its optional base",
              params=(ROW_WISE, FLATTEN),
              mergekit=MergekitSpec(shared=("nuslerp_row_wise", "nuslerp_flatten")))
def nuslerp(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, **params) -> None:
    """mergekit's nuslerp with weights (1 − α, α); α = 0 and α = 1 return θ_V and θ_L exactly."""
    if copy_endpoint(out, vlm, donor, alpha):
        return
    weights = [1.0 - alpha, alpha]
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    out.copy_(nuslerp_vectors(t, vlm.to(torch.float32), donor.to(torch.float32),
                              bool(params["nuslerp_row_wise"]), bool(params["nuslerp_flatten"])))


def multislerp_merge(vlm: Tensor, donor: Tensor, alpha: float, normalize_weights: bool, eps: float) -> Tensor:
    """mergekit's multislerp of θ_V, θ_L with weights (1 − α, α), in fp32 and its operation order."""
    tensors = torch.stack([vlm.to(torch.float32), donor.to(torch.float32)], dim=0)
    flat = tensors.view(2, -1)
    weights = torch.tensor([1.0 - alpha, alpha], dtype=torch.float32, device=tensors.device)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:  # antipodal with balancing weights: linear, as mergekit does for two tensors
        return (tensors[0] * weights[0] + tensors[1] * weights[1]).view(tensors.shape[1:])
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    return (result * (norms.squeeze(-1) * weights).sum()).view(tensors.shape[1:])


@merge_method("multislerp", formula="u_i = θ_i/‖θ_i‖, m = Σ w_i·u_i/‖·‖, g = Σ w_i·(u_i − ⟨u_i, m⟩m); "
                                    "θ = (Σ w_i‖θ_i‖)·[m·cos‖g‖ + g·sin‖g‖/‖g‖]; w = (1−α, α)",
              source="Goddard, Multi-SLERP (goddard.blog); mergekit `multislerp`, without its optional base",
              params=(NORMALIZE_WEIGHTS, MULTISLERP_EPS),
              mergekit=MergekitSpec(shared=("normalize_weights", "eps")))
def multislerp(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, **params) -> None:
    """mergekit's multislerp with weights (1 − α, α); α = 0 and α = 1 return θ_V and θ_L exactly."""
    if copy_endpoint(out, vlm, donor, alpha):
        return
    out.copy_(multislerp_merge(vlm, donor, alpha, bool(params["normalize_weights"]), params["eps"]))


def karcher_mean(tensors: list[Tensor], max_iter: int, tol: float) -> Tensor:
    """mergekit's karcher_merge_tensors with equal weights, for fp32 tensors: the weighted Karcher mean
    of the unit vectors on the hypersphere, scaled by the mean norm."""
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [torch.linalg.vector_norm(x) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else x / n for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    weights = [alphas[i] / sum(alphas[j] for j in valid) for i in valid]
    units = [units[i] for i in valid]
    mean = torch.zeros_like(units[0])
    for w, u in zip(weights, units):
        mean += w * u
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for w, u in zip(weights, units):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() >= tol:
                tangent += w * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if tangent_norm.item() < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm.item() > tol:
            mean = mean / unit_norm
    return sum(a * n for a, n in zip(alphas, norms)) * mean


@merge_method("karcher", formula="K = (‖θ_V‖ + ‖θ_L‖)/2 · argmin_u Σ d(u, θ_i/‖θ_i‖)² on the unit sphere "
                                 "(fixed-point iteration); θ = θ_V + α·(K − θ_V) (mergekit's karcher is α = 1)",
              source="Karcher mean merging (arXiv:2603.04972); mergekit `karcher`",
              params=(MAX_ITER, TOL),
              mergekit=MergekitSpec(weights="none", shared=("max_iter", "tol")))
def karcher(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, **params) -> None:
    """mergekit's karcher weighs its inputs equally (no per-model weights), so α moves from θ_V
    (α = 0) to the Karcher mean of θ_V and θ_L (α = 1)."""
    toward(out, vlm, alpha, lambda: karcher_mean([vlm.to(torch.float32), donor.to(torch.float32)],
                                                 params["max_iter"], params["tol"]))
