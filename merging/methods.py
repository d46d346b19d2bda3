"""Merge methods: one pure tensor function each, behind a registry.

A method writes the merged value of one tensor into `out` (the resident parameter, already on its
device), from the VLM's original θ_V, the donor's θ_L and optionally a base θ_B, with α = the
donor's weight. It keeps no state: the same inputs always give bit-identical output, which is what
makes the engine history-independent. Numerics: computed in fp32, rounded once to `out.dtype`.

Each method declares its parameters once (`ParamDef`); that declaration validates plans and is the
single source for the UI's controls and the README's methods table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .errors import PlanError

Tensor = torch.Tensor
CHUNK_ELEMENTS = 1 << 20  # fp32 temporaries stay ≤ 4 MiB each: cache-sized, never model-sized


@dataclass(frozen=True)
class ParamDef:
    name: str
    kind: type                      # float or int
    default: float | int
    low: float                      # inclusive bounds (low_open: exclusive lower bound)
    high: float
    doc: str
    low_open: bool = False

    def check(self, value: object, where: str) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind is int and not float(value).is_integer()):
            raise PlanError(f"{where}: {self.name} must be {self.kind.__name__}, got {value!r}")
        value = self.kind(value)
        below = value <= self.low if self.low_open else value < self.low
        if not math.isfinite(value) or below or value > self.high:
            bracket = "(" if self.low_open else "["
            raise PlanError(f"{where}: {self.name}={value} is outside {bracket}{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., None]         # fn(out, vlm, donor, base, alpha, **params) -> None
    formula: str
    params: tuple[ParamDef, ...] = field(default=())
    needs_base: bool = False

    def normalize_params(self, params: object, where: str) -> dict:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise PlanError(f"{where}: params must be a mapping, got {params!r}")
        known = {p.name: p for p in self.params}
        extra = sorted(set(params) - set(known))
        if extra:
            raise PlanError(f"{where}: method {self.name!r} has no parameter(s) {extra}; "
                            f"it takes {sorted(known) or 'none'}")
        return {name: p.check(params.get(name, p.default), f"{where}.{name}") for name, p in known.items()}


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: object, where: str = "method") -> Method:
    if name not in REGISTRY:
        raise PlanError(f"{where}: unknown merge method {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def _chunks(*tensors: Tensor):
    """Matching flat chunks of same-shaped tensors (views, no copies)."""
    flats = [t.view(-1) for t in tensors]
    for start in range(0, flats[0].numel(), CHUNK_ELEMENTS):
        yield [f[start:start + CHUNK_ELEMENTS] for f in flats]


def linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """θ = θ_V + α · (θ_L − θ_V)."""
    if vlm.dtype == donor.dtype == out.dtype and out.dtype in (torch.bfloat16, torch.float16):
        # torch.lerp on half types computes each element in fp32 and rounds once, fused, at memory
        # speed (no full-size temporaries). Its fp32 arithmetic differs from the loop below (fused
        # multiply-add; for α ≥ 0.5 it computes θ_L − (1−α)·(θ_L − θ_V)), which moves about 1e-4 of
        # the elements by one bf16 step. Both are deterministic, so history independence holds.
        torch.lerp(vlm, donor, alpha, out=out)
        return
    for o, v, d in _chunks(out, vlm, donor):
        v32 = v.to(torch.float32)  # may alias the (read-only) original: never modify it in place
        o.copy_(d.to(torch.float32).sub(v32).mul_(alpha).add_(v32))


register(Method("linear", linear, "θ = θ_V + α·(θ_L − θ_V)"))
