"""Judge a model's response to an eval item, two ways: `strict` (credit only an answer it reads) and
`official` (the benchmark's published rule chain, `merging.evals.mathvista` / `merging.evals.mathvision`).

Sources, read for the rules below (no code copied):
- MathVista's evaluator (github.com/lupantech/MathVista, `evaluation/extract_answer.py` and
  `evaluation/calculate_score.py`): a multiple-choice extraction that is a letter — or has one in
  parentheses — maps to its option; integers compare as `int(float(x))`, floats rounded to the item's
  `precision`. Strict keeps the letter rules and leaves out the nearest-option fallback.
- MATH-Vision's evaluation (github.com/mathllm/MATH-V, `evaluation/evaluate.py`, `utils.py`): the last
  `\\boxed{}`, else the text after "the final answer is" / "the answer is" / "the correct answer is" /
  "the answer should be"; `\\left`, `\\right`, `\\text{}`, units, `^\\circ`, `\\%` and `\\dfrac` are
  normalised away; an answer is right when it equals the gold letter *or* the gold option's text.
- Values (`merging.evals.numbers`): exact fractions where both sides are exact, else a relative tolerance.
- Free-form expressions are compared with Hugging Face's math-verify (github.com/huggingface/Math-Verify)
  in a worker process (`merging.evals.mathverify`), so a pathological answer costs a bounded time in any thread.
"""

from __future__ import annotations

import re
from fractions import Fraction

from merging.evals import mathvision, mathvista
from merging.evals.eval_sets import LETTERS, EvalItem
from merging.evals.mathverify import equivalent
from merging.evals.normalise import key as _key
from merging.evals.normalise import normalise
from merging.evals.numbers import Value, identical, last_number, same, to_number, value_of
from merging.evals.verdict import Verdict

__all__ = ["MODES", "Verdict", "extract_answer", "judge", "judge_both", "normalise", "to_number"]
MODES = ("strict", "official")


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


# an answer that declines ("No idea.", "I cannot tell if it is yes") never names the option it mentions
_REFUSAL = re.compile(r"\b(?:cannot|can ?not|can't|unable|impossible|no idea|not sure|don't know|do not know|"
                      r"not enough information|insufficient|sorry)\b", re.IGNORECASE)


def _option_from(text: str, choices: tuple[str, ...]) -> tuple[str, str] | None:
    """(letter, rule) for an answer naming an option by its text or by its value (units allowed): the
    value of a short answer or its last number; in a longer sentence, its last number only when that
    is the one option value the sentence mentions ("The angle BOC measures 145 degrees in this figure")."""
    wanted = _key(text)
    exact = [i for i, c in enumerate(choices) if _key(c) == wanted]
    if exact:
        return LETTERS[exact[0]], "option text"
    words = normalise(text).lower()
    mentioned = [i for i, c in enumerate(choices) if normalise(c)
                 and re.search(rf"(?<![\w.]){re.escape(normalise(c).lower())}(?![\w.])", words)]
    value = value_of(text) if len(text) < 40 else None
    if value is None and (last := last_number(text)):
        value = last[1]
    if value is not None:
        hits = [i for i, c in enumerate(choices) if (v := value_of(c)) is not None and same(value, v)]
        if len(hits) == 1 and (len(text) < 40 or mentioned == hits):
            return LETTERS[hits[0]], "option value"
    if len(mentioned) == 1 and to_number(choices[mentioned[0]]) is None and not _REFUSAL.search(words):
        return LETTERS[mentioned[0]], "option text"
    return None


def _gold_letter(item: EvalItem) -> str | None:
    answer = item.answer.strip()
    if len(answer) == 1 and answer.upper() in LETTERS[:len(item.choices)]:
        return answer.upper()
    found = _option_from(answer, item.choices)
    return found[0] if found else None


def _stated_letter(text: str, choices: tuple[str, ...], anywhere: bool) -> str | None:
    """A letter in parentheses inside the answer text ("choice (B)", "therefore (B)"): MathVista's rule
    (`calculate_score.py` takes the first parenthesised letter of the extraction); over a whole response
    (`anywhere`) the last upper-case one, since a response weighs options before it concludes."""
    valid = LETTERS[:len(choices)]
    stated = [s.upper() for s in re.findall(r"\(([A-Z])\)" if anywhere else r"\(([a-zA-Z])\)", text)]
    stated = [s for s in stated if s in valid]
    return (stated[-1] if anywhere else stated[0]) if stated else None


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
    if letter is None and (stated := _stated_letter(text, item.choices, anywhere=how is None)):
        letter, rule = stated, "last choice" if how is None else "letter in parentheses"
    if letter is None:
        return Verdict(text, False, "no answer")
    return Verdict(letter, gold is not None and letter == gold, rule)


# -- free-form ----------------------------------------------------------------------------------
def _number_in(response: str) -> tuple[str, Value | None]:
    """(the extracted text, its value): the extraction's value, else its last number (None: no number,
    or a ± that makes it two answers)."""
    text = _extract(response)[0]
    value = value_of(text)
    if value is None and (last := last_number(text)):
        value = last[1]
    return text, value


