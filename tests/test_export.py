"""Export: the merged VLM as a checkpoint `from_pretrained` reloads with the same logits, written
streamed and sharded in the VLM's own key layout, without disturbing the engine; the plan as mergekit
YAML where mergekit can express it, a clear reason where not; bad inputs refused before any write."""

import json

import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, MergescopeError, PlanError, load_pair
from merging.plan import curves
from merging.__main__ import main
from merging.io.checkpoint import Checkpoint
from merging.export.writer import export_checkpoint, parse_size
from merging.export.mergekit_config import MergekitUnsupported, mergekit_config, mergekit_yaml
from merging.run.generate import build_inputs

IMAGE = Image.new("RGB", (56, 56), (200, 40, 120))
PLAN = MergePlan.from_dict({"rules": [
    {"components": ["self_attn"], "method": "slerp", "curve": {"preset": "loglinear", "start": 0.05, "end": 0.6}},
    {"components": ["mlp", "embed_tokens"], "method": "linear", "curve": {"preset": "constant", "value": 0.3}}]})
OTHER = MergePlan.from_dict({"rules": [
    {"components": ["all"], "method": "linear", "curve": {"preset": "constant", "value": 0.8}}]})


def logits(model, pair):
    with torch.no_grad():
        return model(**build_inputs(pair, "How many shapes are there?", IMAGE)).logits


@pytest.fixture(scope="module")
def exported(qwen_dirs, tmp_path_factory):
    """PLAN exported while the engine holds PLAN (a), and while it holds OTHER (b)."""
    root = tmp_path_factory.mktemp("export")
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair)
    engine.apply(PLAN)
    merged_logits = logits(pair.vlm, pair)
    state = lm_state(pair)
    report = export_checkpoint(engine, PLAN, root / "a", max_shard_bytes="400KB")
    assert engine.plan == PLAN
    assert_same_weights(pair, state)  # exporting the current plan leaves the weights alone
    engine.apply(OTHER)
    other_state = lm_state(pair)
    export_checkpoint(engine, PLAN, root / "b", max_shard_bytes="400KB")
    assert engine.plan == OTHER
    assert_same_weights(pair, other_state)  # ... and so does exporting another plan
    return pair, root, report, merged_logits


def test_round_trip_reloads_with_the_same_logits(exported):
    pair, root, report, merged_logits = exported
    model = AutoModelForImageTextToText.from_pretrained(root / "a").eval()
    assert torch.equal(logits(model, pair), merged_logits)
    assert not torch.equal(merged_logits, logits(load_pair(pair.vlm_files.path, pair.donor.path).vlm, pair))
    processor = AutoProcessor.from_pretrained(root / "a")
    reloaded = build_inputs(type("P", (), {"processor": processor, "is_multimodal": True, "vlm": model})(),
                            "How many shapes are there?", IMAGE)
    assert torch.equal(reloaded["input_ids"], build_inputs(pair, "How many shapes are there?", IMAGE)["input_ids"])


def test_checkpoint_layout_is_the_vlms_own_and_sharded(exported):
    pair, root, report, _ = exported
    out = root / "a"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert report["shards"] == len(shards) > 1
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    exported_files = Checkpoint(out)
    assert sorted(exported_files.keys()) == sorted(pair.vlm_files.keys()) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == report["bytes"]
    for name in shards:  # no shard above the limit unless a single tensor is
        assert (out / name).stat().st_size < 400_000 + 2_000 or len(Checkpoint(out / name).keys()) == 1
    merged = {s.vlm_key for s in pair.layout.slots if s.group in ("self_attn", "mlp") or s.role == "embed_tokens"}
    for key in pair.vlm_files.keys():
        same = torch.equal(exported_files.get(key), pair.vlm_files.get(key))
        assert same == (key not in merged), key  # vision tower, norms, head: the VLM's own
    # the same bytes whatever plan the engine held while exporting (history independence)
    other = Checkpoint(root / "b")
    assert all(torch.equal(exported_files.get(k), other.get(k)) for k in exported_files.keys())
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "processor_config.json", "mergescope_plan.yaml", "README.md"} <= names
    assert not any(n.endswith(".partial") or n == "model.safetensors" for n in names)


def test_plan_card_and_mergekit_files(exported):
    pair, root, report, _ = exported
    out = root / "a"
    assert MergePlan.load(out / "mergescope_plan.yaml") == PLAN
    card = (out / "README.md").read_text()
    for needed in (str(pair.vlm_files.path), str(pair.donor.path), pair.vlm_files.fingerprint(),
                   pair.donor.fingerprint(), PLAN.hash(), "loglinear", "`slerp`", "`linear`", "| 3 | slerp 0.6"):
        assert needed in card, needed
    # two methods in one plan: mergekit cannot say it, and the card says why
    assert report["mergekit"] is None and "mixes slerp (rule 0), linear (rule 1)" in report["mergekit_reason"]
    assert not (out / "mergekit.yaml").exists() and "mixes slerp" in card


