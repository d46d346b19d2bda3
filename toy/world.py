"""The toy world: a deterministic generator of small images, questions and one-word answers.

An image is a 2×2 grid of 28×28 px cells (56×56 px in all), each cell empty or holding one large
shape (circle, square, triangle) in one of four colours (red, green, blue, yellow), with a little
jitter in size, position and hue. With Qwen2.5-VL's 14 px patches and 2×2 spatial merge, each cell
is exactly one image token, and the processor never resizes (min_pixels = max_pixels = 56·56).

Question kinds (`KINDS`), grouped by the skill they need (`SKILLS`):

- perception (image): `count` (all shapes, or of one colour, or of one shape), `colour` (of the shape
  in a named cell), `shape` (in a named cell), `position` (where a named shape is: "top left", ...);
- text (language): `arith` (a plus/minus b, operands and results 0–9), `text_count` (how many times a word occurs in a
  list), `text_plus` (a text count, then "Add k.");
- compositional (image + language): `count_plus` (an image count, then "Add k.").

Everything derives from `random.Random` seeded with strings (SHA-512 based, the same in every
process); Python's `hash()` is never used. The same (kind, seed, index) always gives the same item,
and the same image gives the same PNG bytes. Items export as the project's eval JSONL + PNG images.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 28
GRID = 2
IMAGE_SIZE = CELL * GRID
BACKGROUND = (245, 245, 245)
COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell index 0..3, row-major
WORDS = ("cat", "dog", "fox", "bird", "fish")

PERCEPTION = ("count", "colour", "shape", "position")
TEXT = ("arith", "text_count", "text_plus")
COMPOSITIONAL = ("count_plus",)
KINDS = PERCEPTION + TEXT + COMPOSITIONAL
SKILLS = {**{k: "perception" for k in PERCEPTION}, **{k: "text" for k in TEXT},
          **{k: "compositional" for k in COMPOSITIONAL}}
ANSWER_TYPES = {"count": "integer", "colour": "text", "shape": "text", "position": "text", "arith": "integer",
                "text_count": "integer", "text_plus": "integer", "count_plus": "integer"}

TRAIN_SEED = "train"
EVAL_SEED = "eval"   # held-out items: a different random stream


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: int      # half-extent in px
    dx: int        # offset of the centre from the cell centre
    dy: int
    tint: tuple[int, int, int]  # small per-channel colour jitter


Scene = tuple  # 4 cells (row-major), each a Thing or None


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    question: str
    answer: str
    scene: Scene | None = None

    @property
    def answer_type(self) -> str:
        return ANSWER_TYPES[self.kind]

    def image(self) -> Image.Image | None:
        return render(self.scene) if self.scene is not None else None


# -- rendering -----------------------------------------------------------------------------------
def render(scene: Scene) -> Image.Image:
    """Draw a scene (deterministic: no antialiasing, integer coordinates)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for index, thing in enumerate(scene):
        if thing is None:
            continue
        row, col = divmod(index, GRID)
        cx, cy = col * CELL + CELL // 2 + thing.dx, row * CELL + CELL // 2 + thing.dy
        r = thing.size
        fill = tuple(max(0, min(255, c + t)) for c, t in zip(COLOURS[thing.colour], thing.tint))
        if thing.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif thing.shape == "square":
            s = r - 2  # a square of the same half-extent looks much bigger than the circle
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r - 1), (cx - r, cy + r - 1)], fill=fill)
    return img


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


# -- sampling ------------------------------------------------------------------------------------
def _thing(rng: random.Random, colour: str | None = None, shape: str | None = None) -> Thing:
    return Thing(colour or rng.choice(list(COLOURS)), shape or rng.choice(SHAPES), rng.randint(9, 11),
                 rng.randint(-2, 2), rng.randint(-2, 2), tuple(rng.randint(-20, 20) for _ in range(3)))


def random_scene(rng: random.Random, min_things: int = 0) -> Scene:
    """A scene with a uniformly drawn number of shapes (≥ min_things) in random cells."""
    n = rng.randint(min_things, GRID * GRID)
    cells = set(rng.sample(range(GRID * GRID), n))
    return tuple(_thing(rng) if i in cells else None for i in range(GRID * GRID))


def _plural(shape: str) -> str:
    return shape + "s"


def _count_question(rng: random.Random, scene: Scene) -> tuple[str, int]:
    things = [t for t in scene if t is not None]
    mode = rng.choice(("all", "colour", "shape"))
    if mode == "all":
        return "How many shapes are there?", len(things)
    if mode == "colour":
        colour = rng.choice(list(COLOURS))
        return f"How many {colour} shapes are there?", sum(t.colour == colour for t in things)
    shape = rng.choice(SHAPES)
    return f"How many {_plural(shape)} are there?", sum(t.shape == shape for t in things)


def _count_scene(rng: random.Random) -> Scene:
    """Scenes for count questions: a third of them skewed so that colour/shape counts reach 2–4."""
    scene = random_scene(rng)
    if rng.random() < 1 / 3:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        scene = tuple(None if t is None else
                      (_thing(rng, colour=colour) if rng.random() < 0.5 else _thing(rng, shape=shape))
                      for t in scene)
    return scene


