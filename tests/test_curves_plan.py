import json
import math

import numpy as np
import pytest

from merging.plan.curves import layer_alphas, normalize_curve
from merging.errors import PlanError
from merging.plan.merge_plan import MergePlan

L = 8


def alphas(**curve):
    return layer_alphas(normalize_curve(curve), L)


def test_constant_linear_step():
    assert alphas(preset="constant", value=0.4) == [0.4] * L
    lin = alphas(preset="linear", start=0.1, end=0.8)
    assert lin[0] == pytest.approx(0.1) and lin[-1] == pytest.approx(0.8)
    assert np.allclose(np.diff(lin), 0.1)
    assert alphas(preset="step", layer=3, value=0.7) == [0, 0, 0, 0.7, 0.7, 0.7, 0.7, 0.7]


def test_loglinear_is_geometric_and_floors_a_zero_start():
    values = alphas(preset="loglinear", start=0.05, end=0.4)
    assert values[0] == pytest.approx(0.05) and values[-1] == pytest.approx(0.4)
    ratios = np.array(values[1:]) / np.array(values[:-1])
    assert np.allclose(ratios, ratios[0])  # evenly spaced on a log scale
    from_zero = alphas(preset="loglinear", start=0.0, end=0.5)
    assert from_zero[0] == pytest.approx(0.005) and from_zero[-1] == pytest.approx(0.5)
    assert all(a < b for a, b in zip(from_zero, from_zero[1:]))
    assert alphas(preset="loglinear", start=0.0, end=0.0) == [0.0] * L


def mergekit_gradient(values, layer, num_layers):
    """mergekit's gradient, written from its source: piecewise-linear in t = layer / (num_layers - 1)."""
    t = layer / (num_layers - 1)
    scaled = t * (len(values) - 1)
    i0 = math.floor(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


@pytest.mark.parametrize("values", [[0.0, 0.3, 0.6], [0.5], [0.2, 0.9], [0.0, 1.0, 0.0, 0.5, 0.25]])
def test_anchors_follow_mergekit(values):
    got = alphas(preset="anchors", values=values)
    assert got == [mergekit_gradient(values, l, L) for l in range(L)]
    if len(values) > 1:  # and equal plain piecewise-linear interpolation between evenly spaced anchors
        assert np.allclose(got, np.interp(np.linspace(0, 1, L), np.linspace(0, 1, len(values)), values))


def test_custom_needs_one_value_per_layer():
    assert alphas(preset="custom", values=[i / 10 for i in range(L)])[3] == 0.3
    with pytest.raises(PlanError, match="custom curve has 3 values but the model has 8"):
        alphas(preset="custom", values=[0.1, 0.2, 0.3])


@pytest.mark.parametrize("curve,message", [
    ({"preset": "constant", "value": 1.2}, "outside \\[0, 1\\]"),
    ({"preset": "constant", "value": -0.1}, "outside"),
    ({"preset": "constant", "value": float("nan")}, "finite"),
    ({"preset": "constant", "value": "0.4"}, "must be a number"),
    ({"preset": "linear", "start": 0.1}, "needs 'end'"),
    ({"preset": "wiggle", "value": 0.1}, "unknown preset"),
    ({"preset": "anchors", "values": []}, "non-empty list"),
    ({"preset": "anchors", "values": [0.1, 2.0]}, "values\\[1\\].*outside"),
    ({"preset": "step", "layer": -1, "value": 0.5}, "layer index"),
    ({"preset": "constant", "value": 0.1, "slope": 2}, "unknown key"),
])
def test_bad_curves_say_what_and_where(curve, message):
    with pytest.raises(PlanError, match=message):
        normalize_curve(curve, "rules[0].curve")


PLAN_YAML = """
rules:
  - components: [self_attn]
    method: linear
    curve: {preset: loglinear, start: 0.05, end: 0.4}
  - components: [mlp, embed_tokens]
    curve: {preset: anchors, values: [0.0, 0.3, 0.6], non_layer: 0.2}
"""


def test_yaml_json_round_trip_and_canonical_hash():
    plan = MergePlan.from_text(PLAN_YAML)
    assert MergePlan.from_text(plan.to_yaml()) == plan
    assert MergePlan.from_text(json.dumps(plan.to_dict())) == plan
    # order of components, omitted defaults and int-vs-float spelling do not change the identity
    same = MergePlan.from_dict({"rules": [
        {"components": ["self_attn"], "curve": {"end": 0.4, "start": 0.05, "preset": "loglinear"}, "params": {}},
        {"components": ["embed_tokens", "mlp"], "method": "linear",
         "curve": {"preset": "anchors", "values": [0, 0.3, 0.6], "non_layer": 0.2}}]})
    assert same.hash() == plan.hash() and same.canonical_json() == plan.canonical_json()
    other = MergePlan.from_text(PLAN_YAML.replace("0.4}", "0.41}"))
    assert other.hash() != plan.hash()
    assert MergePlan.from_text("").rules == () and MergePlan.from_text("rules: []").hash() == MergePlan().hash()


@pytest.mark.parametrize("text,message", [
    ("rules: [{components: [vision], curve: {preset: constant, value: 0.1}}]", "unknown component"),
    ("rules: [{components: [mlp], method: average, curve: {preset: constant, value: 0.1}}]", "unknown merge method"),
    ("rules: [{components: [mlp]}]", "missing 'curve'"),
    ("rules: [{components: [], curve: {preset: constant, value: 0.1}}]", "non-empty list"),
    ("rules: [{components: [mlp], curve: {preset: constant, value: 0.1}, params: {density: 0.5}}]",
     "no parameter"),
    ("rules: [{components: [mlp], curve: {preset: constant, value: 0.1}, weight: 2}]", "unknown key"),
    ("rules: {a: 1}", "'rules' list"),
    ("rules: [1, 2]", "rules\\[0\\]"),
    ("steps: []", "unknown top-level"),
    ("rules: [unclosed", "not valid YAML"),
])
def test_malformed_plans_are_clear_errors(text, message):
    with pytest.raises(PlanError, match=message):
        MergePlan.from_text(text)


def test_json_exponent_numbers_round_trip():
    """Found by fuzzing: YAML 1.1 reads the JSON number 1e-30 as a string."""
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "anchors", "values": [1e-30]}}]})
    assert MergePlan.from_text(plan.canonical_json()) == plan
    assert MergePlan.from_text(plan.to_yaml()) == plan
