"""Search over curves on the toy pair: real Optuna studies in real SQLite files, the real resident engine.

The toy eval set is cut to 6 items per kind (48) and answers to 4 tokens so that a study of a few
trials takes seconds; every study shares one answers cache, as repeated searches do in real use.
"""

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from scipy.stats import binomtest

from cache import AnswerCache
from merging.__main__ import main
from merging.run.answerer import Answerer
from merging.run.stack import ModelSpec
from merging.engine.merge_engine import MergeEngine
from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_SEED, TOY_VLM
from merging.model.pair import load_pair
from merging.plan.merge_plan import MergePlan
from merging.experiments.search import STUDY_FILE, STUDY_NAME, SearchOptions, finished_trials, rung_order, rung_sizes
from merging.experiments.search_report import run_search
from merging.run.generate import reference_logprob
from merging.experiments.search_space import load_space, parse_space
from merging.evals.significance import mcnemar
from merging.experiments.sweep import load_grid

REPO = Path(__file__).resolve().parents[1]
ONE_OBJECTIVE = """
groups:
  attention: {anchors: 2, range: [0.0, 0.8]}
  mlp: {preset: loglinear, start: 0.0, end: [0.0, 0.9]}
max_new_tokens: 4
"""
TWO_OBJECTIVES = ONE_OBJECTIVE + """
objectives:
  perception: [count, colour, shape, position]
  text: [arith, text_count, text_plus]
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy pair resident once, with one answers cache for every study of this module."""
    cache = AnswerCache(tmp_path_factory.mktemp("search-cache"))
    return Answerer(MergeEngine(load_pair(TOY_VLM, TOY_LLM, TOY_SEED, dtype="float32")), cache)


@pytest.fixture(scope="module")
def items():
    return sample_items(load_eval_set(TOY_EVAL), 48, seed=0)


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, items):
    """The 48 items as an eval-set file (absolute image paths), for the command line."""
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    records = [json.loads(line) for line in TOY_EVAL.read_text().splitlines()]
    chosen = {item.id for item in items}
    lines = [json.dumps(dict(r, **({"image": str(TOY_EVAL.parent / r["image"])} if "image" in r else {})))
             for r in records if r["id"] in chosen]  # text-only items have no image
    path.write_text("\n".join(lines))
    return path


def _search(toy, items, out, text=ONE_OBJECTIVE, **options):
    options = {"trials": 4, "min_items": 6, "seed": 3, **options}
    return run_search(toy, text, parse_space(text), items, out, SearchOptions(**options), "toy-48")


def _trials(out: Path) -> list[tuple]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_FILE}")
    return [(t.number, t.state.name, t.params, t.values) for t in study.trials]


def test_a_seeded_search_is_reproducible_and_writes_its_folder(toy, items, tmp_path):
    first = _search(toy, items, tmp_path / "a")
    second = _search(toy, items, tmp_path / "b")
    assert _trials(tmp_path / "a") == _trials(tmp_path / "b")
    assert first["best"]["trial"] == second["best"]["trial"] and first["best"]["params"] == second["best"]["params"]
    assert first["trials"]["complete"] + first["trials"]["pruned"] == 4
    for name in ("trials.csv", "best_plan.yaml", "report.json", "search.html", STUDY_FILE):
        assert (tmp_path / "a" / name).is_file(), name
    rows = (tmp_path / "a" / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("number,state,accuracy,items,apply_seconds,eval_seconds")
    # the best plan file is a plan the engine takes, and it is the best trial's
    best = MergePlan.load(tmp_path / "a" / "best_plan.yaml")
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'a' / STUDY_FILE}")
    assert best.canonical_json() == study.trials[first["best"]["trial"]].user_attrs["plan"]
    assert first["test_items"] == 24 and first["dev_items"] == 24


def test_pruning_spends_fewer_items_than_no_pruning(toy, items, tmp_path):
    pruned = _search(toy, items, tmp_path / "p", trials=8, sampler="random")
    full = _search(toy, items, tmp_path / "f", trials=8, sampler="random", pruning=False)
    assert full["items_used"] == 8 * 24
    assert pruned["trials"]["pruned"] >= 1 and pruned["items_used"] < full["items_used"]


def test_rungs_are_stratified_prefixes(items):
    order = rung_order(items, seed=1)
    assert sorted(i.id for i in order) == sorted(i.id for i in items)
    assert {i.category for i in order[:8]} == {i.category for i in items}  # 8 kinds: one of each first
    assert rung_sizes(24, 6, 2) == [6, 12, 24] and rung_sizes(24, 40, 2) == [24]


