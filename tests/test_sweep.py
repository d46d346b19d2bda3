"""Sweeps over grids of plans: grid parsing, results files, caching across runs, resume after kill -9."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cache import AnswerCache
from merging.errors import MergescopeError
from merging.experiments.sweep import parse_grid
from merging.experiments.sweep import load_grid

REPO = Path(__file__).resolve().parents[1]


def test_blog_grid_cells():
    cells, settings = load_grid(REPO / "examples" / "blog_grid.yaml")
    assert len(cells) == 1 + 2 * 3 * 3 and settings.max_new_tokens == 512 and settings.seed is None
    assert cells[0].alpha is None and cells[0].plan.rules == ()
    cell = next(c for c in cells if (c.setting, c.method, c.alpha) == ("Setting 2", "log ramp", 0.4))
    (rule,) = cell.plan.rules
    assert rule.components == ("self_attn",)
    assert rule.curve == {"preset": "loglinear", "start": 0.0, "end": 0.4}
    assert len({c.plan.hash() for c in cells}) == len(cells)


def test_grid_template_must_leave_one_alpha_open(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("components: {S: [mlp]}\ncurves: {M: {preset: linear}}\nalphas: [0.5]\n")
    with pytest.raises(MergescopeError, match="exactly one α parameter open"):
        load_grid(grid)
    grid.write_text("components: {S: [vision]}\ncurves: {M: {preset: constant}}\nalphas: [0.5]\n")
    with pytest.raises(MergescopeError, match="unknown component"):
        load_grid(grid)


@pytest.fixture
def eval_set(tmp_path):
    lines = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (56, 56), color).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"i{i}", "image": f"{i}.png", "question": "How many shapes?",
                                 "answer": str(i), "answer_type": "integer"}))
    (tmp_path / "eval.jsonl").write_text("\n".join(lines))
    return tmp_path / "eval.jsonl"


def _sweep_cmd(dirs, grid, eval_set, out):
    return [sys.executable, "-m", "merging", "sweep", "--vlm", str(dirs[0]), "--llm", str(dirs[1]),
            "--grid", str(grid), "--eval-set", str(eval_set), "--out", str(out), "--json"]


def test_sweep_writes_results_and_reuses_the_cache(qwen_dirs, eval_set, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("components: {S2: [self_attn]}\ncurves: {M1: {preset: constant}}\nalphas: [0.3, 0.6]\n"
                    "max_new_tokens: 4\n")
    out = tmp_path / "out"
    first = subprocess.run(_sweep_cmd(qwen_dirs, grid, eval_set, out), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    cells = json.loads(first.stdout)["cells"]
    assert [(c["setting"], c["alpha"]) for c in cells] == [("base VLM", None), ("S2", 0.3), ("S2", 0.6)]
    assert all(c["computed"] == 3 and c["cached"] == 0 and 0 <= c["accuracy"] <= 1 for c in cells)
    assert "sweep" in first.stderr  # the progress bar
    rows = json.loads((out / "results.json").read_text())
    assert all(len(r["answers"]) == 3 and "extracted" in r["answers"][0] for r in rows)
    assert (out / "results.csv").read_text().splitlines()[0].startswith("setting,method,alpha,donor,strict_accuracy,strict_low,strict_high,official_accuracy")
    assert "plotly" in (out / "heatmap.html").read_text()[:5_000_000].lower()
    second = subprocess.run(_sweep_cmd(qwen_dirs, grid, eval_set, out), capture_output=True, text=True, timeout=300)
    assert all(c["computed"] == 0 and c["cached"] == 3 for c in json.loads(second.stdout)["cells"])


def test_sweep_killed_mid_run_resumes_without_recomputing(qwen_dirs, eval_set, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("components: {S1: [all], S2: [self_attn]}\ncurves: {M2: {preset: linear, start: 0.0}}\n"
                    "alphas: [0.2, 0.5, 0.8]\nmax_new_tokens: 4\n")
    total = (1 + 2 * 3) * 3
    out = tmp_path / "out"
    process = subprocess.Popen(_sweep_cmd(qwen_dirs, grid, eval_set, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    store = AnswerCache(out / "cache")
    deadline = time.time() + 240
    while store.stats()["entries"] < 5 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = store.stats()["entries"]
    assert 5 <= finished < total, "the sweep should have been killed half-way"
    resumed = subprocess.run(_sweep_cmd(qwen_dirs, grid, eval_set, out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    cells = json.loads(resumed.stdout)["cells"]
    assert sum(c["computed"] for c in cells) == total - finished
    assert sum(c["cached"] for c in cells) == finished


def test_sweep_merges_with_the_donor_it_is_given(qwen_dirs, eval_set, tmp_path):
    from merging import MergeEngine, load_pair
    from merging.io.checkpoint import Checkpoint
    from merging.evals.eval_sets import load_eval_set
    from merging.run.answerer import Answerer
    from merging.experiments.sweep import parse_grid, run_sweep
    from toy.tiny import build_qwen_pair
    other = Checkpoint(build_qwen_pair(tmp_path / "other", seed=7)[1])
    cells, settings = parse_grid("components: {S1: [all]}\ncurves: {M1: {preset: constant}}\nalphas: [0.8]\n"
                                 "max_new_tokens: 6\n")
    items = load_eval_set(eval_set)
    answerer = Answerer(MergeEngine(load_pair(*qwen_dirs)), AnswerCache(tmp_path / "cache"), donors={"other": other})
    rows = run_sweep(answerer, cells, items, settings, donor="other")
    alone = run_sweep(Answerer(MergeEngine(load_pair(qwen_dirs[0], other.path))), cells, items, settings)
    merged = [r for r in rows if r["setting"] == "S1"]
    assert [a["answer"] for a in merged[0]["answers"]] == \
        [a["answer"] for a in next(r for r in alone if r["setting"] == "S1")["answers"]]
    assert all(e["config"]["models"]["donor"] == other.fingerprint()
               for e in answerer.cache.entries() if e["config"]["plan"]["rules"])


def test_the_old_grid_keys_still_work_with_a_deprecation_message():
    new, _ = parse_grid("components: {S1: [all]}\ncurves: {M1: {preset: constant}}\nalphas: [0.8]\n")
    with pytest.warns(FutureWarning, match="'settings' is now 'components'"):
        old, _ = parse_grid("settings: {S1: [all]}\nmethods: {M1: {preset: constant}}\nalphas: [0.8]\n")
    assert [c.plan for c in old] == [c.plan for c in new]
    with pytest.raises(MergescopeError, match="not both"):
        parse_grid("settings: {S1: [all]}\ncomponents: {S1: [all]}\ncurves: {M1: {preset: constant}}\n"
                   "alphas: [0.8]\n")
