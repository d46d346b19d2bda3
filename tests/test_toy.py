"""The toy world and the shipped toy pair (assets/toy): accuracy through the same code path as a hub
model, a deterministic generator, the eval export, donors with and without a shared seed, and the
training recipe end to end in --smoke mode."""

import json
import subprocess
import sys

import pytest
import torch

from merging import MergeEngine, MergePlan, load_pair
from merging.evals.eval_sets import load_eval_set
from merging.evals.scoring import judge
from merging.run.generate import GenerationSettings, answer
from toy import TOY_DIR, TOY_EVAL, TOY_LLM, TOY_LLM_NOSEED, TOY_SEED, TOY_VLM, world
from toy.evaluate_toy import as_eval_item, eval_items, generate_batch
from toy.train import main as train_main

SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def shipped_items():
    return load_eval_set(TOY_EVAL)


@pytest.fixture(scope="module")
def toy_pair():
    return load_pair(TOY_VLM, TOY_LLM)


def _sample(items, kinds, per_kind):
    chosen = []
    for kind in kinds:
        chosen += [it for it in items if world.kind_of(it.id) == kind][:per_kind]
    return chosen


def _accuracy(pair, items):
    return sum(judge(answer(pair, it.question, it.image(), SETTINGS), it).correct for it in items) / len(items)


def test_shipped_vlm_answers_perception_questions(toy_pair, shipped_items):
    items = _sample(shipped_items, world.PERCEPTION, 8)  # 32 held-out items, loaded as the CLI loads them
    assert all(it.image_path is not None for it in items)
    assert _accuracy(toy_pair, items) >= 0.8


def test_shipped_llm_answers_text_questions(shipped_items):
    llm = load_pair(TOY_LLM, TOY_LLM)  # a plain causal LM in the VLM's role
    assert not llm.is_multimodal
    assert _accuracy(llm, _sample(shipped_items, world.TEXT, 10)) >= 0.8


def test_batched_evaluation_matches_single_answers(toy_pair):
    items = [it for kind in world.KINDS for it in world.items(kind, 2, seed=world.EVAL_SEED)]
    batched = generate_batch(toy_pair.vlm, toy_pair.processor, items)
    single = [answer(toy_pair, it.question, it.image(), SETTINGS) for it in items]
    assert batched == single


@pytest.mark.parametrize("donor", [TOY_LLM, TOY_LLM_NOSEED])
def test_both_donors_merge_in_place_and_restore(donor, shipped_items):
    pair = load_pair(TOY_VLM, donor)
    assert pair.layout.num_layers >= 8
    engine = MergeEngine(pair)
    items = _sample(shipped_items, world.PERCEPTION, 3)
    before = [answer(pair, it.question, it.image(), SETTINGS) for it in items]
    report = engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"],
                                                          "curve": {"preset": "constant", "value": 0.6}}]}))
    assert len(report.written) == len(pair.layout.slots)
    merged = [answer(pair, it.question, it.image(), SETTINGS) for it in items]
    engine.restore()
    assert [answer(pair, it.question, it.image(), SETTINGS) for it in items] == before
    if donor == TOY_LLM_NOSEED:  # no shared init: the average of two unrelated networks breaks
        assert merged != before


def test_shared_seed_is_a_base_for_task_arithmetic():
    pair = load_pair(TOY_VLM, TOY_LLM, base=TOY_SEED)
    MergeEngine(pair).apply(MergePlan.from_dict({"rules": [{"components": ["self_attn"], "method": "task_arithmetic",
                                                            "curve": {"preset": "constant", "value": 0.5}}]}))


def test_generator_is_deterministic_and_png_bytes_are_stable():
    a = [it for kind in world.KINDS for it in world.items(kind, 5, seed="s")]
    b = [it for kind in world.KINDS for it in world.items(kind, 5, seed="s")]
    assert a == b
    assert [world.png_bytes(it.image()) for it in a if it.scene] == [world.png_bytes(it.image()) for it in b if it.scene]
    assert a != [it for kind in world.KINDS for it in world.items(kind, 5, seed="t")]
    image = a[0].image()
    assert image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE) == (56, 56)


