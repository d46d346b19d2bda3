"""See where (issue #22): layer sensitivity and the logit lens of one question, on the shipped toy pair with
its real models — each checked against an independent computation (plans written by hand, full
log-softmaxes)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from scipy.stats import binomtest

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.errors import MergescopeError
from merging.__main__ import main
from merging.experiments.sweep import heatmap
from merging.experiments.xy_grid import check_axis, xy_grid
from merging.plan import curves
from merging.run.generate import GenerationSettings
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.evals.significance import mcnemar
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_VLM
from merging.run.answerer import Answerer
from merging.run.probe import first_token_id, first_token_logprobs, token_decoder
from merging.run.sensitivity import block_plan, blocks, layer_sensitivity

PLAN = MergePlan.from_dict({"rules": [
    {"components": ["self_attn"], "method": "linear", "curve": {"preset": "linear", "start": 0.2, "end": 0.8}},
    {"components": ["mlp", "norms"], "method": "linear", "curve": {"preset": "constant", "value": 0.6}},
]})
LAYERS = 8  # the toy VLM's decoder layers


@pytest.fixture(scope="module")
def toy_engine():
    return MergeEngine(load_pair(TOY_VLM, TOY_LLM))


@pytest.fixture(scope="module")
def item():
    return next(i for i in load_eval_set(TOY_EVAL) if i.id.startswith("colour"))


def _logprobs(engine, plan, item):
    engine.apply(plan)
    try:
        return first_token_logprobs(engine.pair, item.question, item.image()).double()
    finally:
        engine.restore()


def _attention_alpha(layer: int) -> float:  # the linear preset written out: start + (end − start)·i/(L−1)
    return 0.2 + 0.6 * layer / (LAYERS - 1)


def test_a_sensitivity_cell_is_the_hand_written_plan_of_that_block(toy_engine, item, tmp_path):
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    rows = list(layer_sensitivity(answerer, PLAN, item.question, item.image(), block=2, gold=item.answer))
    assert len(rows) == LAYERS // 2 * 3 * 2
    assert [r["layers"] for r in rows[:6]] == [[0, 1]] * 6 and rows[-1]["layers"] == [6, 7]
    assert {(r["group"], r["mode"]) for r in rows} == {(g, m) for g in ("attention", "mlp", "norms")
                                                      for m in ("only", "without")}
    by_cell = {(tuple(r["layers"]), r["group"], r["mode"]): r for r in rows}
    alphas = [0.0] * LAYERS
    alphas[2], alphas[3] = _attention_alpha(2), _attention_alpha(3)
    only = MergePlan.from_dict({"rules": [{"components": ["self_attn"], "method": "linear",
                                           "curve": {"preset": "custom", "values": alphas, "non_layer": 0.0}}]})
    without_values = [0.0 if i in (2, 3) else _attention_alpha(i) for i in range(LAYERS)]
    without = MergePlan.from_dict({"rules": [
        {"components": ["self_attn"], "method": "linear",
         "curve": {"preset": "custom", "values": without_values, "non_layer": 0.0}},
        {"components": ["mlp", "norms"], "method": "linear", "curve": {"preset": "constant", "value": 0.6}}]})
    base = _logprobs(toy_engine, MergePlan(), item)
    gold = first_token_id(toy_engine.pair, item.question, item.image(), item.answer)
    for mode, plan in (("only", only), ("without", without)):
        row = by_cell[((2, 3), "attention", mode)]
        expected = _logprobs(toy_engine, plan, item)
        assert row["p_gold"] == pytest.approx(math.exp(float(expected[gold])), rel=1e-5)
        kl = float((base.exp() * (base - expected)).sum())
        assert row["kl_to_base"] == pytest.approx(kl, rel=1e-4, abs=1e-9)
        assert row["p_top"] == pytest.approx(math.exp(float(expected[int(base.argmax())])), rel=1e-5)
        assert row["answer"] == token_decoder(toy_engine.pair)(int(expected.argmax()))
    again = list(layer_sensitivity(answerer, PLAN, item.question, item.image(), block=2, gold=item.answer))
    assert all(r["cached"] for r in again) and [dict(r, cached=0) for r in again] == \
        [dict(r, cached=0) for r in rows]


def test_blocks_groups_and_stopping(toy_engine, item):
    assert blocks(8, 3) == [(0, 2), (3, 5), (6, 7)]
    for bad in (0, 9, 1.5, True, "2"):
        with pytest.raises(MergescopeError, match="block"):
            blocks(8, bad)
    # a plan that merges only the MLPs: its attention cells are the base VLM, its "without" the plan
    mlp = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                          "curve": {"preset": "constant", "value": 0.5}}]})
    assert block_plan(mlp, 8, (0, 3), "attention", "only") == MergePlan()
    assert block_plan(mlp, 8, (0, 3), "attention", "without").targets(toy_engine.pair.layout) == \
        mlp.targets(toy_engine.pair.layout)
    merged = block_plan(mlp, 8, (0, 3), "mlp", "only").targets(toy_engine.pair.layout)
    assert {s.layer for s in toy_engine.pair.layout.slots if merged.get(s.name) and merged[s.name].alpha > 0} \
        == {0, 1, 2, 3}
    with pytest.raises(MergescopeError, match="unknown group"):
        block_plan(mlp, 8, (0, 0), "embeddings", "only")
    answerer = Answerer(toy_engine)
    seen = []
    for row in layer_sensitivity(answerer, PLAN, item.question, item.image(), block=4,
                                 should_stop=lambda: len(seen) >= 3):
        seen.append(row)
    assert len(seen) == 3 and seen[0]["p_gold"] is None


def test_the_lens_last_layer_is_the_models_own_output(toy_engine, item, tmp_path):
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    gold = first_token_id(toy_engine.pair, item.question, item.image(), item.answer)
    decode = token_decoder(toy_engine.pair)
    for plan in (MergePlan(), PLAN):
        rows = answerer.lens(plan, item.question, item.image(), gold=item.answer)
        assert [r["layer"] for r in rows] == list(range(LAYERS))
        own = _logprobs(toy_engine, plan, item)
        last = rows[-1]
        assert last["token"] == decode(int(own.argmax()))
        assert last["p_top"] == pytest.approx(math.exp(float(own.max())), rel=1e-5)
        assert last["p_gold"] == pytest.approx(math.exp(float(own[gold])), rel=1e-5)
        assert all(0 < r["p_top"] <= 1 and 0 <= r["p_gold"] <= r["p_top"] + 1e-9 for r in rows)
        assert answerer.lens(plan, item.question, item.image(), gold=item.answer) == rows  # cached, equal
    assert answerer.lens(PLAN, item.question, item.image())[0]["p_gold"] is None
    # earlier layers are not the output: the lens reads something the last layer then changes
    lens = answerer.lens(MergePlan(), item.question, item.image(), gold=item.answer)
    assert any(r["p_top"] != pytest.approx(lens[-1]["p_top"]) for r in lens[:-1])
    assert torch.is_grad_enabled()


def test_the_layers_cli_maps_an_eval_set_and_answers_one_question(toy_engine, tmp_path, capsys):
    out = tmp_path / "map"
    pair = ["--vlm", str(TOY_VLM), "--llm", str(TOY_LLM)]
    assert main(["layers", *pair, "--eval-set", str(TOY_EVAL), "--sample", "8", "--block", "4", "--out", str(out)]) == 0
    result = json.loads((out / "layers.json").read_text())
    assert result["blocks"] == [[0, 3], [4, 7]] and result["items"] == 8 and (out / "layers.html").stat().st_size
    # one cell by hand: the default plan (every tensor at α 1) with only layers 0–3's MLP merged
    items = sample_items(load_eval_set(TOY_EVAL), 8, 0)
    kind = items[0].category
    only = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                           "curve": {"preset": "custom", "values": [1.0] * 4 + [0.0] * 4,
                                                     "non_layer": 0.0}}]})
    deltas = []
    for i in (i for i in items if i.category == kind):
        gold = first_token_id(toy_engine.pair, i.question, i.image(), i.answer)
        deltas.append(float(_logprobs(toy_engine, only, i)[gold] - _logprobs(toy_engine, MergePlan(), i)[gold]))
    assert result["counts"][kind] == len(deltas)
    assert result["categories"][kind]["mlp"][0] == pytest.approx(sum(deltas) / len(deltas), rel=1e-4, abs=1e-6)
    capsys.readouterr()
    seen = next(i for i in items if i.image_path)
    assert main(["layers", *pair, "--question", seen.question, "--image", str(seen.image_path), "--gold", seen.answer,
                 "--block", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["rows"]) == 2 * 3 * 2 and report["seconds"] > 0
    assert main(["layers", *pair, "--question", "x", "--eval-set", str(TOY_EVAL)]) == 2  # one or the other


def test_mcnemar_p_values_worked_by_hand():
    # two-sided exact: 2·P(X ≤ min(b, c)) for X ~ Bin(b + c, ½), capped at 1
    assert mcnemar([True] * 17 + [False], [False] * 17 + [True])["p_value"] == pytest.approx(38 / 2 ** 18, rel=1e-12)
    assert mcnemar([True] * 4 + [False], [False] * 4 + [True])["p_value"] == pytest.approx(12 / 32, rel=1e-12)
    assert mcnemar([True, False, True], [True, False, True]) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)["p_value"] == 1.0


# -- flips a sweep can trust (item 3) ------------------------------------------------------------------

def test_sweep_flips_and_mcnemar_equal_scipys_exact_binomial_test(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("components: {all: [all], attention: [self_attn]}\ncurves: {constant: {preset: constant}}\n"
                    "alphas: [0.8]\nmax_new_tokens: 6\n")
    out = tmp_path / "out"
    argv = ["sweep", "--vlm", str(TOY_VLM), "--llm", str(TOY_LLM), "--grid", str(grid), "--eval-set", str(TOY_EVAL),
            "--sample", "24", "--out", str(out)]
    assert main(argv) == 0
    report = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    base = {a["id"]: a["correct"] for a in rows[0]["answers"]}
    assert rows[0]["mcnemar_p"] is None and rows[0]["right_to_wrong"] is None
    flipped = 0
    for row in rows[1:]:
        lost = [a["id"] for a in row["answers"] if base[a["id"]] and not a["correct"]]
        won = [a["id"] for a in row["answers"] if a["correct"] and not base[a["id"]]]
        assert row["right_to_wrong"] == lost and row["wrong_to_right"] == won
        n = len(lost) + len(won)
        expected = 1.0 if n == 0 else binomtest(min(len(lost), len(won)), n, 0.5, alternative="two-sided").pvalue
        assert row["mcnemar_p"] == pytest.approx(expected, rel=1e-12)
        flipped += n
        assert f"flips −{len(lost)}/+{len(won)}, McNemar p={row['mcnemar_p']:.3g}" in report
        assert all(i in report for i in lost[:12] + won[:12])
    assert flipped > 0  # the merge at α 0.8 changes some answers: the test sees real flips
    with open(out / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert [int(r["right_to_wrong"]) for r in lines[1:]] == [len(r["right_to_wrong"]) for r in rows[1:]]
    assert lines[0]["mcnemar_p"] == ""
    marked = [r for r in rows[1:] if r["mcnemar_p"] < 0.05]
    fig = heatmap(rows)
    assert "McNemar p < 0.05" in fig.layout.title.text
    texts = [t for line in fig.data[0].text for t in line]
    assert sum(t.endswith("*") for t in texts) == len(marked)
    assert (out / "heatmap.html").stat().st_size > 0


# -- the XY grid (item 4) -----------------------------------------------------------------------------

def test_xy_method_and_step_cells_and_their_kl(toy_engine, item, tmp_path):
    """The other axis kinds: each cell's KL(base ‖ cell) equals the KL of the two full first-token
    distributions computed here, and a `step` cell keeps the VLM below its layer."""
    settings = GenerationSettings(max_new_tokens=4)
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    x, y = check_axis("method", ["linear", "slerp"], LAYERS, "x"), check_axis("step", [2, 5], LAYERS, "y")
    cells = list(xy_grid(answerer, PLAN, item.question, item.image(), x, y, settings))
    assert [(c["x"], c["y"]) for c in cells] == [(m, s) for s in (2, 5) for m in ("linear", "slerp")]
    base = _logprobs(toy_engine, MergePlan(), item)
    fresh = Answerer(toy_engine)
    for cell in cells:
        plan = MergePlan.from_dict(cell["plan"])
        assert {r.method for r in plan.rules} == {cell["x"]}
        for rule in plan.rules:
            alphas = curves.layer_alphas(rule.curve, LAYERS)
            assert all(a == 0 for a in alphas[:cell["y"]]) and all(a > 0 for a in alphas[cell["y"]:])
        merged = _logprobs(toy_engine, plan, item)
        assert cell["kl_to_base"] == pytest.approx(float((base.exp() * (base - merged)).sum()), rel=1e-4, abs=1e-7)
        assert cell["answer"] == fresh.ask(plan, item.question, item.image(), settings)["answer"]


def test_every_xy_cell_is_a_single_ask_of_its_plan(toy_engine, item, tmp_path):
    settings = GenerationSettings(max_new_tokens=6)
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    x = check_axis("alpha", [0.3, 1], LAYERS, "x")
    y = check_axis("group", ["attention", "mlp", "all"], LAYERS, "y")
    cells = list(xy_grid(answerer, PLAN, item.question, item.image(), x, y, settings))
    assert [(c["x"], c["y"]) for c in cells] == [(a, g) for g in ("attention", "mlp", "all") for a in (0.3, 1.0)]
    fresh = Answerer(toy_engine)  # no cache: each plan asked on its own
    base = fresh.ask(MergePlan(), item.question, item.image(), settings)["answer"]
    for cell in cells:
        plan = MergePlan.from_dict(cell["plan"])
        assert cell["answer"] == fresh.ask(plan, item.question, item.image(), settings)["answer"]
        assert cell["p_top"] == pytest.approx(fresh.distribution(plan, item.question, item.image())["tokens"][0][1])
        assert cell["differs"] == (cell["answer"] != base)
    only_mlp = MergePlan.from_dict(next(c for c in cells if c["y"] == "mlp")["plan"])
    assert [r.components for r in only_mlp.rules] == [("mlp",)]
    for kind, values, message in (("colour", [1], "unknown axis"), ("alpha", [2], r"\[0, 1\]"),
                                  ("group", ["embeddings"], "unknown group"), ("step", [8], "step layer"),
                                  ("method", "linear", "a list"), ("alpha", list(range(65)), "a list")):
        with pytest.raises(MergescopeError, match=message):
            check_axis(kind, values, LAYERS, "x")
    with pytest.raises(MergescopeError, match="both"):
        next(xy_grid(answerer, PLAN, item.question, None, x, x))
    with pytest.raises(MergescopeError, match="limit is 4"):
        next(xy_grid(answerer, PLAN, item.question, None, x, y, max_cells=4))
