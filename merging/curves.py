"""Per-layer α curves: α_l is the donor LLM's weight in decoder layer l (0 = keep the VLM).

Every preset is an exact formula over L decoder layers, l = 0..L-1:

- constant(value):        α_l = value
- linear(start, end):     α_l = start + (end - start) · l / (L - 1)
- loglinear(start, end):  geometric spacing from start to end, α_l = a · (b / a)^(l / (L - 1)), where
                          a, b are start, end floored at max(start, end) / 100 so that a ramp from 0
                          works. Early layers stay near the VLM and α rises late. This is our reading of
                          the blog's "Method 3" (log-scale ramp), which gives no formula.
- step(layer, value):     α_l = 0 for l < layer, else value ("layer swap": the first layers stay VLM)
- anchors(values s_0..s_{n-1}): mergekit's gradient. t = l / (L - 1), x = t · (n - 1), i0 = ⌊x⌋,
                          i1 = min(n - 1, i0 + 1), f = x - i0, α_l = (1 - f) · s_i0 + f · s_i1
- custom(values):         α_l = values[l], drawn by hand; exactly L values

Tensors outside the layers (embed_tokens, final norm, lm_head) take `non_layer` if the curve gives
it, else α_0 — mergekit's convention (it plans them with t = 0).
"""

from __future__ import annotations

import math
from typing import Callable

from .errors import PlanError
from .limits import brief


def _position(l: int, num_layers: int) -> float:
    return l / (num_layers - 1) if num_layers > 1 else 0.0


def constant(num_layers: int, value: float) -> list[float]:
    return [value] * num_layers


def linear(num_layers: int, start: float, end: float) -> list[float]:
    return [start + (end - start) * _position(l, num_layers) for l in range(num_layers)]


def loglinear(num_layers: int, start: float, end: float) -> list[float]:
    top = max(start, end)
    if top == 0:
        return [0.0] * num_layers
    a, b = max(start, top / 100), max(end, top / 100)
    return [a * (b / a) ** _position(l, num_layers) for l in range(num_layers)]


def step(num_layers: int, layer: int, value: float) -> list[float]:
    return [0.0 if l < layer else value for l in range(num_layers)]


def anchors(num_layers: int, values: list[float]) -> list[float]:
    n = len(values)
    alphas = []
    for l in range(num_layers):
        x = _position(l, num_layers) * (n - 1)
        i0 = math.floor(x)
        i1 = min(n - 1, i0 + 1)
        f = x - i0
        alphas.append((1 - f) * values[i0] + f * values[i1])
    return alphas


def custom(num_layers: int, values: list[float]) -> list[float]:
    if len(values) != num_layers:
        raise PlanError(f"custom curve has {len(values)} values but the model has {num_layers} decoder layers")
    return list(values)


# preset name → (function, {parameter: kind}); kinds: "alpha" (a float in [0, 1]), "layer" (an int ≥ 0),
# "alphas" (a non-empty list of floats in [0, 1])
PRESETS: dict[str, tuple[Callable[..., list[float]], dict[str, str]]] = {
    "constant": (constant, {"value": "alpha"}),
    "linear": (linear, {"start": "alpha", "end": "alpha"}),
    "loglinear": (loglinear, {"start": "alpha", "end": "alpha"}),
    "step": (step, {"layer": "layer", "value": "alpha"}),
    "anchors": (anchors, {"values": "alphas"}),
    "custom": (custom, {"values": "alphas"}),
}


def check_alpha(value: object, where: str) -> float:
    """A finite float in [0, 1], or a PlanError that says where the bad value is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where}: α must be a number, got {brief(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise PlanError(f"{where}: α must be finite, got {value}")
    if not 0.0 <= value <= 1.0:
        raise PlanError(f"{where}: α={value} is outside [0, 1]")
    return value


def normalize_curve(curve: object, where: str = "curve") -> dict:
    """Validate a curve spec and return its canonical form (floats, only the preset's keys)."""
    if not isinstance(curve, dict):
        raise PlanError(f"{where}: must be a mapping like {{preset: constant, value: 0.4}}, got {brief(curve)}")
    preset = curve.get("preset")
    if preset not in PRESETS:
        raise PlanError(f"{where}.preset: unknown preset {brief(preset)}; choose one of {sorted(PRESETS)}")
    _, kinds = PRESETS[preset]
    allowed = set(kinds) | {"preset", "non_layer"}
    extra = sorted(set(curve) - allowed)
    if extra:
        raise PlanError(f"{where}: unknown key(s) {brief(extra)} for preset {preset!r}; expected {sorted(kinds)}")
    out: dict = {"preset": preset}
    for key, kind in kinds.items():
        if key not in curve:
            raise PlanError(f"{where}: preset {preset!r} needs {key!r}")
        value, at = curve[key], f"{where}.{key}"
        if kind == "alpha":
            out[key] = check_alpha(value, at)
        elif kind == "layer":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PlanError(f"{at}: must be a layer index ≥ 0, got {brief(value)}")
            out[key] = value
        else:
            if not isinstance(value, (list, tuple)) or not value:
                raise PlanError(f"{at}: must be a non-empty list of α values, got {brief(value)}")
            out[key] = [check_alpha(v, f"{at}[{i}]") for i, v in enumerate(value)]
    if "non_layer" in curve:
        out["non_layer"] = check_alpha(curve["non_layer"], f"{where}.non_layer")
    return out


def layer_alphas(curve: dict, num_layers: int) -> list[float]:
    """α for each decoder layer of a normalized curve."""
    fn, kinds = PRESETS[curve["preset"]]
    return fn(num_layers, **{k: curve[k] for k in kinds})


def non_layer_alpha(curve: dict, alphas: list[float]) -> float:
    return curve.get("non_layer", alphas[0])