def test_items_answer_what_the_scene_shows():
    for it in world.items("count", 50, seed="check"):
        things = [t for t in it.scene if t is not None]
        q = it.question
        expected = (len(things) if q == "How many shapes are there?" else
                    sum(t.colour in q.split() for t in things) if "shapes" in q else
                    sum(q.startswith(f"How many {t.shape}s") for t in things))
        assert it.answer == str(expected)
    for it in world.items("position", 30, seed="check"):
        cell = world.POSITIONS.index(it.answer)
        assert f"{it.scene[cell].colour} {it.scene[cell].shape}" in it.question
    for it in world.items("text_plus", 30, seed="check"):
        word = it.question.split()[4]
        listed = it.question.split(": ")[1].split("?")[0].split()
        assert int(it.answer) == listed.count(word) + int(it.question.rsplit("Add ", 1)[1].rstrip("."))


def test_export_is_readable_and_the_shipped_eval_set_is_in_sync(tmp_path, shipped_items):
    items = eval_items(3)
    path = world.export_jsonl(items, tmp_path)
    loaded = load_eval_set(path)
    assert [it.id for it in loaded] == [it.id for it in items]
    assert all(judge(it.answer, lit).correct for it, lit in zip(items, loaded))
    for it, lit in zip(items, loaded):
        assert (lit.image_path is None) == (it.scene is None)
        if it.scene is not None:
            assert lit.image_path.read_bytes() == world.png_bytes(it.image())
    # the shipped set is the first items of each kind of the held-out stream, byte for byte
    n = sum(1 for it in shipped_items if world.kind_of(it.id) == "count")
    regenerated = eval_items(n)
    assert sorted((it.id, it.question, it.answer) for it in shipped_items) == \
        sorted((it.id, it.question, it.answer) for it in regenerated)
    assert [world.kind_of(it.id) for it in shipped_items[:len(world.KINDS)]] == list(world.KINDS)  # kinds take turns
    first_image = next(it for it in regenerated if it.scene is not None)
    assert (TOY_EVAL.parent / "images" / f"{first_image.id}.png").read_bytes() == world.png_bytes(first_image.image())


def test_answers_are_single_tokens(toy_pair):
    tokenizer = toy_pair.processor.tokenizer
    for kind in world.KINDS:
        for it in world.items(kind, 20, seed="tok"):
            assert len(tokenizer.tokenize(it.answer)) == (2 if kind == "position" else 1), it.answer


def test_assets_fit_the_size_budget():
    total = sum(p.stat().st_size for p in TOY_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 2 ** 20
    log = json.loads((TOY_DIR / "train_log.json").read_text())
    assert log["recipe"]["shape"]["num_hidden_layers"] >= 8 and log["recipe"]["shape"]["hidden_size"] <= 256


def test_training_smoke_run_produces_loadable_folders(tmp_path):
    threads = torch.get_num_threads()
    try:
        train_main(["--out", str(tmp_path), "--smoke"])
    finally:
        torch.set_num_threads(threads)
    for name in ("seed", "vlm", "llm", "llm_noseed"):
        assert (tmp_path / name / "model.safetensors").exists()
    pair = load_pair(tmp_path / "vlm", tmp_path / "llm")
    assert pair.is_multimodal and pair.layout.num_layers >= 8
    item = world.items("colour", 1)[0]
    assert isinstance(answer(pair, item.question, item.image(), GenerationSettings(max_new_tokens=2)), str)
    assert json.loads((tmp_path / "train_log.json").read_text())["stages"]["vlm"]["steps"] == 2
    assert as_eval_item(item).answer == item.answer


def test_cli_uses_the_toy_pair_when_no_model_is_named_and_the_noseed_donor_on_request():
    def inspect(*extra):
        result = subprocess.run([sys.executable, "-m", "merging", "inspect", "--json", *extra],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    default, noseed = inspect(), inspect("--pair", "toy-noseed")
    named = inspect("--vlm", str(TOY_VLM), "--llm", str(TOY_LLM), "--base", str(TOY_SEED))
    assert default["fingerprints"] == named["fingerprints"]
    assert default["fingerprints"]["vlm"] == noseed["fingerprints"]["vlm"]
    assert default["fingerprints"]["donor"] != noseed["fingerprints"]["donor"]
    # the shared seed shows in the weights: the fine-tuned donor stays close to the VLM, the other does
    # not (measured: mean cosine .80 vs .23 — only the norms' all-ones-like weights agree — rel_l2 .52 vs 1.0)
    def mean(report, key):
        return sum(r[key] for r in report["distances"]) / len(report["distances"])
    assert mean(default, "cosine") > 2 * mean(noseed, "cosine")
    assert mean(default, "rel_l2") < 0.7 * mean(noseed, "rel_l2")