def test_two_objectives_give_a_non_dominated_front(toy, items, tmp_path):
    report = _search(toy, items, tmp_path / "two", text=TWO_OBJECTIVES, trials=6)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'two' / STUDY_FILE}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = [e["dev"] for e in report["front"]]
    assert report["best"]["dev"] in front and len(complete) == 6

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
    assert not any(dominates(a, b) for a in front for b in front)
    for t in complete:  # every trial off the front is dominated by a member of it
        assert t.values in front or any(dominates(f, t.values) for f in front)
    assert set(report["best"]["objectives"]) == {"perception", "text"}


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_items():
    a = [True, True, False, True, False, False, True, True, True, False]
    b = [True, False, False, False, True, False, False, False, True, False]
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (4, 1)
    assert result["p_value"] == pytest.approx(binomtest(1, 5, 0.5).pvalue)
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar(a, b[:-1])


def test_report_compares_with_the_base_and_the_grid_on_the_same_items(toy, items, tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("components: {S1: [all]}\ncurves: {constant: {preset: constant}}\nalphas: [0.3, 0.9]\n")
    text = ONE_OBJECTIVE
    report = run_search(toy, text, parse_space(text), items, tmp_path / "g",
                        SearchOptions(trials=3, min_items=6, seed=3), "toy-48", grid=load_grid(grid_file)[0])
    best, base, grid = report["best"], report["base"], report["grid_best"]
    assert grid["alpha"] in (0.3, 0.9) and grid["overall"]["items"] == best["overall"]["items"] == 24
    for entry in (best, grid):
        # the discordant counts match the two accuracies on the same 24 items
        assert entry["vs_base"]["a_only"] - entry["vs_base"]["b_only"] == round(
            24 * (entry["overall"]["accuracy"] - base["overall"]["accuracy"]))
        assert 0.0 <= entry["vs_base"]["p_value"] <= 1.0
    assert "vs_grid_best" in best
    assert 0.0 <= best["official"]["accuracy"] <= 1.0 and best["official"]["items"] == 24  # both scores
    low, high = best["overall"]["low"], best["overall"]["high"]
    assert low <= best["overall"]["accuracy"] <= high


@pytest.mark.parametrize("text, message", [
    ("groups: []", "non-empty 'groups' mapping"),
    ("groups: {attention: {anchors: 3, range: [0.8, 0.2]}}", "groups.attention.range: a range is [lo, hi]"),
    ("groups: {attention: {anchors: 0}}", "groups.attention.anchors"),
    ("groups: {vision: {anchors: 2}}", "name its 'components'"),
    ("groups: {x: {components: [nope], anchors: 2}}", "unknown component"),
    ("groups: {attention: {anchors: 2, method: lerp}}", "lerp"),
    ("groups: {attention: {anchors: 2, params: {density: [0.1, 0.5]}}}", "no method of ['linear'] takes ['density']"),
    ("groups: {attention: {preset: linear, start: 0.0}}", "preset linear needs end"),
    ("groups: {attention: {fixed: {preset: constant, value: 0.5}}}", "every group is fixed"),
    ("groups: {attention: {anchors: 2}}\nobjectives: {a: [x], b: [y], c: [z]}", "objectives maps 1 or 2"),
    ("groups: {attention: {anchors: 2}}\nsampler: tpe", "unknown key(s) ['sampler']"),
    ("groups: {attention: {anchors: 2, preset: constant}}", "exactly one of anchors, preset or fixed"),
    ("groups: &a {attention: *a}", "alias"),
])
def test_bad_space_files_get_one_line_errors(text, message):
    with pytest.raises(MergescopeError) as info:
        parse_space(text, "space.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "merging", "search", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, **kwargs)


@pytest.mark.parametrize("extra, message", [
    (["--objective", "bleu"], "--objective 'bleu': choose one of ['accuracy', 'gold_logprob']"),
    (["--sampler", "grid"], "--sampler 'grid'"),
    (["--test-fraction", "1.5"], "--test-fraction 1.5"),
    (["--trials", "0"], "argument --trials: 0 must be at least 1"),  # argparse's own refusal (after usage)
    (["--resume"], "--resume: no study in"),
])
def test_bad_options_get_one_line_errors_before_loading(extra, message, eval_file, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(ONE_OBJECTIVE)
    argv = ["search", "--space", str(space), "--eval-set", str(eval_file), "--out", str(tmp_path / "o"), *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's refusals exit from inside parse_args
            status = exc.code
    assert status == 2
    assert message in err.getvalue().splitlines()[-1]  # the reason is one line (argparse prints its usage first)


def _finished_in_file(path: Path) -> int:
    """Finished trials in a study file, read only: opening it through Optuna while the search creates
    its tables would race that creation ("table already exists")."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet, or the file is being written
        return 0


def test_a_killed_search_resumes_and_evaluates_no_trial_twice(eval_file, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(ONE_OBJECTIVE)
    out = tmp_path / "run"
    args = ["--space", str(space), "--eval-set", str(eval_file), "--out", str(out), "--trials", "4",
            "--min-items", "6", "--no-pruning", "--dtype", "float32", "--json"]
    process = subprocess.Popen([sys.executable, "-m", "merging", "search", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{out / STUDY_FILE}"
    deadline = time.monotonic() + 300
    while True:  # kill it once a trial is in the database and before the budget is spent
        assert process.poll() is None, "the search ended before it could be killed"
        assert time.monotonic() < deadline
        if _finished_in_file(out / STUDY_FILE) >= 1:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = finished_trials(optuna.load_study(study_name=STUDY_NAME, storage=storage))
    assert 1 <= len(before) < 4
    result = _cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    done = finished_trials(study)
    assert len(done) == 4 and report["ran"] == 4 - len(before)
    plans = [t.user_attrs["plan"] for t in done]
    assert len(set(plans)) == len(plans)  # no trial evaluated twice
    assert [t.number for t in before] == [t.number for t in done][:len(before)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # without --resume, an existing study is refused in one line
        assert main(["search", *args]) == 2
    assert "pass --resume" in err.getvalue() and err.getvalue().count("\n") == 1


def test_two_ray_workers_give_the_trials_of_one_process(toy, items, tmp_path):
    ray = pytest.importorskip("ray")
    from merging.experiments.search_ray import RayEvaluator  # imports Ray's module (optional extra)
    text = ONE_OBJECTIVE
    options = SearchOptions(trials=4, seed=5, sampler="random", pruning=False)
    local = run_search(toy, text, parse_space(text), items, tmp_path / "local", options, "toy-48")
    spec = ModelSpec(str(TOY_VLM), str(TOY_LLM), str(TOY_SEED), dtype="float32")
    try:
        evaluator = RayEvaluator(spec, "accuracy", 4, str(tmp_path / "worker-cache"), workers=2)  # computed afresh
        remote = run_search(toy, text, parse_space(text), items, tmp_path / "ray", options, "toy-48",
                            evaluator=evaluator)
        bad = ModelSpec(str(tmp_path / "no-such-vlm"), str(TOY_LLM), dtype="float32")
        with pytest.raises(MergescopeError, match="a Ray worker could not start: .*no-such-vlm") as info:
            RayEvaluator(bad, "accuracy", 4, str(tmp_path / "worker-cache"), workers=1)  # says why, never retries
        assert "\n" not in str(info.value)
    finally:
        ray.shutdown()
    assert _trials(tmp_path / "local") == _trials(tmp_path / "ray")
    assert remote["best"]["trial"] == local["best"]["trial"] and evaluator.started == 2


def test_the_search_tab_caps_a_public_demo_and_checks_its_fields(toy, items, tmp_path):
    from ui.explorer import PUBLIC_MAX_SEARCH_TRIALS, Explorer
    from ui.search_tab import search_setup
    public = Explorer(toy, items, "toy-48", public=True, search_dir=tmp_path)
    with pytest.raises(MergescopeError, match=f"trials: 500 is outside \\[1, {PUBLIC_MAX_SEARCH_TRIALS}\\]"):
        search_setup(public, ONE_OBJECTIVE, "accuracy", None, 500, 16, 0)
    with pytest.raises(MergescopeError, match="items"):
        search_setup(public, ONE_OBJECTIVE, "accuracy", None, 5, 10_000, 0)
    with pytest.raises(MergescopeError, match="objective 'text' names categories \\['nope'\\]"):
        search_setup(public, "groups: {attention: {anchors: 2}}\nobjectives: {text: [nope]}", "accuracy", None, 5,
                     16, 0)
    space, options, chosen, folder = search_setup(public, ONE_OBJECTIVE, "accuracy", None, 5, 16, 0)
    assert len(chosen) == 16 and options.trials == 5 and folder.parent == tmp_path
    again = search_setup(public, ONE_OBJECTIVE, "accuracy", None, 9, 16, 0)[3]
    assert again == folder  # a larger budget continues the same study


@pytest.mark.parametrize("name", ["toy_space.yaml", "blog_space.yaml"])
def test_the_shipped_spaces_parse(name):
    space = load_space(REPO / "examples" / name)
    assert space.groups and all(g.searched for g in space.groups)


def test_batched_gold_logprobs_equal_one_at_a_time_and_come_from_the_cache(toy, items):
    chosen = items[:10]  # images and text-only questions both
    plan = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                           "curve": {"preset": "constant", "value": 0.37}}]})
    single = toy.run(lambda engine: [reference_logprob(engine.pair, i.question, i.answer, i.image()) for i in chosen],
                     plan=plan)
    batched = toy.gold_logprobs(plan, [(i.question, i.image, i.answer) for i in chosen])
    assert batched == pytest.approx(single, abs=1e-5)
    entries = toy.cache.stats()["entries"]
    assert toy.gold_logprobs(plan, [(i.question, i.image, i.answer) for i in chosen]) == batched
    assert toy.cache.stats()["entries"] == entries  # the second call computed nothing new