def test_export_follows_the_resident_dtype(qwen_dirs, tmp_path):
    pair = load_pair(*qwen_dirs, dtype="bfloat16")  # fp32 files, bf16 in memory
    engine = MergeEngine(pair)
    engine.apply(OTHER)
    export_checkpoint(engine, OTHER, tmp_path / "bf16")
    files = Checkpoint(tmp_path / "bf16")
    assert {files.dtype(k) for k in files.keys()} == {torch.bfloat16}
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "bf16").eval()
    assert model.dtype == torch.bfloat16
    assert torch.equal(logits(model, pair), logits(pair.vlm, pair))


# -- bad inputs -----------------------------------------------------------------------------------------
def test_bad_inputs_write_nothing_and_change_nothing(qwen_pair, qwen_engine, tmp_path):
    qwen_engine.apply(PLAN)
    before = lm_state(qwen_pair)
    out = tmp_path / "never"
    bad_plans = [
        (MergePlan.from_dict({"rules": [{"components": ["mlp"], "curve": {"preset": "custom", "values": [0.1]}}]}),
         "custom curve has 1 values but the model has 4"),
        (MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "ties",
                                         "curve": {"preset": "constant", "value": 0.5}}]}), "needs a base model"),
        (MergePlan.from_dict({"rules": [{"components": ["self_attn"], "method": "regmean",
                                         "curve": {"preset": "constant", "value": 0.5}}]}), "needs Gram statistics"),
    ]
    for plan, message in bad_plans:
        with pytest.raises(PlanError, match=message):
            export_checkpoint(qwen_engine, plan, out)
    assert not out.exists()
    with pytest.raises(MergescopeError, match="is the VLM's own folder"):
        export_checkpoint(qwen_engine, PLAN, qwen_pair.vlm_files.path)
    with pytest.raises(MergescopeError, match="contains the VLM"):
        export_checkpoint(qwen_engine, PLAN, qwen_pair.vlm_files.path.parent, overwrite=True)
    assert (qwen_pair.vlm_files.path / "config.json").is_file()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(MergescopeError, match="not empty; choose a new folder or pass --overwrite"):
        export_checkpoint(qwen_engine, PLAN, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(MergescopeError, match="expected e.g. 5GB"):
        export_checkpoint(qwen_engine, PLAN, out, max_shard_bytes="lots")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["full"]  # no partial folders
    assert_same_weights(qwen_pair, before)
    assert qwen_engine.plan == PLAN
    assert parse_size("2GiB") == 2**31 and parse_size("500MB") == 5 * 10**8 and parse_size(7) == 7


# -- mergekit YAML ----------------------------------------------------------------------------------------
def test_mergekit_yaml_per_filter_gradients(qwen_pair):
    plan = MergePlan.from_dict({"rules": [
        {"components": ["q_proj"], "method": "slerp", "curve": {"preset": "constant", "value": 0.9}},
        {"components": ["self_attn"], "method": "slerp", "curve": {"preset": "anchors", "values": [0.0, 0.5, 0.2]}},
        {"components": ["mlp", "embed_tokens"], "method": "slerp",
         "curve": {"preset": "custom", "values": [0.1, 0.2, 0.3, 0.45], "non_layer": 0.05}}]})
    text = mergekit_yaml(plan, qwen_pair)
    config = yaml.safe_load(text)
    vlm = str(qwen_pair.vlm_files.path.resolve())
    assert config["merge_method"] == "slerp" and config["base_model"] == vlm  # t = 0 is the VLM
    assert [m["model"] for m in config["models"]] == [vlm, str(qwen_pair.donor.path.resolve())]
    assert config["parameters"]["t"] == [
        {"filter": ".q_proj.", "value": 0.9},
        {"filter": ".self_attn.", "value": [0.0, 0.5, 0.2]},          # anchors: mergekit's own gradient
        {"filter": "embed_tokens", "value": 0.05},                    # outside the layers: non_layer
        {"filter": ".mlp.", "value": [0.1, 0.2, 0.3, 0.45]},          # a custom curve: its exact list
        {"value": 0.0}]                                               # the rest keeps the VLM
    assert config["dtype"] == "float32" and config["out_dtype"] == "float32"
    assert text.startswith("# mergekit configuration of Mergescope plan") and "vision-language model" in text


def _floats(value) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return [value] if isinstance(value, float) else []


@pytest.mark.parametrize("method, params", [("linear", {}), ("ties", {"density": 1 / 3})])
def test_mergekit_yaml_writes_every_float_to_four_decimals(qwen_dirs, method, params):
    """α (e.g. 0.7/3 = 0.2333 on a ramp), the VLM's complement weight and parameters such as density =
    1/3 all come out to 4 decimals (parameters other than α: 4 significant digits below 0.1), within 0.5·10⁻⁴ of the plan's value; the
    exact form stays available (decimals=None)."""
    vlm_dir, llm_dir = qwen_dirs
    pair = load_pair(vlm_dir, llm_dir, base=vlm_dir)
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "method": method, "params": params,
                                           "curve": {"preset": "linear", "start": 0.0, "end": 0.7}}]})
    text = mergekit_yaml(plan, pair)
    floats = _floats(yaml.safe_load(text))
    assert floats and all(round(f, 4) == f or float(f"{f:.4g}") == f for f in floats)
    assert 0.2333 in floats and 0.7667 in floats  # the ramp's layer 1 of 4: α = 0.7/3, the VLM's weight 1 − α
    assert "0.0857142857" not in text and "Values rounded to 4 decimals" in text
    exact = _floats(yaml.safe_load(mergekit_yaml(plan, pair, decimals=None)))
    assert any(round(f, 4) != f for f in exact)  # the ramp's exact values have more digits
    assert all(abs(r - e) <= 0.5e-4 + 1e-12 for r, e in zip(floats, exact)) and len(floats) == len(exact)


