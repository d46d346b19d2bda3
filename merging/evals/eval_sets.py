"""Eval sets read from local files (judging the answers is `merging.evals.scoring`'s job).

Formats:
- the project's JSONL: one object per line, {id, question, answer, answer_type, image?, choices?, precision?}
  with answer_type one of multi_choice, integer, float, text, list and `image` relative to the file;
- MathVista testmini in its published layouts: the hub's parquet shards (`data/testmini-*.parquet`,
  images embedded in `decoded_image`) or a JSON file of {pid: record} with `image` paths;
- MATH-Vision: the hub's parquet shards or the GitHub `data/test.jsonl` (+ `images/`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from merging.errors import MergescopeError
from merging.evals.eval_checks import ANSWER_TYPES, LETTERS, checked, mathvista_groups
from merging.io.images import read_image

# the load_* functions below are reached through load_eval_set, which checks the items they build
__all__ = ["ANSWER_TYPES", "LETTERS", "EvalItem", "load_eval_set", "sample_items"]


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str                 # the prompt shown to the model (options included)
    answer: str
    answer_type: str
    choices: tuple[str, ...] = ()
    precision: int | None = None  # decimals for float answers
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    category: str | None = None   # for per-category accuracy: the toy's kind, MathVista's task, MATH-V's subject
    benchmark: str | None = None  # whose official scorer judges it: "mathvista", "mathvision" (None: MathVista's)
    groups: tuple[tuple[str, str], ...] = ()  # (dimension, value) pairs the benchmark reports, e.g. ("skill", "ALG")

    def image(self) -> Image.Image | None:
        """The item's picture as `merging.io.images.read_image` reads it (None for a text-only item);
        MergescopeError (one line) when it cannot be read."""
        source = self.image_bytes if self.image_bytes is not None else self.image_path
        return None if source is None else read_image(source)


# -- loaders ------------------------------------------------------------------------------------
def load_eval_set(spec: str | Path) -> list[EvalItem]:
    """`PATH.jsonl` (project format), `mathvista:PATH` or `mathvision:PATH`, every item validated
    (`merging.evals.eval_checks.checked`): MergescopeError, one line naming the item and the field, for an
    empty set or a bad item — before any answer is generated."""
    spec = str(spec)
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("mathvista", "mathvision") else ("jsonl", "", spec)
    loader = {"jsonl": load_jsonl, "mathvista": load_mathvista, "mathvision": load_mathvision}[kind]
    items = loader(Path(path))
    if not items:
        raise MergescopeError(f"{spec}: the eval set is empty")
    return [checked(item, f"{spec}: item {i} (id {item.id})") for i, item in enumerate(items)]


def _read_records(path: Path, parquet_glob: str) -> list[dict]:
    if path.is_dir():
        shards = sorted(path.glob(parquet_glob)) or sorted(path.glob("*.parquet"))
        if not shards:
            raise MergescopeError(f"{path}: no parquet shards matching {parquet_glob}")
        return [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    if not path.is_file():
        raise MergescopeError(f"{path}: no such eval file")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise MergescopeError(f"{path}: line {exc.lineno} is not JSON ({exc.msg})") from exc
    data = json.loads(text)
    return [dict(v, pid=k) if isinstance(v, dict) and "pid" not in v else v for k, v in data.items()] \
        if isinstance(data, dict) else data


def _image_fields(record: dict, root: Path) -> dict:
    decoded = record.get("decoded_image")
    if isinstance(decoded, dict) and decoded.get("bytes"):
        return {"image_bytes": decoded["bytes"]}
    if record.get("image"):
        return {"image_path": root / record["image"]}
    return {}


def load_jsonl(path: Path) -> list[EvalItem]:
    items = []
    for i, rec in enumerate(_read_records(path, "*.jsonl")):
        where = f"{path}: item {i}"
        missing = [k for k in ("id", "question", "answer", "answer_type") if k not in rec]
        if missing:
            raise MergescopeError(f"{where}: missing {missing}")
        if rec["answer_type"] not in ANSWER_TYPES:
            raise MergescopeError(f"{where}: answer_type {rec['answer_type']!r} is not one of {ANSWER_TYPES}")
        choices = tuple(str(c) for c in rec.get("choices") or ())
        items.append(EvalItem(str(rec["id"]), _with_choices(rec["question"], choices), str(rec["answer"]),
                              rec["answer_type"], choices, rec.get("precision"), **_image_fields(rec, path.parent),
                              category=rec.get("category") or rec.get("kind"), benchmark=rec.get("benchmark")))
    return items


def load_mathvista(path: Path) -> list[EvalItem]:
    root = path if path.is_dir() else path.parent
    items = []
    for rec in _read_records(path, "**/testmini-*.parquet"):
        choices = tuple(str(c) for c in rec.get("choices") or ())
        kind = "multi_choice" if rec.get("question_type") == "multi_choice" else rec.get("answer_type", "text")
        metadata = rec.get("metadata") or {}
        items.append(EvalItem(str(rec["pid"]), rec.get("query") or _with_choices(rec["question"], choices),
                              str(rec["answer"]), kind, choices, rec.get("precision"), **_image_fields(rec, root),
                              category=metadata.get("task") or rec.get("question_type"), benchmark="mathvista",
                              groups=mathvista_groups(metadata)))
    return items


def load_mathvision(path: Path) -> list[EvalItem]:
    in_data = path.is_file() and path.parent.name == "data"
    root = path.parent.parent if in_data else (path if path.is_dir() else path.parent)
    items = []
    for rec in _read_records(path, "**/test*.parquet"):
        choices = tuple(str(c) for c in rec.get("options") or ())
        items.append(EvalItem(str(rec["id"]), _with_choices(rec["question"], choices), str(rec["answer"]),
                              "multi_choice" if choices else "text", choices, **_image_fields(rec, root),
                              category=rec.get("subject"), benchmark="mathvision",
                              groups=tuple((k, str(rec[k])) for k in ("subject", "level") if rec.get(k) is not None)))
    return items


def _with_choices(question: str, choices: tuple[str, ...]) -> str:
    if not choices:
        return question
    return question + "\nChoices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def spread_items(items: list[EvalItem], n: int) -> list[EvalItem]:
    """The first `n` items taken in turn from each category (round robin, each category in eval-set
    order; a category that runs out drops out of the turn), returned in eval-set order — so `n` items
    cover every kind evenly however the file is sorted, and the same `n` always gives the same items
    (a sweep's answers are cached). All items when n ≥ len(items)."""
    order = [(rank, i) for group in category_indices(items).values() for rank, i in enumerate(group)]
    return [items[i] for i in sorted(i for _, i in sorted(order)[:max(n, 0)])]


def category_indices(items: list[EvalItem]) -> dict[str | None, list[int]]:
    """The indices of `items` per category, each list in eval-set order, categories in order of first use.
    The stratified samplers (`sample_items`, `spread_items`, `experiments.skills.skill_items`) differ in how
    many they take per category, not in how they group."""
    groups: dict[str | None, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.category, []).append(i)
    return groups


def sample_items(items: list[EvalItem], n: int, seed: int = 0) -> list[EvalItem]:
    """A seeded sample of `n` items stratified by category: each category gets its share of `n` in
    proportion to its size (largest remainders round), drawn with `random.Random(seed)`; the sample
    keeps the eval set's order. All items when n ≥ len(items); MergescopeError for n < 1."""
    if n < 1:
        raise MergescopeError(f"--sample {n}: must be ≥ 1")
    if n >= len(items):
        return list(items)
    groups = category_indices(items)
    shares = {c: n * len(g) / len(items) for c, g in groups.items()}
    counts = {c: int(share) for c, share in shares.items()}
    by_remainder = sorted(groups, key=lambda c: (counts[c] - shares[c], str(c)))
    for c in by_remainder[:n - sum(counts.values())]:
        counts[c] += 1
    rng = random.Random(seed)
    chosen = sorted(i for c, g in groups.items() for i in rng.sample(g, counts[c]))
    return [items[i] for i in chosen]
