"""MATH-Vision's published scoring rules, restated (read, not copied, from github.com/mathllm/MATH-V,
`evaluation/evaluate.py` and `evaluation/utils.py`). Its scorer uses no model, so the chain is the
benchmark's own except in one step: where it compares values with `eval(str(latex2sympy(x)))` (running
the model's text through Python's `eval`), this module uses the project's bounded evaluator,
`merging.evals.numbers.value_of` (fractions, roots, π, powers; not trigonometry, logarithms or matrices, which
then compare as text only).

Extraction: a response ending " C." or " (C)." or starting "C\\n", "(C)\\n", "(C) C\\n" is the letter C; a
number after the last "is " is the answer; without `\\boxed{` the text after the last "the final answer
is" / "the answer is" / "the correct answer is" / "the answer should be" (also capitalised), up to the
line's end or ". "; of several boxes the last. Then `find_math_answer`: lower case, the box's content,
the part after the last "=" or "\\approx", spaces, `\\text`, `\\left`/`\\right`, degrees, some units
(m^3, units, km), `\\%`, `$` removed, `\\tfrac`/`\\dfrac` as `\\frac`, "0.5" as `\\frac{1}{2}`, "a/b" as
`\\frac{a}{b}`. Verdict (`is_equal`), against the gold letter or the gold option's text: equal after
lower-casing and stripping, or tuples/lists equal element-wise after rounding each to 2 decimals, or
values equal after rounding to 2 decimals.
"""

from __future__ import annotations

import re

from merging.evals.eval_sets import LETTERS, EvalItem
from merging.evals.numbers import value_of
from merging.evals.verdict import Verdict

__all__ = ["extract", "find_math_answer", "is_equal", "judge"]

_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
_UNIT_WORDS = ("{m}^3", "m^3", "{units}", "units", "{km}", "km")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _braced_roots(s: str) -> str:
    """`\\sqrt2` → `\\sqrt{2}` (one character taken as the radicand, as MATH-V does)."""
    head, *parts = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if not p or p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in parts)


def _braced_fractions(s: str) -> str:
    """`\\frac12` → `\\frac{1}{2}`, `\\frac1{2}` → `\\frac{1}{2}`; the text unchanged when a fraction is cut short."""
    head, *parts = s.split("\\frac")
    out = [head]
    for p in parts:
        if p and p[0] == "{":
            out.append("\\frac" + p)
        elif len(p) < 2:
            return s
        else:
            out.append("\\frac{" + p[0] + "}" + (p[1] if p[1] == "{" else "{" + p[1] + "}") + p[2:])
    return "".join(out)


def _slash_fraction(s: str) -> str:
    parts = s.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"-?\d+", p) and str(int(p)) == p for p in parts):
        return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return s


def _strip(s: str) -> str:
    """MATH-V's `_strip_string`."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""),
                     ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", "")):
        s = s.replace(old, new)
    s = s.split("\\text{ ")[0].replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    for sign in ("=", "\\approx"):
        if len(s.split(sign)) == 2:
            s = s.split(sign)[-1]
    s = _braced_roots(s) if "sqrt" in s else s
    s = s.replace(" ", "")
    s = _braced_fractions(s) if "sqrt" in s else s  # (sic) MATH-V braces fractions only beside a root
    return _slash_fraction("\\frac{1}{2}" if s == "0.5" else s)


def find_math_answer(s: str) -> str:
    """MATH-V's `find_math_answer`: the (last, greedy) box's content, cleaned, lower case."""
    s = s.lower().replace("{}", "")
    boxed = re.findall(r"oxed{(.*)}", s, flags=re.S)
    answer = boxed[-1] if boxed else s
    if "}" in answer and ("{" not in answer or answer.find("}") < answer.find("{")):
        answer = answer.split("}")[0]
    answer = answer.split("=")[-1].split("\\approx")[-1]
    for old, new in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
                     ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), *((u, "") for u in _UNIT_WORDS)):
        answer = answer.replace(old, new)
    return _strip(answer)


def extract(response: str) -> str:
    """MATH-V's `model_answer` for a response (evaluate.py's rules, then `find_math_answer`)."""
    answer = response.strip()
    for c in "ABCDE":
        if answer.endswith((f" {c}.", f" ({c}).")) or answer.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n")):
            answer = c
    after_is = answer.split("is ")[-1].rstrip(".")
    answer = after_is if _is_number(after_is) else answer
    if "oxed{" not in answer:
        for flag in _FLAGS:
            for variant in (flag, flag.replace("the", "The")):
                cut = answer.split(variant)[-1].strip()
                answer = cut.split("\n")[0].split(". ")[0] if variant in answer else cut
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer)
    for c in "abcde":
        answer = answer.replace(f"({c})", c).replace("{" + c + "}", c)
    return answer.rstrip(".").lstrip(":").strip()


def _rounded(text: str) -> float:
    """MATH-V's `round(eval(str(latex2sympy(x))), 2)`, by `value_of`; ValueError when it has no value."""
    value = value_of(text, units=False)  # latex2sympy reads "12cm" as 12·c·m, which has no value
    if value is None:
        raise ValueError(text)
    return round(float(value), 2)


def _shown(text: str) -> str:
    """An element as `str(round(eval(...), 2))` writes it: an integer without ".0" unless written with a point."""
    value = _rounded(text)
    return str(int(value)) if value.is_integer() and "." not in text else str(value)


def _tuple(s: str) -> str:
    """MATH-V's `eval_tuple`: "(a, b)" / "[a, b]" with each element's value rounded to 2 decimals."""
    parts = s[1:-1].split(",")
    if len(s) < 2 or (s[0], s[-1]) not in (("(", ")"), ("[", "]")) or len(parts) < 2:
        return s
    try:
        inner = ",".join(p if "infty" in p or p in ("a", "-a") else _shown(p) for p in parts)
    except (ValueError, OverflowError):
        return s
    return s[0] + inner + s[-1]


def is_equal(gold: str, answer: str) -> bool:
    """MATH-V's `is_equal`. Never raises."""
    gold, answer = gold.lower(), answer.lower()
    if not gold.replace(" ", "") or not answer.replace(" ", ""):
        return False
    if gold.strip() == answer.strip() or _tuple(gold) == _tuple(answer):
        return True
    try:
        return _rounded(_tuple(gold)) == _rounded(_tuple(answer))
    except (ValueError, OverflowError):
        return False


def judge(response: str, item: EvalItem) -> Verdict:
    """The official MATH-Vision verdict: right when the extraction equals the gold letter or the gold
    option's text under `is_equal`."""
    answer = extract(response)
    options = list(LETTERS[:len(item.choices)])
    gold_value = item.choices[options.index(item.answer)] if item.choices and item.answer in options else ""
    return Verdict(answer, is_equal(item.answer, answer) or is_equal(gold_value, answer), "mathvision")
