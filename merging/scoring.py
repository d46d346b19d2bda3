"""Judge a model's response to an eval item: extract its final answer, normalise it, compare by type.

Sources, read for the rules below (no code copied):
- MathVista's evaluator (github.com/lupantech/MathVista, `evaluation/extract_answer.py` and
  `evaluation/calculate_score.py`): a multiple-choice extraction that is a letter maps to its option,
  else to the option whose text it matches; integers compare as `int(float(x))`, floats rounded to the
  item's `precision`, lists element-wise.
- MATH-Vision's evaluation (github.com/mathllm/MATH-V, `evaluation/evaluate.py`, `utils.py`): the last
  `\\boxed{}`, else the text after "the final answer is" / "the answer is" / "the correct answer is" /
  "the answer should be"; `\\left`, `\\right`, `\\text{}`, units, `^\\circ`, `\\%` and `\\dfrac` are
  normalised away; an answer is right when it equals the gold letter *or* the gold option's text.
- Free-form expressions are compared with Hugging Face's math-verify (github.com/huggingface/Math-Verify)
  in a worker process (`merging.mathverify`), so a pathological answer costs a bounded time in any thread.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import unicodedata
from dataclasses import dataclass

from .evaluate import LETTERS, EvalItem
from .mathverify import equivalent

__all__ = ["Verdict", "extract_answer", "judge", "normalise", "to_number"]


@dataclass(frozen=True)
class Verdict:
    """What `judge` decided: the extracted answer (as people read it in results), whether it is right,
    and the rule that decided ("boxed", "final choice", "letter", "option text", "option value",
    "numeric", "math-verify", "text", "list", "no answer")."""
    extracted: str
    correct: bool
    rule: str


# -- normalisation ------------------------------------------------------------------------------
_TYPO = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-",
                       "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2007": " ", "\u200b": "",
                       "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00d7": "*", "\u00b7": "*"})
_LATEX_SUBS = [
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)"), r"\\frac\1{\2}"),
    (re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname|mbox)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\(?:left|right|displaystyle)\b|\\[,;:! ]"), ""),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\u00b0|\\degree"), ""),
    (re.compile(r"\\%|%"), ""),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),
    (re.compile(r"\\\$|\$"), ""),
]


def normalise(text: str) -> str:
    """Shared clean-up: NFKC (full-width digits, ligatures), unicode minus/dashes to '-', odd spaces,
    thousands separators, `\\dfrac`/`\\tfrac`/`\\frac12`, `\\text{}`/`\\mathrm{}`, `\\left`/`\\right`,
    degree and percent signs, `$`; trims spaces and trailing periods. Case is kept."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPO)
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()


def _key(text: str) -> str:
    """Comparison key for text answers: normalised, lower case, no spaces or outer brackets/quotes."""
    return re.sub(r"\s+", "", normalise(text)).lower().strip("'\"*")


# -- numbers ------------------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_NUM_TOKEN = r"(?:\d+(?:\.\d+)?|\.\d+)"
_UNIT = re.compile(r"(?<![a-zA-Z])\s*(?:(?!pi\b)[a-zA-Z]{1,6}(?:\^?\{?[23]\}?)?"
                   r"|units?|square units|cubic units|degrees?)\s*$")


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in ("pi", "e"):
        return math.pi if node.id == "pi" else math.e
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" \
            and len(node.args) == 1:
        return math.sqrt(_eval(node.args[0]))
    raise ValueError("not arithmetic")


