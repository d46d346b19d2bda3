"""`python -m merging inspect|answer` as a user runs them: a real subprocess on a tiny pair."""

import json
import subprocess
import sys

from PIL import Image


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "merging", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_inspect_json_reports_mapping_and_distances(qwen_dirs):
    vlm, llm = qwen_dirs
    result = run_cli("inspect", "--vlm", vlm, "--llm", llm, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["num_layers"] == 4 and report["matched"] == 51 and not report["unmatched"]
    rows = report["distances"]
    assert {(r["layer"], r["role"]) for r in rows if r["layer"] == 0} >= {(0, "q_proj"), (0, "down_proj")}
    q0 = next(r for r in rows if r["layer"] == 0 and r["role"] == "q_proj")
    assert 0.1 < q0["rel_l2"] < 0.5 and 0.8 < q0["cosine"] < 1.0  # the donor is the VLM + 30 % noise


def test_inspect_table(qwen_dirs):
    result = run_cli("inspect", "--vlm", qwen_dirs[0], "--llm", qwen_dirs[1])
    assert result.returncode == 0, result.stderr
    assert "4 decoder layers; 51 tensors matched" in result.stdout and "q_proj" in result.stdout


def test_answer_json_with_a_plan_and_an_image(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), (220, 20, 20)).save(image)
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - components: [self_attn]\n    curve: {preset: loglinear, start: 0.05, end: 0.4}\n")
    base = run_cli("answer", "--vlm", vlm, "--llm", llm, "--image", image, "--question", "How many?", "--json")
    merged = run_cli("answer", "--vlm", vlm, "--llm", llm, "--image", image, "--question", "How many?",
                     "--plan", plan, "--json", "--max-new-tokens", "8")
    assert base.returncode == 0 and merged.returncode == 0, base.stderr + merged.stderr
    base, merged = json.loads(base.stdout), json.loads(merged.stdout)
    assert set(merged) == {"answer", "cached", "seconds", "plan_hash"}
    assert merged["cached"] is False and merged["seconds"] > 0
    assert merged["plan_hash"] != base["plan_hash"]
    assert isinstance(merged["answer"], str)


def test_cli_errors_are_one_clear_line(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    bad_plan = tmp_path / "bad.yaml"
    bad_plan.write_text("rules: [{components: [mlp], curve: {preset: constant, value: 1.5}}]")
    cases = [(["--question", "hi", "--plan", bad_plan], "α=1.5 is outside [0, 1]"),
             (["--question", "   "], "the question is empty"),
             (["--question", "hi", "--image", tmp_path / "missing.png"], "not a readable image")]
    for extra, message in cases:
        result = run_cli("answer", "--vlm", vlm, "--llm", llm, *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    result = run_cli("inspect", "--vlm", vlm, "--llm", tmp_path / "nowhere")
    assert result.returncode == 2 and "no such folder" in result.stderr
    result = run_cli("inspect", "--pair", "gpt-4")
    assert result.returncode == 2 and "unknown pair 'gpt-4'" in result.stderr


def test_readme_demo_runs_offline_and_restores_exactly():
    result = subprocess.run([sys.executable, "-m", "toy.demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Setting 2, loglinear" in result.stdout and "tensors written" in result.stdout
    assert "How many" in result.stdout and "What is" in result.stdout  # image and text questions of the toy set
    assert "bit-exact = True" in result.stdout
