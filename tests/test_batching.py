"""Sweeps at benchmark scale: batched answers equal one-at-a-time answers, Stop between batches keeps
partial results, stratified samples, Wilson intervals, and the same sweep on a local Ray cluster."""

from __future__ import annotations

import csv
import io
import math

import pytest

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.run.answerer import Answerer
from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.run.generate import GenerationSettings, answer, answer_batch
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_VLM
from merging.experiments.sweep import parse_grid, run_sweep, wilson_interval, write_results

GRID = ("components: {Setting 2: [self_attn]}\ncurves: {constant α: {preset: constant}}\n"
        "alphas: [0.4, 0.8]\nmax_new_tokens: 6\n")


@pytest.fixture(scope="module")
def toy_engine():
    """One engine for the module: it alone knows which plan the shared weights hold."""
    return MergeEngine(load_pair(TOY_VLM, TOY_LLM, dtype="float32"))


@pytest.fixture(scope="module")
def toy_pair(toy_engine):
    return toy_engine.pair


@pytest.fixture(scope="module")
def toy_items():
    """Image and text-only items of every kind, interleaved as the shipped eval set has them."""
    return sample_items(load_eval_set(TOY_EVAL), 24, seed=1)


def test_batched_answers_equal_answers_one_at_a_time(toy_engine, toy_pair, toy_items):
    engine = toy_engine
    requests = [(it.question, it.image()) for it in toy_items]
    assert {img is None for _, img in requests} == {True, False}  # mixed image and text-only items
    for plan in (MergePlan(), MergePlan.from_dict({"rules": [{"components": ["all"],
                                                              "curve": {"preset": "constant", "value": 0.6}}]})):
        engine.apply(plan)
        for settings in (GenerationSettings(max_new_tokens=6), GenerationSettings(max_new_tokens=12, stop=(" ",))):
            alone = [answer(toy_pair, q, img, settings) for q, img in requests]
            assert answer_batch(toy_pair, requests, settings, batch_size=5) == alone
            assert answer_batch(toy_pair, requests, settings) == alone
    engine.restore()
    with pytest.raises(MergescopeError, match="greedy"):
        answer_batch(toy_pair, requests[:2], GenerationSettings(seed=3))


def test_stop_between_batches_keeps_partial_results(toy_engine, toy_items, tmp_path):
    cells, settings = parse_grid(GRID)
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    batches = []

    def stop_after_three_batches() -> bool:
        batches.append(1)
        return len(batches) > 3  # asked once before each batch

    rows = run_sweep(answerer, cells, toy_items, settings, batch_size=4, should_stop=stop_after_three_batches)
    # the baseline's 24 items in batches of 4: three batches, 12 answers, then Stop
    assert len(rows) == 1 and rows[0]["answered"] == 12 and not rows[0]["complete"]
    assert answerer.cache.stats()["entries"] == 12  # cached as each batch ended
    write_results(rows, tmp_path / "out")
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert table[0]["answered"] == "12"
    # resumed with no stop: the 12 are served from the cache, the rest computed
    rows = run_sweep(answerer, cells, toy_items, settings, batch_size=4)
    assert [r["complete"] for r in rows] == [True] * 3
    assert rows[0]["cached"] == 12 and rows[0]["computed"] == 12


def test_rows_have_per_category_accuracy_and_intervals(toy_engine, toy_items):
    cells, settings = parse_grid(GRID)
    answerer = Answerer(toy_engine, default_donor="shared-seed LLM")
    (base, *_) = run_sweep(answerer, cells[:1], toy_items, settings)
    assert base["donor"] == "shared-seed LLM"
    assert set(base["by_category"]) == {it.category for it in toy_items}
    assert sum(c["items"] for c in base["by_category"].values()) == len(toy_items)
    assert base["accuracy_low"] <= base["accuracy"] <= base["accuracy_high"]
    perception = [base["by_category"][k]["accuracy"] for k in ("count", "colour", "shape", "position")]
    assert sum(perception) / 4 >= 0.75  # the base VLM reads its own eval set


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 15/148 → 0.0624–0.1605
    for (k, n), (low, high) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605)}.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert not math.isnan(wilson_interval(5, 5)[0])


def test_sample_is_seeded_and_stratified():
    items = load_eval_set(TOY_EVAL)
    a, b = sample_items(items, 40, seed=3), sample_items(items, 40, seed=3)
    assert [it.id for it in a] == [it.id for it in b]
    assert [it.id for it in a] != [it.id for it in sample_items(items, 40, seed=4)]
    per_kind = {}
    for it in a:
        per_kind[it.category] = per_kind.get(it.category, 0) + 1
    assert set(per_kind.values()) == {5}  # 8 kinds of 40 items: 5 each
    assert sample_items(items, 10_000) == items
    with pytest.raises(MergescopeError):
        sample_items(items, 0)


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mergescope[ray]')")


def test_ray_sweep_matches_single_process_and_requeues_a_killed_worker(toy_engine, toy_items, tmp_path):
    from merging.experiments.distributed import run_sweep_ray
    from merging.run.stack import ModelSpec
    cells, settings = parse_grid(GRID)
    items = toy_items[:8]
    single = run_sweep(Answerer(toy_engine, default_donor="donor"), cells, items, settings)
    write_results(single, tmp_path / "single")
    killed = []

    def kill_the_first_worker(name: str, cell: int) -> None:
        if not killed:
            killed.append((name, cell))
            ray.kill(ray.get_actor(name))

    try:
        report = run_sweep_ray(ModelSpec(str(TOY_VLM), str(TOY_LLM), dtype="float32"), cells, items, settings,
                               AnswerCache(tmp_path / "cache"), workers=2, on_dispatch=kill_the_first_worker)
    finally:
        ray.shutdown()
    assert killed and report["requeued"] >= 1 and report["workers"] == 2
    write_results(report["rows"], tmp_path / "ray")
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "single" / "results.csv").read_text()


def test_history_lists_a_sweep_as_one_row(toy_engine, tmp_path):
    """The Sweep tab's handler run for real (toy pair, real cache); History then shows the sweep as one
    row with its best cell, not one row per answer, beside an answer asked from Compare (whose cached
    next-token summary is no row either)."""
    from ui.explorer import Explorer
    from ui.history_tab import on_refresh
    from ui.sweep_tab import on_sweep
    answerer = Answerer(toy_engine, AnswerCache(tmp_path / "cache"))
    explorer = Explorer(answerer, load_eval_set(TOY_EVAL), str(TOY_EVAL))
    answerer.ask(MergePlan(), "What is 2 plus 3?", None, GenerationSettings(max_new_tokens=4))
    answerer.distribution(MergePlan(), "What is 2 plus 3?")  # Compare's bars: cached, but not a History row
    *_, last = on_sweep(explorer, GRID, str(TOY_EVAL), 6, answerer.default_donor, progress=None)
    assert last[0].startswith("Sweep: 3/3 cells")
    table, configs = on_refresh(explorer)
    assert len(table) == 2  # the question asked from Compare, and the sweep: not its 18 answers
    sweep_row = table[table["question"].str.startswith("sweep of 6 items")]
    assert len(sweep_row) == 1 and sweep_row.iloc[0]["answer"].startswith("best: ")
    assert "3 cells" in sweep_row.iloc[0]["plan"]