def to_number(text: str) -> float | None:
    """The value of a whole answer written as plain arithmetic — `-5`, `1,000`, `0.5`, `1/2`,
    `\\frac{1}{2}`, `2\\sqrt{3}`, `\\frac{\\pi}{2}`, `3 cm`, `25%` (as 25) — or None when it is not one
    (variables, intervals, words). Never raises."""
    s = normalise(text)
    if not s or len(s) > 100:
        return None
    s = _UNIT.sub("", s) if re.search(r"\d\s*[a-zA-Z]", s) and not re.search(r"\\[a-z]", s) else s
    for _ in range(3):
        s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", s)
    s = re.sub(r"\\sqrt\s*(\d+)", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    s = s.replace("{", "(").replace("}", ")")
    s = re.sub(r"(\d|\))\s*(?=sqrt|pi|\()", r"\1*", s)
    if not re.fullmatch(r"[\d.+\-*/() sqrtpie]+", s) or not re.search(r"\d|pi", s):
        return None
    try:
        value = _eval(ast.parse(s, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, TypeError):
        return None
    return value if math.isfinite(value) else None


_LAST_NUMBER = re.compile(
    r"-?\s*\\frac\s*\{[^{}]*\}\s*\{[^{}]*\}|-?\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?(?![\d.])"
    rf"|-?\d*\\sqrt\s*\{{[^{{}}]*\}}|-?{_NUM_TOKEN}")


def _last_number(text: str) -> tuple[str, float] | None:
    """The last number (or fraction/root) in free text: a response concludes with its answer."""
    for match in reversed(list(_LAST_NUMBER.finditer(normalise(text)))):
        value = to_number(match.group(0))
        if value is not None:
            return match.group(0).replace(" ", ""), value
    return None


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


# -- extraction ---------------------------------------------------------------------------------
_MARKERS = re.compile(
    r"(?:the\s+)?(?:final\s+|correct\s+|right\s+)?(?:answer|option|choice)\s*(?:is|should\s+be|would\s+be|=)"
    r"|(?:final\s+)?answer\s*:|\*\*answer\*\*\s*:?", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _extract(response: str) -> tuple[str, str | None]:
    """(answer text, how it was found: "boxed", "marker" or None for the whole response)."""
    boxed = _last_boxed(response)
    if boxed is not None:
        return boxed.strip(), "boxed"
    found = list(_MARKERS.finditer(response))
    if found:
        lines = [ln.strip(" \t:*$") for ln in response[found[-1].end():].split("\n")]
        tail = next((ln for ln in lines if ln), "")
        tail = re.split(r"(?<=[^\d\s])\.\s|\.\s+(?=[A-Z])", tail)[0]
        return tail.strip().rstrip(".").strip(" :*$"), "marker"
    return response.strip(), None


def extract_answer(response: str) -> str:
    """The final answer inside a free-form response, before type-specific comparison: the last
    `\\boxed{...}`, else the first non-empty line after the last "the (final/correct) answer is",
    "answer:", "the correct option is", …, else the whole response (stripped). Never raises."""
    return _extract(response)[0]


# -- multiple choice ----------------------------------------------------------------------------
def _letter_from(text: str, choices: tuple[str, ...]) -> str | None:
    """A letter written as a choice: "C", "(C)", "C.", "C)", "(C) 6", "C: 6" — or "C 6" when the rest is
    option C's text (a bare letter followed by a word is otherwise text: "A square.")."""
    valid = LETTERS[:len(choices)]
    m = re.fullmatch(r"\(([A-Z])\)(?:\s.*)?|([A-Z])(?:[.:)](?:\s.*)?)?|option\s+([A-Z])", text,
                     re.DOTALL | re.IGNORECASE)
    if m:
        letter = next(g for g in m.groups() if g).upper()
        if letter in valid and (text[0] == "(" or text.lower().startswith("option") or text[0].isupper()):
            return letter
    m = re.fullmatch(r"([A-Z])\s+(.+)", text, re.DOTALL)
    if m and m.group(1) in valid and _key(m.group(2)) == _key(choices[valid.index(m.group(1))]):
        return m.group(1)
    return None


def _option_from(text: str, choices: tuple[str, ...]) -> tuple[str, str] | None:
    """(letter, rule) for an answer naming an option by its text or by its value (units allowed)."""
    key = _key(text)
    exact = [i for i, c in enumerate(choices) if _key(c) == key]
    if exact:
        return LETTERS[exact[0]], "option text"
    value = to_number(text) if len(text) < 40 else None
    if value is None and len(text) < 40 and (last := _last_number(text)):
        value = last[1]
    if value is not None:
        hits = [i for i, c in enumerate(choices) if (v := to_number(c)) is not None and _same(value, v)]
        if len(hits) == 1:
            return LETTERS[hits[0]], "option value"
    words = normalise(text).lower()
    mentioned = [i for i, c in enumerate(choices) if normalise(c)
                 and re.search(rf"(?<![\w.]){re.escape(normalise(c).lower())}(?![\w.])", words)]
    if len(mentioned) == 1 and to_number(choices[mentioned[0]]) is None:
        return LETTERS[mentioned[0]], "option text"
    return None


def _gold_letter(item: EvalItem) -> str | None:
    answer = item.answer.strip()
    if len(answer) == 1 and answer.upper() in LETTERS[:len(item.choices)]:
        return answer.upper()
    found = _option_from(answer, item.choices)
    return found[0] if found else None


def _judge_choice(response: str, item: EvalItem) -> Verdict:
    text, how = _extract(response)
    text = normalise(text)
    gold = _gold_letter(item)
    rule_for_letter = {"boxed": "boxed", "marker": "final choice"}.get(how, "letter")
    exact = [i for i, c in enumerate(item.choices) if _key(c) == _key(text)]
    letter = LETTERS[exact[0]] if exact else _letter_from(text, item.choices)
    rule = "option text" if exact else rule_for_letter
    if letter is None and (found := _option_from(text, item.choices)):
        letter, rule = found
    if letter is None and how is None:
        stated = re.findall(r"\(([A-Z])\)", text)
        stated = [s for s in stated if s in LETTERS[:len(item.choices)]]
        letter, rule = (stated[-1], "last choice") if stated else (None, rule)
    if letter is None:
        return Verdict(text, False, "no answer")
    return Verdict(letter, gold is not None and letter == gold, rule)


# -- free-form ----------------------------------------------------------------------------------
def _judge_number(response: str, item: EvalItem) -> Verdict:
    text = _extract(response)[0]
    value = to_number(text)
    if value is None:
        last = _last_number(text)
        if last is None:
            return Verdict(normalise(text), False, "no answer")
        value = last[1]
    gold = float(item.answer)
    if item.answer_type == "integer":
        ok = _same(value, round(value)) and round(value) == round(gold)
        return Verdict(str(round(value)) if _same(value, round(value)) else str(value), ok, "numeric")
    places = item.precision if item.precision is not None else 2
    as_percent = "%" in text and round(value / 100, places) == round(gold, places)
    ok = round(value, places) == round(gold, places) or as_percent
    return Verdict(str(round(value, places)), ok, "numeric")


def _judge_list(response: str, item: EvalItem) -> Verdict:
    text = normalise(_extract(response)[0])
    got = [to_number(p) for p in re.split(r"[,;]\s*", text.strip("[]() "))]
    gold = [to_number(p) for p in re.split(r"[,;]\s*", normalise(item.answer).strip("[]() "))]
    if not got or None in got or None in gold:
        return Verdict(text, False, "no answer")
    return Verdict(str(got), len(got) == len(gold) and all(_same(a, b) for a, b in zip(got, gold)), "list")


def _judge_text(response: str, item: EvalItem) -> Verdict:
    text, how = _extract(response)
    shown = normalise(text)
    if _key(text) == _key(item.answer):
        return Verdict(shown, True, "text")
    gold_value = to_number(item.answer)
    if gold_value is not None:
        value = to_number(text)
        if value is None and (last := _last_number(text)):
            shown, value = last
        if value is not None:
            return Verdict(shown, _same(value, gold_value), "numeric")
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*", normalise(item.answer)):
        return Verdict(shown, False, "text")
    verdict = equivalent(item.answer, text if how else response)
    if verdict is None:
        return Verdict(shown, False, "math-verify: no verdict")
    return Verdict(shown, verdict, "math-verify")


def judge(response: str, item: EvalItem) -> Verdict:
    """Judge `response` (str, the model's full answer) against `item` (an `EvalItem`) by its
    answer_type: multi_choice (an explicit final choice wins over letters seen earlier; option text or
    value maps to its letter; a bare response equal to an option's text is that option), integer and
    float (the value of the extracted answer, else the last number of the response, at the item's
    precision — 2 decimals when unset), list (element-wise), text (normalised text, else numbers, else
    math-verify equivalence, `merging.mathverify.equivalent`; "math-verify: no verdict" and wrong when it
    timed out). Never raises on any response; raises ValueError when an integer/float item's answer is
    not a number and KeyError for an answer_type outside `merging.evaluate.ANSWER_TYPES`."""
    judges = {"multi_choice": _judge_choice, "integer": _judge_number, "float": _judge_number,
              "list": _judge_list, "text": _judge_text}
    return judges[item.answer_type](response, item)
