"""Eval items checked when a set is loaded, so a bad field is one line before any answer is generated,
and the categories the benchmarks report their scores by."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from merging.errors import MergescopeError
from merging.evals.numbers import value_of

__all__ = ["ANSWER_TYPES", "BENCHMARKS", "LETTERS", "MATHVISTA_SKILLS", "MATHVISTA_TASKS", "checked",
           "mathvista_groups"]

ANSWER_TYPES = ("multi_choice", "integer", "float", "text", "list")
BENCHMARKS = (None, "mathvista", "mathvision")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_PRECISION = 15  # decimals a double carries

# MathVista's paper (Lu et al. 2024, §3 and its score tables): tasks and mathematical-reasoning skills
MATHVISTA_TASKS = {"figure question answering": "FQA", "geometry problem solving": "GPS",
                   "math word problem": "MWP", "textbook question answering": "TQA",
                   "visual question answering": "VQA"}
MATHVISTA_SKILLS = {"algebraic reasoning": "ALG", "arithmetic reasoning": "ARI", "geometry reasoning": "GEO",
                    "logical reasoning": "LOG", "numeric commonsense": "NUM", "scientific reasoning": "SCI",
                    "statistical reasoning": "STA"}


def mathvista_groups(metadata: dict) -> tuple[tuple[str, str], ...]:
    """(dimension, value) pairs of a MathVista record's `metadata`: its task and skills by the paper's
    abbreviations (FQA…, ALG…; an unknown name kept as written) and its language."""
    groups = []
    if metadata.get("task"):
        groups.append(("task", MATHVISTA_TASKS.get(metadata["task"], metadata["task"])))
    groups += [("skill", MATHVISTA_SKILLS.get(s, s)) for s in metadata.get("skills") or ()]
    if metadata.get("language"):
        groups.append(("language", str(metadata["language"])))
    return tuple(groups)


def _precision(value, where: str) -> int | None:
    """An int from `precision` written as 1 or 1.0 (MathVista's parquet stores floats); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 0 <= value <= MAX_PRECISION:
        raise MergescopeError(f"{where}: precision must be a whole number of decimals 0–{MAX_PRECISION} "
                              f"(1 or 1.0), got {value!r}")
    return int(value)


def _check_answer(item, where: str) -> None:
    answer = item.answer.strip()
    if not answer:
        raise MergescopeError(f"{where}: the answer is empty")
    if item.answer_type in ("integer", "float"):
        value = value_of(answer)
        whole = isinstance(value, Fraction) and value.denominator == 1
        if value is None or item.answer_type == "integer" and not whole:
            kind = "an integer" if item.answer_type == "integer" else "a number"
            raise MergescopeError(f"{where}: answer {item.answer!r} is not {kind}")
    if item.answer_type == "multi_choice":
        if len(item.choices) < 2 or len(item.choices) > len(LETTERS):
            raise MergescopeError(f"{where}: a multi_choice item needs 2–{len(LETTERS)} choices, "
                                  f"got {len(item.choices)}")
        if any(not c.strip() for c in item.choices):
            raise MergescopeError(f"{where}: a choice is empty")
        if item.answer not in item.choices and answer.upper() not in list(LETTERS[:len(item.choices)]):
            raise MergescopeError(f"{where}: answer {item.answer!r} is neither one of the choices nor a letter "
                                  f"A–{LETTERS[len(item.choices) - 1]}")
    elif item.choices:
        raise MergescopeError(f"{where}: choices are given but answer_type is {item.answer_type!r}, not multi_choice")


def checked(item, where: str):
    """`item` (an `EvalItem`) with its precision as an int, after checking its fields; MergescopeError
    (one line, prefixed by `where`) for an answer_type outside ANSWER_TYPES, a benchmark outside
    BENCHMARKS, a precision that is not a whole number 0–15, an empty answer, an integer/float answer
    that is not one, or multiple choice with fewer than 2 choices, an empty choice or a gold answer
    that is neither a choice nor a valid letter."""
    if item.answer_type not in ANSWER_TYPES:
        raise MergescopeError(f"{where}: answer_type {item.answer_type!r} is not one of {ANSWER_TYPES}")
    if item.benchmark not in BENCHMARKS:
        raise MergescopeError(f"{where}: benchmark {item.benchmark!r} is not one of {BENCHMARKS[1:]} (or absent)")
    precision = _precision(item.precision, where)
    _check_answer(item, where)
    return dataclasses.replace(item, precision=precision)
