"""See the merge (issue #11): next-token distributions, KL to the base VLM, α scans and per-group plans,
on the shipped toy pair with its real models (no mocks)."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import pytest
import torch

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.run.answerer import SCAN_ALPHAS, SCAN_SETTINGS, Answerer
from merging.evals.eval_sets import load_eval_set
from merging.run.generate import GenerationSettings, answer, build_inputs
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_VLM
from merging.run.probe import (TOP_STORED, first_token_logprobs, group_plan, kl_divergence, next_token_distribution,
                           scale_plan, summarize, token_decoder, token_probability)

PLAN = MergePlan.from_dict({"rules": [
    {"components": ["self_attn"], "method": "linear", "curve": {"preset": "linear", "start": 0.2, "end": 0.8}},
    {"components": ["mlp", "norms"], "method": "linear", "curve": {"preset": "constant", "value": 0.4}},
]})


@pytest.fixture(scope="module")
def engine():
    return MergeEngine(load_pair(TOY_VLM, TOY_LLM))


@pytest.fixture(scope="module")
def items():
    """Two items of each of the eval set's 8 kinds."""
    by_kind = defaultdict(list)
    for item in load_eval_set(TOY_EVAL):
        if len(by_kind[item.category]) < 2:
            by_kind[item.category].append(item)
    assert len(by_kind) == 8
    return by_kind


def _image_item(items):
    return items["count_plus"][0]


@pytest.mark.parametrize("merged", [False, True])
def test_top1_is_the_greedy_answers_first_token_for_every_kind(engine, items, merged):
    pair = engine.pair
    engine.apply(scale_plan(PLAN, 0.5, pair.layout.num_layers) if merged else MergePlan())
    try:
        for kind, some in items.items():
            for n, item in enumerate(some):
                image = item.image()
                inputs = build_inputs(pair, item.question, image)
                with torch.no_grad():
                    greedy = pair.vlm.generate(**inputs, max_new_tokens=1, do_sample=False, temperature=None,
                                               top_p=None, top_k=None)[0, -1]
                logprobs = first_token_logprobs(pair, item.question, image)
                assert logprobs.dtype == torch.float32 and logprobs.shape == (400,)
                assert int(logprobs.argmax()) == int(greedy), (kind, item.id)
                top = next_token_distribution(pair, item.question, image, top_k=5)
                assert len(top) == 5 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
                if n == 0:  # the decoded answer too (the machine is slow: once per kind)
                    text = answer(pair, item.question, image, GenerationSettings(max_new_tokens=8))
                    assert text.startswith(top[0][0].strip()), (kind, item.id, text, top)
    finally:
        engine.restore()


def test_distribution_is_normalised_cached_and_gives_the_gold_probability(engine, items, tmp_path):
    answerer = Answerer(engine, AnswerCache(tmp_path / "cache"))
    item = _image_item(items)
    first = answerer.distribution(PLAN, item.question, item.image(), top_k=10, gold=item.answer)
    again = answerer.distribution(PLAN, item.question, item.image(), top_k=10, gold=item.answer)
    assert not first["cached"] and again["cached"]
    assert {k: v for k, v in first.items() if k != "cached"} == {k: v for k, v in again.items() if k != "cached"}
    assert len(first["tokens"]) == 10
    assert sum(p for _, p in first["tokens"]) <= 1 + 1e-6
    assert all(0 <= p <= 1 for _, p in first["tokens"])
    summary = first["summary"]
    assert len(summary["top"]) == 400 and summary["rest"] == 0.0 and TOP_STORED >= 400  # the whole vocabulary
    assert math.fsum(p for *_, p in summary["top"]) == pytest.approx(1.0, abs=1e-5)
    direct = answerer.run(lambda e: token_probability(e.pair, item.question, item.image(), item.answer), plan=PLAN)
    assert first["p_gold"] == pytest.approx(direct, rel=1e-6)
    assert answerer.distribution(PLAN, item.question, item.image())["p_gold"] is None


def test_kl_is_zero_to_itself_positive_to_a_merge_and_exact_on_the_toy_pair(engine, items):
    answerer = Answerer(engine)
    item = _image_item(items)
    merged = scale_plan(PLAN, 0.8, engine.pair.layout.num_layers)
    base_lp, merged_lp = (answerer.run(lambda e: first_token_logprobs(e.pair, item.question, item.image()), plan=plan)
                          for plan in (MergePlan(), merged))
    decode = token_decoder(engine.pair)
    base, other = summarize(base_lp, decode=decode), summarize(merged_lp, decode=decode)
    assert kl_divergence(base, base) == 0.0
    kl = kl_divergence(base, other)
    assert kl > 0
    b, m = base_lp.double(), merged_lp.double()
    direct = float((b.exp() * (b - m)).sum())
    assert kl == pytest.approx(direct, rel=1e-6, abs=1e-9)
    # fewer stored tokens: a coarse-graining, never above the exact value (data-processing inequality)
    for top in (1, 5, 50):
        assert kl_divergence(summarize(base_lp, top), summarize(merged_lp, top)) <= kl + 1e-9
    assert answerer.distribution(merged, item.question, item.image())["summary"] == other


