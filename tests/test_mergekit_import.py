"""mergekit configurations in: `plan_from_mergekit`, the inverse of the export's mergekit.yaml. Round trips
for every method that exports, configs in mergekit's own example style, and refusals that name the key."""

from __future__ import annotations


import gradio as gr
import pytest
import torch
import yaml

from merging import load_pair
from merging.__main__ import main
from merging.export.mergekit_config import DECIMALS, mergekit_yaml
from merging.export.mergekit_import import plan_from_mergekit
from merging.methods.mergekit import MERGEKIT, MergekitUnsupported
from merging.plan.merge_plan import MergePlan
from ui import export_tab
from ui.app import build_app
from ui.panel import PARAM_DEFS

from conftest import toy_explorer
from test_every_method import EXPORTABLE, params_for
from test_mergekit_parity import build_triple


@pytest.fixture(scope="module")
def triple(tmp_path_factory):
    dirs = build_triple(tmp_path_factory.mktemp("import"), torch.float32)
    return dirs, load_pair(dirs["a"], dirs["b"], base=dirs["base"])


def _round_trip(plan: MergePlan, pair) -> MergePlan:
    text = mergekit_yaml(plan, pair)
    got = plan_from_mergekit(text)
    assert (got.vlm, got.donor) == (str(pair.vlm_files.path.resolve()), str(pair.donor.path.resolve()))
    layout, has_base = pair.layout, pair.base is not None
    mine, back = plan.targets(layout, has_base), got.plan.targets(layout, has_base)
    assert mine.keys() == back.keys()
    for name, target in mine.items():  # the file's α are rounded to DECIMALS places, the rest as they were
        assert back[name].alpha == pytest.approx(target.alpha, abs=0.5 * 10 ** -DECIMALS + 1e-12), name
        assert (back[name].method, back[name].params) == (target.method, target.params), name
    return got.plan


@pytest.mark.parametrize("method", EXPORTABLE)
def test_export_then_import_is_the_same_plan(triple, method):
    _, pair = triple
    params = params_for(method)
    plan = MergePlan.from_dict({"rules": [
        {"components": ["q_proj"], "method": method, "curve": {"preset": "constant", "value": 0.9}, "params": params},
        {"components": ["mlp", "self_attn"], "method": method, "curve": {"preset": "anchors", "values": [0.1, 0.6]},
         "params": params}]})
    assert _round_trip(plan, pair) == plan  # constants and anchors come back as themselves
    per_layer = MergePlan.from_dict({"rules": [
        {"components": ["all"], "method": method, "curve": {"preset": "loglinear", "start": 0.05, "end": 0.9},
         "params": params}]})
    _round_trip(per_layer, pair)  # a loglinear curve comes back as the per-layer values mergekit was given


@pytest.mark.parametrize("method", [m for m in MERGEKIT if MERGEKIT[m].weights == "none"])
def test_weightless_methods_round_trip_at_alpha_one(triple, method):
    _, pair = triple
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "method": method, "params": params_for(method),
                                           "curve": {"preset": "constant", "value": 1.0}}]})
    assert _round_trip(plan, pair) == plan


def test_non_layer_alphas_and_single_layer_slices_round_trip(qwen_pair):
    plan = MergePlan.from_dict({"rules": [
        {"components": ["mlp", "embed_tokens"], "method": "slerp",
         "curve": {"preset": "custom", "values": [0.1, 0.2, 0.3, 0.45], "non_layer": 0.05}},
        {"components": ["all"], "method": "slerp", "curve": {"preset": "linear", "start": 0.2, "end": 0.7}}]})
    _round_trip(plan, qwen_pair)


