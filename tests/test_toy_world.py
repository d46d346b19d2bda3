"""The toy world's generator and the training recipe end to end in --smoke mode (the trained pair
itself is not shipped yet: see merging/toy/train.py)."""

import json

import torch

from merging import load_pair
from merging.generate import GenerationSettings, answer
from merging.toy import world
from merging.toy.evaluate_toy import as_eval_item
from merging.toy.train import main as train_main


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