def _word_list(rng: random.Random) -> tuple[str, list[str], int]:
    word = rng.choice(WORDS)
    length = rng.randint(3, 6)
    hits = rng.randint(0, min(4, length))
    others = [w for w in WORDS if w != word]
    words = [word] * hits + [rng.choice(others) for _ in range(length - hits)]
    rng.shuffle(words)
    return word, words, hits


def make_item(kind: str, rng: random.Random, item_id: str) -> Item:
    if kind == "count":
        scene = _count_scene(rng)
        question, n = _count_question(rng, scene)
        return Item(item_id, kind, question, str(n), scene)
    if kind == "count_plus":
        scene = _count_scene(rng)
        question, n = _count_question(rng, scene)
        k = rng.randint(1, 3)
        return Item(item_id, kind, f"{question} Add {k}.", str(n + k), scene)
    if kind in ("colour", "shape"):
        scene = random_scene(rng, min_things=1)
        cell = rng.choice([i for i, t in enumerate(scene) if t is not None])
        if kind == "colour":
            return Item(item_id, kind, f"What colour is the shape at the {POSITIONS[cell]}?", scene[cell].colour, scene)
        return Item(item_id, kind, f"What shape is at the {POSITIONS[cell]}?", scene[cell].shape, scene)
    if kind == "position":
        unique = []
        while not unique:  # redraw the rare scenes where every shape has a twin
            scene = random_scene(rng, min_things=1)
            pairs = Counter((t.colour, t.shape) for t in scene if t is not None)
            unique = [i for i, t in enumerate(scene) if t is not None and pairs[(t.colour, t.shape)] == 1]
        cell = rng.choice(unique)
        thing = scene[cell]
        return Item(item_id, kind, f"Where is the {thing.colour} {thing.shape}?", POSITIONS[cell], scene)
    if kind == "arith":  # operands and results 0..9: every answer is one digit, one token
        if rng.random() < 0.5:
            total = rng.randint(0, 9)
            a = rng.randint(0, total)
            return Item(item_id, kind, f"What is {a} plus {total - a}?", str(total))
        a, b = sorted((rng.randint(0, 9), rng.randint(0, 9)), reverse=True)
        return Item(item_id, kind, f"What is {a} minus {b}?", str(a - b))
    if kind in ("text_count", "text_plus"):
        word, words, hits = _word_list(rng)
        question = f"How many times does {word} appear in: {' '.join(words)}?"
        if kind == "text_count":
            return Item(item_id, kind, question, str(hits))
        k = rng.randint(1, 3)
        return Item(item_id, kind, f"{question} Add {k}.", str(hits + k))
    raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")


def items(kind: str, n: int, seed: str = EVAL_SEED, start: int = 0) -> list[Item]:
    """Items start..start+n-1 of `kind` from the stream `seed`; each item has its own seeded RNG, so
    any slice is reproducible on its own."""
    return [make_item(kind, random.Random(f"{seed}/{kind}/{i}"), f"{kind}-{i:05d}") for i in range(start, start + n)]


def stream(kinds: dict[str, float], seed: str | int):
    """An endless stream of training items, kinds drawn with the given weights (deterministic)."""
    rng = random.Random(f"stream/{seed}")
    names, weights = list(kinds), list(kinds.values())
    i = 0
    while True:
        kind = rng.choices(names, weights)[0]
        yield make_item(kind, random.Random(f"{seed}/{kind}/{i}"), f"{kind}-{i:07d}")
        i += 1


def answer_prior(kind: str, n: int = 4000, seed: str = TRAIN_SEED) -> str:
    """The most frequent answer of `kind` in training data: the best guess that ignores the input."""
    counts = Counter(it.answer for it in items(kind, n, seed=seed))
    return max(sorted(counts), key=lambda a: counts[a])  # ties: the smallest answer, deterministic


# -- tokenizer corpus ----------------------------------------------------------------------------
def corpus(n_per_kind: int = 300) -> list[str]:
    """Text for training the BPE: every question template, and the bare answers on their own (so each
    answer word or number after "assistant\\n" is one token)."""
    lines = ["user assistant system", "What is in the image?"]
    for kind in KINDS:
        for item in items(kind, n_per_kind, seed="corpus"):
            lines.append(item.question)
            lines.append(item.answer)
    answers = [str(i) for i in range(10)] + list(COLOURS) + list(SHAPES) + [w for p in POSITIONS for w in p.split()]
    lines.extend(answers * 50)
    return lines


# -- export --------------------------------------------------------------------------------------
def export_jsonl(items_: list[Item], out_dir: str | Path, name: str = "toy_eval.jsonl") -> Path:
    """Write `out_dir/name` (the project's eval JSONL) and `out_dir/images/<id>.png`."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items_:
        record = {"id": item.id, "question": item.question, "answer": item.answer,
                  "answer_type": item.answer_type, "kind": item.kind}
        if item.scene is not None:
            rel = f"images/{item.id}.png"
            (out_dir / rel).write_bytes(png_bytes(item.image()))
            record["image"] = rel
        lines.append(json.dumps(record, sort_keys=True))
    path = out_dir / name
    path.write_text("\n".join(lines) + "\n")
    return path


def kind_of(item_id: str) -> str:
    """The question kind of an exported item, from its id (`<kind>-<index>`)."""
    return item_id.rsplit("-", 1)[0]
