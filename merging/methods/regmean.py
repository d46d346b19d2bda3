"""RegMean: per linear layer, the weight that best reproduces both models' outputs on their own inputs."""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.interpolation import linear
from merging.methods.registry import ParamDef, Tensor, merge_method

GAMMA = ParamDef("gamma", float, 0.9, 0.0, 1.0,
                 "scale of the Gram matrices' off-diagonal: 1 = plain RegMean, 0 = a per-input-feature "
                 "weighted mean; values below 1 regularise towards the weighted mean")


def regmean_solve(weights: list[Tensor], grams: list[Tensor], coeffs: list[float], gamma: float) -> Tensor:
    """RegMean's merged weight of one linear layer y = x·Wᵀ, in float64:

        G̃_i = γ·G_i + (1−γ)·diag(G_i)        (γ scales the off-diagonal; γ = 1: plain RegMean)
        W   = [(Σ_i c_i·G̃_i)⁻¹ · Σ_i c_i·G̃_i·W_iᵀ]ᵀ

    Shapes: W_i [out, in], G_i = X_iᵀX_i (/N_i) [in, in] of that layer's inputs X_i [N_i, in];
    returns [out, in]. With γ = 1 this minimises Σ_i c_i·‖X_i·Wᵀ − X_i·W_iᵀ‖². Solved with
    torch.linalg.solve (no explicit inverse); the caller casts to the parameter's dtype. Scratch, on
    the inputs' device: three [in, in] float64 matrices (Σ c_i·G̃_i, one G̃_i, the solver's LU copy)
    plus [in, out] ones — 98 MiB each for a 7B model's attention (in = 3584), 2.7 GiB each for its
    down_proj (in = 18944). A singular Σ c_i·G̃_i (an input feature that is zero on every sample)
    is regularised with 1e-9·mean(diag) on the diagonal.
    """
    if not weights or not len(weights) == len(grams) == len(coeffs):
        raise ValueError(f"regmean_solve: need as many weights, grams and coeffs (≥ 1), got "
                         f"{len(weights)}, {len(grams)}, {len(coeffs)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"regmean_solve: gamma={gamma} is outside [0, 1]")
    lhs = rhs = None  # Σ c_i·G̃_i [in, in], Σ c_i·G̃_i·W_iᵀ [in, out]
    for w, g, c in zip(weights, grams, coeffs):
        if g.shape != (w.shape[1], w.shape[1]):
            raise ValueError(f"regmean_solve: Gram {list(g.shape)} does not fit a weight {list(w.shape)}")
        g_tilde = g.to(torch.float64, copy=True)  # never edit the caller's (memory-mapped) Gram
        diagonal = torch.diagonal(g_tilde).clone()
        g_tilde.mul_(gamma)
        torch.diagonal(g_tilde).copy_(diagonal)  # γ·G off the diagonal, G_ii on it
        term_r = (g_tilde @ w.to(torch.float64).T).mul_(c)
        rhs = term_r if rhs is None else rhs.add_(term_r)
        lhs = g_tilde.mul_(c) if lhs is None else lhs.add_(g_tilde, alpha=c)
        del g_tilde, term_r
    try:
        return torch.linalg.solve(lhs, rhs).T.contiguous()
    except torch.linalg.LinAlgError:
        ridge = 1e-9 * torch.diagonal(lhs).abs().mean().clamp_min(1e-30)
        torch.diagonal(lhs).add_(ridge)
        return torch.linalg.solve(lhs, rhs).T.contiguous()


@merge_method("regmean", formula="linear layers: W = (Σ_i c_i·G̃_i)⁻¹·Σ_i c_i·G̃_i·W_i, c = (1−α, α), "
                                 "G̃ = γ·G + (1−γ)·diag(G), G = XᵀX/N of each model's own layer inputs (needs Gram "
                                 "files: `python -m merging grams`); other tensors: linear",
              source="Jin et al. 2023, Dataless knowledge fusion by merging weights of language models (RegMean)",
              params=(GAMMA,), context=("grams",))
def regmean(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, *,
            grams: Optional[tuple[Tensor, Tensor]] = None, **params) -> None:
    """For a linear layer's weight, `regmean_solve` with weights (1−α, α) and G_V / G_L the Gram
    matrices of that layer's inputs in the VLM (on image + question samples) and the donor (on text).

    Tensors that are not a linear layer's weight — norms, embeddings, biases — come with grams=None
    and are merged linearly, as are α = 0 and α = 1 (the endpoints, exactly).
    """
    if grams is None or alpha == 0 or alpha == 1:
        linear(out, vlm, donor, base, alpha)
        return
    g_vlm, g_donor = grams
    out.copy_(regmean_solve([vlm, donor], [g_vlm, g_donor], [1.0 - alpha, alpha], params["gamma"]))
