"""Linear interpolation and spherical interpolation (slerp) of the VLM's and the donor's tensors."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from merging.methods.registry import MergekitSpec, Tensor, chunks, copy_endpoint, merge_method

SLERP_COLLINEAR = 0.9995  # |cos Ω| above this: sin Ω is too small to divide by, interpolate linearly


@merge_method("linear", formula="θ = θ_V + α·(θ_L − θ_V)",
              source="weight averaging (Wortsman et al. 2022, model soups); mergekit `linear`",
              mergekit=MergekitSpec(fixed=(("normalize", False),), intro=(
    "linear: weights (1−α, α), normalize false → (1−α)·θ_V + α·θ_L. Mergescope computes",
    "θ_V + α·(θ_L − θ_V) (bf16: one fused lerp): equal up to fp32 rounding, which can move",
    "a rare element by one bf16 step.")), elementwise=True)
def linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """α = 0 and α = 1 give θ_V and θ_L (cast to out's dtype) exactly."""
    if copy_endpoint(out, vlm, donor, alpha):
        return
    if vlm.dtype == donor.dtype == out.dtype and out.dtype in (torch.bfloat16, torch.float16):
        # torch.lerp on half types computes each element in fp32 and rounds once, fused, at memory
        # speed (no full-size temporaries). Its fp32 arithmetic differs from the loop below (fused
        # multiply-add; for α ≥ 0.5 it computes θ_L − (1−α)·(θ_L − θ_V)), which moves about 1e-4 of
        # the elements by one bf16 step. Both are deterministic, so history independence holds.
        torch.lerp(vlm, donor, alpha, out=out)
        return
    for o, v, d in chunks(out, vlm, donor):
        v32 = v.to(torch.float32)  # may alias the (read-only) original: never modify it in place
        o.copy_(d.to(torch.float32).sub(v32).mul_(alpha).add_(v32))


@merge_method("slerp", formula="θ = [sin((1−α)Ω)·θ_V + sin(αΩ)·θ_L] / sin Ω, cos Ω = ⟨θ_V, θ_L⟩/(‖θ_V‖‖θ_L‖); "
                               "linear if |cos Ω| > 0.9995",
              source="Shoemake 1985; mergekit `slerp`, FusionBench",
              mergekit=MergekitSpec(base="vlm", weights="t", intro=(
    "slerp: the VLM is base_model, so t = α (t = 0 → the VLM). Equal up to fp32 rounding.",)))
def slerp(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """Spherical interpolation of the whole tensors, flattened to vectors, unnormalised; cos Ω is
    clamped to [−1, 1]. Falls back to `linear` when nearly collinear or anti-collinear, or when
    either tensor is all zeros. α = 0 and α = 1 return θ_V and θ_L exactly. The dot product and
    norms are accumulated chunk by chunk in fp32.
    """
    if copy_endpoint(out, vlm, donor, alpha):
        return
    sums = torch.zeros(3, dtype=torch.float32, device=out.device)  # ⟨V, L⟩, ‖V‖², ‖L‖²
    for v, d in chunks(vlm, donor):
        v32, d32 = v.to(torch.float32), d.to(torch.float32)
        sums += torch.stack([torch.dot(v32, d32), torch.dot(v32, v32), torch.dot(d32, d32)])
    dot, vv, dd = sums.tolist()
    if not (vv > 0 and dd > 0):
        linear(out, vlm, donor, base, alpha)
        return
    cos = max(-1.0, min(1.0, dot / math.sqrt(vv * dd)))
    if abs(cos) > SLERP_COLLINEAR:
        linear(out, vlm, donor, base, alpha)
        return
    omega = math.acos(cos)
    c_v = math.sin((1 - alpha) * omega) / math.sin(omega)
    c_l = math.sin(alpha * omega) / math.sin(omega)
    for o, v, d in chunks(out, vlm, donor):
        # .to() may alias the read-only originals: torch.mul makes the one fresh temporary
        o.copy_(torch.mul(d.to(torch.float32), c_l).add_(v.to(torch.float32), alpha=c_v))


def toward(out: Tensor, vlm: Tensor, alpha: float, merge: Callable[[], Tensor]) -> None:
    """θ = θ_V + α·(M − θ_V) for a method whose own merge M (here `merge()`, fp32, computed only when
    α > 0) takes no per-model weights: α = 0 keeps θ_V, α = 1 writes M (rounded once to out's dtype),
    in between `linear` from θ_V towards M. The reading of α for mergekit's weightless methods."""
    if alpha == 0:
        out.copy_(vlm)
        return
    linear(out, vlm, merge(), None, alpha)


def toward_chunks(out: Tensor, vlm: Tensor, alpha: float, merge: Callable[..., Tensor], *inputs: Tensor) -> None:
    """`toward` for an elementwise merge: M = merge(θ_V, *inputs) (fp32 chunks in, a fresh fp32 chunk
    out) computed and blended chunk by chunk, with `linear`'s arithmetic: no full-size temporaries."""
    if alpha == 0:
        out.copy_(vlm)
        return
    for o, v, *xs in chunks(out, vlm, *inputs):
        v32 = v.to(torch.float32)
        merged = merge(v32, *(x.to(torch.float32) for x in xs))
        o.copy_(merged if alpha == 1 else merged.sub_(v32).mul_(alpha).add_(v32))