def test_alpha_scan_answers_equal_individual_asks_and_a_warm_scan_is_fast(engine, items, tmp_path):
    answerer = Answerer(engine, AnswerCache(tmp_path / "cache"))
    item = _image_item(items)
    start = time.perf_counter()
    cold = list(answerer.alpha_scan(PLAN, item.question, item.image(), gold=item.answer))
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = list(answerer.alpha_scan(PLAN, item.question, item.image(), gold=item.answer))
    warm_s = time.perf_counter() - start
    print(f"\nα scan of {len(cold)} points: cold {cold_s:.2f} s, warm {warm_s:.3f} s")
    assert [p["alpha"] for p in cold] == list(SCAN_ALPHAS) and len(cold) == 11
    assert not any(p["cached"] for p in cold) and all(p["cached"] for p in warm)
    assert [{k: v for k, v in p.items() if k != "cached"} for p in cold] == \
           [{k: v for k, v in p.items() if k != "cached"} for p in warm]
    assert warm_s < 1.0
    assert cold[0]["kl_to_base"] == 0.0 and cold[-1]["kl_to_base"] > 0
    assert all(0 < p["p_gold"] <= p["p_top"] <= 1 for p in cold)
    uncached = Answerer(engine)  # no cache: each answer generated afresh
    for point in cold:
        plan = scale_plan(PLAN, point["alpha"], engine.pair.layout.num_layers)
        assert uncached.ask(plan, item.question, item.image(), SCAN_SETTINGS)["answer"] == point["answer"]


def test_alpha_scan_stops_between_points(engine, items):
    answerer = Answerer(engine)
    item = items["arith"][0]
    seen = []
    points = answerer.alpha_scan(PLAN, item.question, None, alphas=[0.2, 0.5, 1.0], should_stop=lambda: len(seen) >= 2)
    for point in points:
        seen.append(point)
    assert [p["alpha"] for p in seen] == [0.2, 0.5]


def test_group_curves_give_the_plan_written_by_hand():
    by_hand = MergePlan.from_text("""
rules:
  - components: [self_attn]
    method: linear
    curve: {preset: linear, start: 0.1, end: 0.7}
  - components: [embed_tokens, lm_head, norm]
    method: linear
    curve: {preset: constant, value: 0.3}
""")
    groups = {"Embeddings/Head": {"preset": "constant", "value": 0.3}, "MLP": None,
              "Attention": {"preset": "linear", "start": 0.1, "end": 0.7}}
    assert group_plan(groups) == by_hand and group_plan(groups).hash() == by_hand.hash()
    ties = group_plan({"MLP": {"preset": "constant", "value": 0.5}}, "ties", {"density": 0.4})
    assert ties.rules[0].components == ("mlp",) and ties.rules[0].method == "ties"
    assert ties.rules[0].params["density"] == 0.4
    with pytest.raises(Exception, match="unknown group"):
        group_plan({"Vision": {"preset": "constant", "value": 0.5}})


def test_scale_plan_keeps_shape_and_sets_the_maximum():
    from merging.plan.curves import layer_alphas, non_layer_alpha
    L = 8
    scaled = scale_plan(PLAN, 0.5, L)
    assert [r.components for r in scaled.rules] == [r.components for r in PLAN.rules]
    assert [(r.method, r.params) for r in scaled.rules] == [(r.method, r.params) for r in PLAN.rules]
    before = [layer_alphas(r.curve, L) + [non_layer_alpha(r.curve, layer_alphas(r.curve, L))] for r in PLAN.rules]
    after = [layer_alphas(r.curve, L) + [r.curve["non_layer"]] for r in scaled.rules]
    assert max(max(a) for a in after) == 0.5
    factor = 0.5 / 0.8
    for old, new in zip(before, after):
        assert new == pytest.approx([a * factor for a in old], rel=1e-12)
    assert scale_plan(PLAN, 0.0, L) == MergePlan() and scale_plan(MergePlan(), 0.7, L) == MergePlan()
    zero = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0}}]})
    assert layer_alphas(scale_plan(zero, 0.3, L).rules[0].curve, L) == [0.3] * L
    assert scale_plan(scale_plan(PLAN, 1.0, L), 0.5, L) == scaled
    with pytest.raises(Exception, match="outside"):
        scale_plan(PLAN, 1.5, L)