def test_mergekit_weights_for_linear_and_task_vector_methods(qwen_dirs):
    vlm_dir, llm_dir = qwen_dirs
    pair = load_pair(vlm_dir, llm_dir, base=vlm_dir)
    linear = mergekit_config(MergePlan.from_dict({"rules": [
        {"components": ["all"], "method": "linear", "curve": {"preset": "linear", "start": 0.0, "end": 0.6}}]}), pair)
    assert "base_model" not in linear and linear["parameters"] == {"normalize": False}
    alphas = curves.linear(4, 0.0, 0.6)
    # unfiltered: everything, per layer, to 4 decimals
    assert linear["models"][1]["parameters"] == {"weight": [round(a, 4) for a in alphas]}
    assert linear["models"][0]["parameters"] == {"weight": [round(1 - a, 4) for a in alphas]}
    ties = mergekit_config(MergePlan.from_dict({"rules": [
        {"components": ["mlp"], "method": "ties", "curve": {"preset": "constant", "value": 0.25},
         "params": {"density": 0.5, "lambda": 1.5, "normalize": 0}}]}), pair)
    assert ties["base_model"] == str(vlm_dir.resolve()) and len(ties["models"]) == 3
    assert ties["models"][1]["parameters"] == {"weight": [{"filter": ".mlp.", "value": 0.25}, {"value": 0.0}],
                                               "density": [{"filter": ".mlp.", "value": 0.5}, {"value": 1.0}]}
    assert ties["parameters"] == {"lambda": [{"filter": ".mlp.", "value": 1.5}, {"value": 1.0}],
                                  "normalize": [{"filter": ".mlp.", "value": False}, {"value": True}]}
    dare = mergekit_yaml(MergePlan.from_dict({"rules": [
        {"components": ["all"], "method": "dare_linear", "curve": {"preset": "constant", "value": 0.5},
         "params": {"seed": 7}}]}), pair)
    assert "rescale: true" in dare and "seed 7 does not carry over" in dare


@pytest.mark.parametrize("plan,reason", [
    ({"rules": []}, "merges nothing"),
    ({"rules": [{"components": ["self_attn"], "method": "regmean", "curve": {"preset": "constant", "value": 0.5}}]},
     "mergekit has no RegMean merge method"),
    ({"rules": [{"components": ["self_attn"], "method": "slerp", "curve": {"preset": "constant", "value": 0.5}},
                {"components": ["mlp"], "curve": {"preset": "constant", "value": 0.5}},
                {"components": ["norms"], "method": "slerp", "curve": {"preset": "constant", "value": 0.5}}]},
     r"one merge method per configuration; this plan mixes slerp \(rules 0, 2\), linear \(rule 1\)"),
])
def test_plans_mergekit_cannot_express_get_a_reason(qwen_pair, plan, reason):
    with pytest.raises(MergekitUnsupported, match=reason):
        mergekit_yaml(MergePlan.from_dict(plan), qwen_pair)
    # shadowed rules do not count: the linear rule below is never reached
    mergekit_yaml(MergePlan.from_dict({"rules": [
        {"components": ["all"], "method": "slerp", "curve": {"preset": "constant", "value": 0.5}},
        {"components": ["mlp"], "curve": {"preset": "constant", "value": 0.5}}]}), qwen_pair)


def test_vocabulary_mismatch_is_not_expressible(llava_dirs):
    pair = load_pair(*llava_dirs)
    with pytest.raises(MergekitUnsupported, match="vocabularies differ"):
        mergekit_yaml(MergePlan.from_dict({"rules": [
            {"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]}), pair)


def test_export_command(qwen_dirs, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - components: [self_attn]\n    curve: {preset: linear, start: 0.1, end: 0.5}\n")
    out = tmp_path / "merged"
    args = ["export", "--vlm", str(qwen_dirs[0]), "--llm", str(qwen_dirs[1]), "--plan", str(plan), "--out", str(out)]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 1 and report["mergekit"] == "mergekit.yaml" and report["merged"] == 28
    assert yaml.safe_load((out / "mergekit.yaml").read_text())["merge_method"] == "linear"
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--grams-vlm", "x.safetensors"]) == 2
    assert "give both --grams-vlm and --grams-donor" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert "mergekit.yaml written" in capsys.readouterr().out
