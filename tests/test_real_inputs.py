"""The public reports of issue #25 as tests: phone photos, transparent charts, banners, a cache key that sees
every setting, an empty stop string, and a Ray worker that cannot start."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.__main__ import main
from merging.run.answerer import Answerer, image_digest
from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem, load_eval_set
from merging.run.generate import GenerationSettings
from merging.io.images import MAX_ASPECT_RATIO, read_image
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_VLM
from merging.experiments.sweep import Cell, run_sweep

ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF: "the stored picture is shown turned 90° clockwise"


@pytest.fixture(scope="module")
def toy_engine():
    return MergeEngine(load_pair(TOY_VLM, TOY_LLM, dtype="float32"))


@pytest.fixture(scope="module")
def image_items():
    return [item for item in load_eval_set(TOY_EVAL) if item.image_path is not None][:6]


def phone_photo(source: Image.Image, path, fmt: str) -> None:
    """`source` stored as a phone stores it: pixels turned 90° counter-clockwise, EXIF saying turn them back."""
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90_CW
    source.transpose(Image.Transpose.ROTATE_90).save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def test_phone_photos_are_read_upright(image_items, tmp_path):
    for item in image_items[:3]:
        upright = read_image(item.image_path)
        phone_photo(upright, tmp_path / "photo.png", "PNG")  # lossless: the very same pixels
        assert image_digest(read_image(tmp_path / "photo.png")) == image_digest(upright)
        phone_photo(Image.new("RGB", (40, 20), "red"), tmp_path / "photo.jpg", "JPEG")
        assert read_image(tmp_path / "photo.jpg").size == (40, 20)


def test_phone_photos_get_the_upright_pictures_answers(toy_engine, image_items, tmp_path):
    answerer, settings = Answerer(toy_engine), GenerationSettings(max_new_tokens=6)
    for i, item in enumerate(image_items):
        phone_photo(read_image(item.image_path), tmp_path / f"{i}.png", "PNG")
        rotated = EvalItem(item.id, item.question, item.answer, item.answer_type, image_path=tmp_path / f"{i}.png")
        assert answerer.ask(MergePlan(), item.question, rotated.image(), settings)["answer"] == \
            answerer.ask(MergePlan(), item.question, item.image(), settings)["answer"]


def chart(opaque_rows: slice) -> Image.Image:
    """A red square whose only visible part is `opaque_rows` (the rest is transparent red)."""
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, opaque_rows.start, 32, opaque_rows.stop))
    return image


def test_transparent_charts_are_on_white_and_stay_different(tmp_path):
    top, bottom = chart(slice(0, 16)), chart(slice(16, 32))
    assert top.convert("RGB").tobytes() == bottom.convert("RGB").tobytes()  # what a plain conversion sees
    top.save(tmp_path / "top.png")
    bottom.save(tmp_path / "bottom.png")
    a, b = read_image(tmp_path / "top.png"), read_image(tmp_path / "bottom.png")
    assert image_digest(a) != image_digest(b)  # so they never share a cached answer
    assert a.getpixel((0, 0)) == (255, 0, 0) and a.getpixel((0, 31)) == (255, 255, 255)
    palette = top.convert("P")  # a palette image with a transparent index
    palette.info["transparency"] = palette.getpixel((0, 31))
    palette.save(tmp_path / "palette.png", transparency=palette.info["transparency"])
    assert read_image(tmp_path / "palette.png").getpixel((0, 31)) == (255, 255, 255)


@pytest.mark.parametrize("size", [(4000, 10), (10, 3000), (3, 3), (1, 60_000)])
def test_banners_and_strips_reach_the_processor_padded(toy_engine, tmp_path, size):
    Image.new("RGB", size, "black").save(tmp_path / "strip.png")
    image = read_image(tmp_path / "strip.png")
    assert max(image.size) / min(image.size) <= MAX_ASPECT_RATIO
    answerer = Answerer(toy_engine)
    assert isinstance(answerer.ask(MergePlan(), "What is it?", image, GenerationSettings(max_new_tokens=3))["answer"],
                      str)
    # a library caller's in-memory banner is fitted the same way before the processor
    answerer.ask(MergePlan(), "What is it?", Image.new("RGB", size), GenerationSettings(max_new_tokens=3))


def test_a_sweep_records_an_unreadable_image_as_failed_and_goes_on(toy_engine, image_items):
    broken = EvalItem("broken", "What colour?", "red", "text", image_bytes=b"not a picture")
    items = [image_items[0], broken, image_items[1]]
    rows = run_sweep(Answerer(toy_engine), [Cell("base VLM", "-", None, MergePlan())], items,
                     GenerationSettings(max_new_tokens=4))
    assert rows[0]["answered"] == 3 and rows[0]["failed"] == 1 and rows[0]["complete"]
    failed = next(a for a in rows[0]["answers"] if a["id"] == "broken")
    assert failed["rule"] == "failed" and "not a readable image" in failed["error"] and not failed["correct"]
    assert all("error" not in a and a["answer"] for a in rows[0]["answers"] if a["id"] != "broken")


def _vlm_copy(tmp_path, name: str, edit) -> str:
    folder = tmp_path / name
    shutil.copytree(TOY_VLM, folder)
    edit(folder)
    return str(folder)


def _edit_json(name: str, change):
    def edit(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return edit


def _processor_pixels(data):
    data["image_processor"]["size"]["longest_edge"] = 112 * 112  # Qwen2-VL's max_pixels


def _template(folder):
    (folder / "chat_template.jinja").write_text((folder / "chat_template.jinja").read_text() + "\n")


def test_the_cache_key_sees_dtype_processor_template_and_generation_config(tmp_path):
    """Same weight files each time: only what the folder or the load sets differs, and each gets its own key."""
    variants = {"float32": load_pair(TOY_VLM, TOY_LLM, dtype="float32"),
                "bfloat16": load_pair(TOY_VLM, TOY_LLM, dtype="bfloat16"),
                "max_pixels": load_pair(_vlm_copy(tmp_path, "p", _edit_json("processor_config.json", _processor_pixels)),
                                        TOY_LLM, dtype="float32"),
                "chat template": load_pair(_vlm_copy(tmp_path, "t", _template), TOY_LLM, dtype="float32"),
                "generation": load_pair(_vlm_copy(tmp_path, "g", _edit_json("generation_config.json",
                                        lambda d: d.update(repetition_penalty=1.3))), TOY_LLM, dtype="float32")}
    configs = {name: Answerer(MergeEngine(pair)).config(MergePlan(), "What colour?", None, GenerationSettings())
               for name, pair in variants.items()}
    assert len({json.dumps(c["models"], sort_keys=True) for c in configs.values()}) == 1  # the weights agree
    assert len({json.dumps(c, sort_keys=True) for c in configs.values()}) == len(configs)
    assert configs["bfloat16"]["runtime"]["dtype"] == "bfloat16" and configs["float32"]["runtime"]["device"] == "cpu"
    cache = AnswerCache(tmp_path / "cache")  # the reported case: a float32 request got the bfloat16 answer
    Answerer(MergeEngine(variants["bfloat16"]), cache).ask(MergePlan(), "What colour?", None)
    assert Answerer(MergeEngine(variants["float32"]), cache).ask(MergePlan(), "What colour?", None)["cached"] is False


def test_an_empty_stop_string_is_refused(capsys):
    with pytest.raises(MergescopeError, match="stop strings must be non-empty"):
        GenerationSettings(stop=("",))
    for argv in (["answer", "--question", "Hi?", "--stop", ""], ["answer", "--question", "Hi?", "--max-new-tokens", "0"],
                 ["sweep", "--grid", "g", "--eval-set", "e", "--out", "o", "--workers", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mergescope[ray]')")


@pytest.mark.timeout(300)  # before the fix the sweep restarted the worker for ever
def test_a_ray_worker_that_cannot_start_fails_the_sweep_with_its_reason(tmp_path, image_items):
    from merging.experiments.distributed import run_sweep_ray
    from merging.run.stack import ModelSpec
    try:
        with pytest.raises(MergescopeError, match="a Ray worker could not start: .*nowhere"):
            run_sweep_ray(ModelSpec(str(tmp_path / "nowhere"), str(TOY_LLM), dtype="float32"),
                          [Cell("base VLM", "-", None, MergePlan())], image_items[:1],
                          GenerationSettings(max_new_tokens=2), AnswerCache(tmp_path / "cache"), workers=1)
    finally:
        ray.shutdown()
