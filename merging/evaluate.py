"""Eval sets and rule-based scoring (no external judge).

Formats read from local files:
- the project's JSONL: one object per line, {id, question, answer, answer_type, image?, choices?, precision?}
  with answer_type one of multi_choice, integer, float, text, list and `image` relative to the file;
- MathVista testmini in its published layouts: the hub's parquet shards (`data/testmini-*.parquet`,
  images embedded in `decoded_image`) or a JSON file of {pid: record} with `image` paths;
- MATH-Vision: the hub's parquet shards or the GitHub `data/test.jsonl` (+ `images/`).

Scoring follows the benchmarks' own rules. The answer is extracted from the response — the last
`\\boxed{...}`, else the text after the last "the answer is", else after "Answer:", else the whole
response — then compared by type: a multiple-choice letter (or the option's text) against the gold
option; integers exactly; floats rounded to the item's stated number of decimals (MathVista's
`precision`); lists element-wise; free-form text as a number when both sides parse, else as
normalised text (MATH-V's answers). Each scored item keeps its extracted answer.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import MergescopeError

ANSWER_TYPES = ("multi_choice", "integer", "float", "text", "list")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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

    def image(self) -> Image.Image | None:
        if self.image_bytes is not None:
            return Image.open(io.BytesIO(self.image_bytes)).convert("RGB")
        if self.image_path is not None:
            with Image.open(self.image_path) as img:
                return img.convert("RGB")
        return None

    def image_key(self) -> str | None:
        return str(self.image_path) if self.image_path is not None else (self.id if self.image_bytes else None)


# -- loaders ------------------------------------------------------------------------------------
def load_eval_set(spec: str | Path) -> list[EvalItem]:
    """`PATH.jsonl` (project format), `mathvista:PATH` or `mathvision:PATH`."""
    spec = str(spec)
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("mathvista", "mathvision") else ("jsonl", "", spec)
    loader = {"jsonl": load_jsonl, "mathvista": load_mathvista, "mathvision": load_mathvision}[kind]
    items = loader(Path(path))
    if not items:
        raise MergescopeError(f"{spec}: the eval set is empty")
    return items


def _read_records(path: Path, parquet_glob: str) -> list[dict]:
    if path.is_dir():
        shards = sorted(path.glob(parquet_glob)) or sorted(path.glob("*.parquet"))
        if not shards:
            raise MergescopeError(f"{path}: no parquet shards matching {parquet_glob}")
        import pyarrow.parquet as pq
        return [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    if not path.is_file():
        raise MergescopeError(f"{path}: no such eval file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
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
        choices = tuple(rec.get("choices") or ())
        items.append(EvalItem(str(rec["id"]), _with_choices(rec["question"], choices), str(rec["answer"]),
                              rec["answer_type"], choices, rec.get("precision"), **_image_fields(rec, path.parent)))
    return items


def load_mathvista(path: Path) -> list[EvalItem]:
    root = path if path.is_dir() else path.parent
    items = []
    for rec in _read_records(path, "**/testmini-*.parquet"):
        choices = tuple(rec.get("choices") or ())
        kind = "multi_choice" if rec.get("question_type") == "multi_choice" else rec.get("answer_type", "text")
        precision = rec.get("precision")
        items.append(EvalItem(str(rec["pid"]), rec.get("query") or _with_choices(rec["question"], choices),
                              str(rec["answer"]), kind, choices,
                              int(precision) if precision is not None else None, **_image_fields(rec, root)))
    return items


def load_mathvision(path: Path) -> list[EvalItem]:
    in_data = path.is_file() and path.parent.name == "data"
    root = path.parent.parent if in_data else (path if path.is_dir() else path.parent)
    items = []
    for rec in _read_records(path, "**/test*.parquet"):
        choices = tuple(rec.get("options") or ())
        items.append(EvalItem(str(rec["id"]), _with_choices(rec["question"], choices), str(rec["answer"]),
                              "multi_choice" if choices else "text", choices, **_image_fields(rec, root)))
    return items


def _with_choices(question: str, choices: tuple[str, ...]) -> str:
    if not choices:
        return question
    return question + "\nChoices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


# -- extraction ---------------------------------------------------------------------------------
def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(response: str) -> str:
    """The final answer inside a free-form response (before type-specific normalisation)."""
    boxed = _last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    for marker in (r"the (?:final |correct )?answer is", r"answer\s*:"):
        found = list(re.finditer(marker, response, flags=re.IGNORECASE))
        if found:
            tail = response[found[-1].end():].strip()
            return tail.split("\n")[0].strip().rstrip(".").strip(" :$*")
    return response.strip()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def _normalise(text: str) -> str:
    text = re.sub(r"\\(left|right|,|;|!|text\{([^}]*)\})", r"\2", text)
    return re.sub(r"[\s$]", "", text).rstrip(".").lower()


def _choice_letter(extracted: str, choices: tuple[str, ...]) -> str | None:
    match = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?(?:\s.*)?", extracted.strip(), flags=re.DOTALL)
    if match and LETTERS.index(match.group(1).upper()) < len(choices):
        return match.group(1).upper()
    norm = _normalise(extracted)
    for i, choice in enumerate(choices):
        if _normalise(choice) == norm:
            return LETTERS[i]
    mentioned = [i for i, c in enumerate(choices) if _normalise(c) and _normalise(c) in norm]
    return LETTERS[mentioned[0]] if len(mentioned) == 1 else None


def _gold_letter(item: EvalItem) -> str | None:
    answer = item.answer.strip()
    if len(answer) == 1 and answer.upper() in LETTERS[:len(item.choices)]:
        return answer.upper()
    for i, choice in enumerate(item.choices):
        if _normalise(choice) == _normalise(answer):
            return LETTERS[i]
    return None


def _same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def score(response: str, item: EvalItem) -> tuple[str, bool]:
    """(extracted answer, correct) for a model response to `item`."""
    extracted = extract_answer(response)
    kind = item.answer_type
    if kind == "multi_choice":
        letter = _choice_letter(extracted, item.choices)
        return (letter or extracted), letter is not None and letter == _gold_letter(item)
    if kind in ("integer", "float"):
        numbers = _numbers(extracted)
        if not numbers:
            return extracted, False
        got, gold = numbers[0], float(item.answer)
        if kind == "integer":
            return str(int(round(got))), got == round(got) and int(got) == int(round(gold))
        places = item.precision if item.precision is not None else 2
        return str(round(got, places)), round(got, places) == round(gold, places)
    if kind == "list":
        got, gold = _numbers(extracted), _numbers(item.answer)
        return str(got), len(got) == len(gold) and all(_same_number(a, b) for a, b in zip(got, gold))
    got, gold = _numbers(extracted), _numbers(item.answer)
    if len(got) == 1 and len(gold) == 1 and re.fullmatch(r"[-\d.,\s$]+", item.answer.strip()):
        return extracted, _same_number(got[0], gold[0])
    return extracted, _normalise(extracted) == _normalise(item.answer)