def _judge_number(response: str, item: EvalItem) -> Verdict:
    text, value = _number_in(response)
    if value is None:
        return Verdict(normalise(text), False, "no answer")
    gold = value_of(item.answer)
    if gold is None:
        raise ValueError(f"item {item.id}: the answer {item.answer!r} is not a number")
    integral = same(value, round(value))
    if item.answer_type == "integer":
        return Verdict(str(round(value)) if integral else str(float(value)), integral and round(value) == round(gold),
                       "numeric")
    places = item.precision if item.precision is not None else 2
    as_percent = "%" in text and same(round(float(value) / 100, places), round(float(gold), places))
    ok = same(round(float(value), places), round(float(gold), places)) or as_percent
    return Verdict(str(round(float(value), places)), ok, "numeric")


def _judge_list(response: str, item: EvalItem) -> Verdict:
    text = normalise(_extract(response)[0])
    got = [value_of(p) for p in re.split(r"[,;]\s*", text.strip("[]() "))]
    gold = [value_of(p) for p in re.split(r"[,;]\s*", normalise(item.answer).strip("[]() "))]
    if not got or None in got or None in gold:
        return Verdict(text, False, "no answer")
    return Verdict(str([float(v) for v in got]), len(got) == len(gold) and all(map(same, got, gold)), "list")


def _judge_text(response: str, item: EvalItem) -> Verdict:
    text, how = _extract(response)
    shown = normalise(text)
    if _key(text) == _key(item.answer):
        return Verdict(shown, True, "text")
    gold_value = value_of(item.answer)
    if gold_value is not None:  # an exact check first: math-verify never sees two numbers
        value = value_of(text)
        last = last_number(text) if value is None else None
        if last is not None:
            shown, value = last
        if value is not None or last is not None:  # a ± (value None) is two answers: wrong
            return Verdict(shown, value is not None and same(value, gold_value), "numeric")
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*", normalise(item.answer)):
        return Verdict(shown, False, "text")
    verdict = equivalent(item.answer, text if how else response)
    identity = identical(item.answer, text) if how else None
    if identity is not None and identity != verdict:  # math-verify's reported mistakes on identities
        return Verdict(shown, identity, "identity check")
    if verdict is None:
        return Verdict(shown, False, "math-verify: no verdict")
    return Verdict(shown, verdict, "math-verify")


_STRICT = {"multi_choice": _judge_choice, "integer": _judge_number, "float": _judge_number,
           "list": _judge_list, "text": _judge_text}


# -- official: each benchmark's published chain -------------------------------------------------
def rule_extraction(response: str, item: EvalItem) -> str:
    """What stands in for MathVista's GPT-4 extractor (`extract_answer.py` asks GPT-4 for the final
    answer when its quick rules find none): the strict judge's own extraction — for multiple choice the
    letter it finds, else the answer text it read (MathVista then maps that to the nearest option), and
    the letter label a response opens with ("C) …") even when no option has it, as GPT-4 extracts it; for
    numbers the value it reads (the last number of the concluding sentence), written as Python writes it;
    else the extracted text. Never raises."""
    if item.answer_type == "multi_choice" and item.choices:
        opening = re.match(r"\s*\(?([A-Z])\)", response)  # "C) …", "(E) None of the above": the label given,
        return opening.group(1) if opening else _judge_choice(response, item).extracted  # valid or not
    if item.answer_type in ("integer", "float"):
        text, value = _number_in(response)
        if value is None:
            return normalise(text)
        return str(value.numerator) if isinstance(value, Fraction) and value.denominator == 1 else str(float(value))
    return normalise(_extract(response)[0])


def _official(response: str, item: EvalItem) -> Verdict:
    if item.benchmark == "mathvision":
        return mathvision.judge(response, item)
    quick = mathvista.quick_extraction(response, item)
    extraction = quick if quick is not None else rule_extraction(response, item)
    return mathvista.verdict(extraction, item, "mathvista quick" if quick is not None else "mathvista rules")


def judge(response: str, item: EvalItem, mode: str = "strict") -> Verdict:
    """Judge `response` (str, the model's full answer) against `item` (an `EvalItem`).

    mode "strict" (the default, what every caller got before modes existed) credits only an answer it
    reads: by answer_type, multi_choice (an explicit final choice wins over letters seen earlier; option
    text or value maps to its letter; a letter in parentheses in the concluding answer counts, as in
    MathVista's rule; a refusal or an empty answer is never any option), integer and float (the value of
    the extracted answer, else its last number, at the item's precision — 2 decimals when unset; a ±
    is never one of its values), list (element-wise), text (normalised text, else numbers compared
    exactly — `merging.evals.numbers.same` —, else math-verify equivalence, `merging.evals.mathverify.equivalent`,
    checked against `merging.evals.numbers.identical`; "math-verify: no verdict" and wrong when it timed out).

    mode "official" reproduces the benchmark's published scorer: MATH-Vision's `evaluation/` rules for
    items with `benchmark == "mathvision"` (`merging.evals.mathvision`), MathVista's chain for every other item
    (`merging.evals.mathvista`), whose GPT-4 extraction step is replaced by `rule_extraction`. It credits what
    the benchmark credits — a refusal scored as the nearest option is right when that option is the gold.

    Never raises on any response; raises ValueError for an unknown mode or when an integer/float item's
    answer is not a number, KeyError for an answer_type outside `merging.evals.eval_sets.ANSWER_TYPES`."""
    if mode == "official":
        return _official(response, item)
    if mode != "strict":
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    return _STRICT[item.answer_type](response, item)


def judge_both(response: str, item: EvalItem) -> dict[str, Verdict]:
    """{"strict": judge(..., "strict"), "official": judge(..., "official")} — what sweeps report side by side."""
    return {mode: judge(response, item, mode) for mode in MODES}
