"""Whole-answer divergence and skill items on the toy pair (float32), checked against the library's other
ways to read the same numbers: the first token's KL (probe) and the teacher-forced mean log-probability."""

import dataclasses

import pytest

from merging.evals.eval_sets import load_eval_set
from merging.experiments.skills import skill_items
from merging.model.known_pairs import resolve_models
from merging.plan.merge_plan import MergePlan
from merging.run.probe import kl_divergence
from ui import skills_panel
from ui.panel import Panel, attention_roles

ALL_AT_ONE = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 1.0}}]})
QUESTION = "How many times does dog appear in: dog dog fish? Add 1."


def test_the_base_answer_under_the_base_vlm_has_no_divergence(api_explorer):
    answerer = api_explorer.answerer
    text = answerer.ask(MergePlan(), QUESTION)["answer"]
    d = answerer.answer_divergence(MergePlan(), QUESTION, None, text, text)
    assert d["tokens"] and d["parting"] is None and d["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert d["logp_base"] == pytest.approx(d["logp_merged"])


def test_divergence_agrees_with_first_token_kl_and_teacher_forcing(api_explorer):
    answerer = api_explorer.answerer
    base, merged = (answerer.ask(p, QUESTION)["answer"] for p in (MergePlan(), ALL_AT_ONE))
    d = answerer.answer_divergence(ALL_AT_ONE, QUESTION, None, merged, base)
    first = [answerer.distribution(p, QUESTION)["summary"] for p in (MergePlan(), ALL_AT_ONE)]
    assert d["kl"][0] == pytest.approx(kl_divergence(*first), rel=1e-4, abs=1e-6)  # position 0 is the first token
    forced = answerer.gold_logprobs(ALL_AT_ONE, [(QUESTION, None, merged)])[0]
    assert d["mean_logp_merged"] == pytest.approx(forced, abs=1e-4)
    assert answerer.answer_divergence(ALL_AT_ONE, QUESTION, None, merged, base) == d  # cached: the same record
    if base != merged:
        assert d["parting"] is not None


def test_skill_items_take_up_to_n_per_category_in_eval_set_order():
    items = load_eval_set(resolve_models(None, None, None, None).eval_set)
    chosen = skill_items(items, 5)
    kinds = {i.category for i in items}
    assert all(sum(i.category == k for i in chosen) == 5 for k in kinds)
    order = [items.index(i) for i in chosen]
    assert order == sorted(order) and skill_items(items, 5) == chosen  # seeded
    assert skill_items(items, 10_000) == items


def test_skill_scores_answer_at_the_pairs_answer_length(api_explorer):
    """Skill scores generate as many tokens as Compare starts with (the pair's answer length, within the
    demo's cap): a real pair's math answer cut at a fixed 8 tokens would be scored wrong."""
    toy_items = load_eval_set(resolve_models(None, None, None, None).eval_set)
    explorer = dataclasses.replace(api_explorer, eval_items=toy_items, answer_tokens=3)
    panel = Panel(attention_roles(explorer), [0.5] * explorer.num_layers, "linear")
    *_, (status, _) = skills_panel.on_skills(explorer, None, 1, None, panel)
    assert status.startswith("Skills of the current plan on 8 items"), status
    asked = {e["config"]["question"] for e in explorer.answerer.cache.entries()
             if e["config"].get("generation", {}).get("max_new_tokens") == 3}
    assert {i.question.strip() for i in skill_items(explorer.eval_items, 1)} <= asked
