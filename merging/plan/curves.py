"""Per-layer α curves: α_l is the donor LLM's weight in decoder layer l (0 = keep the VLM), in [0, 1].

Every preset is an exact formula over L decoder layers, l = 0..L-1, declared once with `@preset`
(name, formula, parameter kinds); plan validation, the UI and the docs read that declaration.
Tensors outside the layers (embed_tokens, final norm, lm_head) take `non_layer` if the curve gives
it, else α_0 — mergekit's convention (it plans them with t = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from merging.errors import PlanError
from merging.limits import brief

KINDS = ("alpha", "layer", "alphas")  # a float in [0, 1]; an int ≥ 0; a non-empty list of floats in [0, 1]


@dataclass(frozen=True)
class Preset:
    """A curve preset: `fn(num_layers, **params) -> [α_0 .. α_{L−1}]`, its formula, and each parameter's kind."""

    name: str
    fn: Callable[..., list[float]]
    formula: str
    kinds: dict[str, str]


PRESETS: dict[str, Preset] = {}


def preset(name: str, formula: str, **kinds: str) -> Callable:
    """Register the decorated function as curve preset `name`; `kinds` maps each parameter to a KIND."""
    def register(fn: Callable[..., list[float]]) -> Callable[..., list[float]]:
        assert set(kinds.values()) <= set(KINDS), kinds
        PRESETS[name] = Preset(name, fn, formula, kinds)
        return fn
    return register


def _position(l: int, num_layers: int) -> float:
    return l / (num_layers - 1) if num_layers > 1 else 0.0


@preset("constant", "α_l = value", value="alpha")
def constant(num_layers: int, value: float) -> list[float]:
    """[value] × L."""
    return [value] * num_layers


@preset("linear", "α_l = start + (end − start)·l/(L−1)", start="alpha", end="alpha")
def linear(num_layers: int, start: float, end: float) -> list[float]:
    """Evenly spaced from `start` (layer 0) to `end` (layer L − 1)."""
    return [start + (end - start) * _position(l, num_layers) for l in range(num_layers)]


@preset("loglinear", "α_l = a·(b/a)^(l/(L−1)), a, b = start, end floored at max(start, end)/100 (so a ramp "
        "from 0 works) — our reading of the blog's log-scale ramp (\"Method 3\"), which gives no formula",
        start="alpha", end="alpha")
def loglinear(num_layers: int, start: float, end: float) -> list[float]:
    """Geometrically spaced from `start` to `end`: early layers stay near the VLM, α rises late."""
    top = max(start, end)
    if top == 0:
        return [0.0] * num_layers
    a, b = max(start, top / 100), max(end, top / 100)
    return [a * (b / a) ** _position(l, num_layers) for l in range(num_layers)]


@preset("step", "α_l = 0 for l < layer, else value (layer swap: the first layers stay the VLM)",
        layer="layer", value="alpha")
def step(num_layers: int, layer: int, value: float) -> list[float]:
    """0 below `layer`, `value` from it on."""
    return [0.0 if l < layer else value for l in range(num_layers)]


@preset("anchors", "mergekit's gradient through anchors s_0..s_{n−1}: x = l/(L−1)·(n−1), "
        "α_l = (1 − f)·s_⌊x⌋ + f·s_min(n−1, ⌊x⌋+1), f = x − ⌊x⌋", values="alphas")
def anchors(num_layers: int, values: list[float]) -> list[float]:
    """Piecewise-linear through evenly spaced anchors, evaluated as mergekit evaluates a gradient."""
    n = len(values)
    alphas = []
    for l in range(num_layers):
        x = _position(l, num_layers) * (n - 1)
        i0 = math.floor(x)
        i1 = min(n - 1, i0 + 1)
        f = x - i0
        alphas.append((1 - f) * values[i0] + f * values[i1])
    return alphas


@preset("custom", "α_l = values[l], drawn by hand; exactly L values", values="alphas")
def custom(num_layers: int, values: list[float]) -> list[float]:
    """`values` as given; PlanError unless there is exactly one per layer."""
    if len(values) != num_layers:
        raise PlanError(f"custom curve has {len(values)} values but the model has {num_layers} decoder layers")
    return list(values)


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
    kinds = PRESETS[preset].kinds
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
    spec = PRESETS[curve["preset"]]
    return spec.fn(num_layers, **{k: curve[k] for k in spec.kinds})


def non_layer_alpha(curve: dict, alphas: list[float]) -> float:
    """α of the tensors outside the layers (embeddings, final norm, head): `non_layer`, else α_0."""
    return curve.get("non_layer", alphas[0])