# mergekit's examples folder (mergekit 0.1.5: examples/*.yml), as text
GRADIENT_SLERP = """
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""
TIES = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""
LINEAR = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
"""
FRANKENMERGE = """
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 24]
  - sources:
      - model: garage-bAInd/Platypus2-13B
        layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""
TWO_LINEAR = LINEAR.replace("  - model: garage-bAInd/Platypus2-13B\n    parameters:\n      weight: 0.5\n", "")


def test_mergekits_gradient_slerp_example_imports():
    got = plan_from_mergekit(GRADIENT_SLERP)
    assert (got.vlm, got.donor, got.base) == ("psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B", None)
    assert got.plan == MergePlan.from_dict({"rules": [
        {"components": ["self_attn"], "method": "slerp", "curve": {"preset": "anchors", "values": [0, 0.5, 0.3, 0.7, 1]}},
        {"components": ["mlp"], "method": "slerp", "curve": {"preset": "anchors", "values": [1, 0.5, 0.7, 0.3, 0]}},
        {"components": ["all"], "method": "slerp", "curve": {"preset": "constant", "value": 0.5}}]})


@pytest.mark.parametrize("text,reason", [
    (TIES, r"^models: 3 models to merge .*Mergescope merges two"),
    (LINEAR, r"^models: 3 models to merge"),
    (FRANKENMERGE, r"^merge_method: passthrough stacks layers"),
    (GRADIENT_SLERP + "tokenizer_source: union\n", r"^tokenizer_source: tokenizer surgery"),
    (GRADIENT_SLERP.replace("layer_range: [0, 40]\n      - model: garage", "layer_range: [0, 20]\n      - model: garage"),
     r"^slices\[0\]\.sources: every source of a slice must take the same layer_range"),
    (GRADIENT_SLERP.replace("filter: mlp", "filter: vision_tower"), r"parameters\.t\.filter: 'vision_tower' names no"),
    (TWO_LINEAR + "parameters: {normalize: false}\n",
     r"^models\[1\]\.parameters\.weight: weights sum to 1.3, not 1, and normalize is off"),
    ("merge_method: ties\nmodels: [{model: a}, {model: b}]\n", r"^base_model: mergekit's ties needs base_model"),
    ("merge_method: frob\nmodels: []\n", r"^merge_method: 'frob' has no Mergescope counterpart"),
    ("- 1\n- 2\n", r"^configuration: a mergekit configuration is a mapping"),
])
def test_what_a_plan_cannot_express_is_refused_by_key(text, reason):
    with pytest.raises(MergekitUnsupported, match=reason):
        plan_from_mergekit(text)


def test_normalized_weights_and_per_model_parameters():
    ties = TIES.replace("  - model: WizardLM/WizardMath-13B-V1.0\n    parameters:\n      density: 0.33\n"
                        "      weight:\n        - filter: mlp\n          value: 0.5\n        - value: 0\n", "")
    with pytest.raises(MergekitUnsupported, match=r"models\[1\]\.parameters\.weight: the two weights' sum changes"):
        plan_from_mergekit(ties)  # 1 against a gradient from 0 to 1: α = w/(1 + w) is no piecewise-linear curve
    config = yaml.safe_load(ties)
    config["models"][1]["parameters"]["weight"] = 1.0
    with pytest.raises(MergekitUnsupported, match=r"models\[0\]\.parameters\.density: a gradient"):
        plan_from_mergekit(yaml.safe_dump(config))
    config["models"][0]["parameters"] = {"density": 0.5, "weight": 3.0}
    config["models"][1]["parameters"] = {"density": 0.5, "weight": 1.0}
    (rule,) = plan_from_mergekit(yaml.safe_dump(config)).plan.rules  # normalize: 1 : 3 is α = 0.25
    assert rule.components == ("all",) and rule.curve == {"preset": "constant", "value": 0.25}
    assert rule.params == {"density": 0.5, "lambda": 1.0, "normalize": 1}
    (rule,) = plan_from_mergekit(TWO_LINEAR).plan.rules  # mergekit's linear normalizes unless told not to
    assert rule.curve == {"preset": "constant", "value": 0.3 / 1.3}
    config["models"][1]["parameters"]["density"] = 0.7
    with pytest.raises(MergekitUnsupported, match=r"models\[0\]\.parameters\.density: differs from the donor's 0.7"):
        plan_from_mergekit(yaml.safe_dump(config))


def test_plan_command_from_mergekit(tmp_path, capsys):
    source, out = tmp_path / "config.yaml", tmp_path / "plan.yaml"
    source.write_text(GRADIENT_SLERP)
    assert main(["plan", "--from-mergekit", str(source), "--out", str(out)]) == 0
    assert MergePlan.load(out) == plan_from_mergekit(GRADIENT_SLERP).plan
    assert "VLM psmathur/orca_mini_v3_13b" in capsys.readouterr().out
    source.write_text(FRANKENMERGE)
    assert main(["plan", "--from-mergekit", str(source), "--out", str(tmp_path / "other.yaml")]) == 2
    assert "passthrough" in capsys.readouterr().err and not (tmp_path / "other.yaml").exists()


def test_the_export_tabs_import_box_loads_the_editor(tmp_path):
    explorer = toy_explorer(tmp_path)
    event = next(f for f in build_app(explorer).fns.values() if getattr(f.fn, "__name__", "") == "on_import_mergekit")
    comps, method, alphas, _, question, status, _, *params, plan_yaml = values = \
        export_tab.on_import_mergekit(explorer, GRADIENT_SLERP)
    assert len(values) == len(event.outputs)  # one value per box it is wired to
    assert method == "slerp" and set(comps) == {"q_proj", "k_proj", "v_proj", "o_proj"} and len(alphas) == 8
    assert MergePlan.from_text(plan_yaml) == plan_from_mergekit(GRADIENT_SLERP).plan and "first" in status
    ties = {"merge_method": "ties", "base_model": "base", "parameters": {"normalize": True},
            "models": [{"model": "vlm", "parameters": {"density": 0.5, "weight": 3.0}},
                       {"model": "llm", "parameters": {"density": 0.5, "weight": 1.0}}]}
    params = export_tab.on_import_mergekit(explorer, yaml.safe_dump(ties))[7:-1]
    shown = {p.name: box["value"] for p, box in zip(PARAM_DEFS, params) if box.get("visible")}
    assert shown == {"density": 0.5, "lambda": 1.0, "normalize": 1}  # each method parameter in its own box
    refused = export_tab.on_import_mergekit(explorer, FRANKENMERGE)
    assert len(refused) == len(event.outputs)
    assert refused[5].startswith("⚠️ merge_method: passthrough") and refused[0] == gr.update()
