"""MathVista's published scoring chain, restated rule by rule (read, not copied, from
github.com/lupantech/MathVista: `evaluation/extract_answer.py`, `evaluation/calculate_score.py`,
`evaluation/utilities.py`):

1. extraction (`extract_answer`): an empty response extracts as ""; a multiple-choice response that is
   exactly one option's text is that text; an integer item's response that `int()` reads is that
   integer, a float item's that `float()` reads is `str(float(response))`; the quick rule takes `X` from
   `The answer is "X".`; everything else goes to GPT-4 with a few-shot prompt. That last step needs a
   model this project does not call: `merging.evals.scoring.rule_extraction` stands in for it (the strict
   judge's own reading of the final answer).
2. normalisation (`normalize_extracted_answer`): for multiple choice, the first letter in parentheses
   anywhere in the extraction is the extraction; a valid letter becomes its option's text; anything
   else — an empty extraction, a refusal, a sentence — becomes the option nearest to it by Levenshtein
   edit distance (`get_most_similar`, the first of equally near ones), so every answer is some option;
   integers are `str(int(float(x)))` (truncated), floats `str(round(float(x), precision))`, lists
   `str(x)`; an integer or float that does not parse is None (wrong).
3. verdict (`safe_equal`): the normalised prediction equals the gold answer string exactly.
"""

from __future__ import annotations

import re

from Levenshtein import distance

from merging.evals.eval_sets import LETTERS, EvalItem
from merging.evals.verdict import Verdict

__all__ = ["gold_text", "most_similar", "normalize_extracted_answer", "quick_extraction", "verdict"]


def quick_extraction(response: str, item: EvalItem) -> str | None:
    """Step 1 without GPT-4: the extraction MathVista makes by rule, or None where it would ask GPT-4."""
    if response == "":
        return ""
    if item.answer_type == "multi_choice" and response in item.choices:
        return response
    for kind, read in (("integer", lambda r: str(int(r))), ("float", lambda r: str(float(r)))):
        if item.answer_type == kind:
            try:
                return read(response)
            except ValueError:
                pass
    quoted = re.search(r'The answer is "(.*)"\.', response)
    return quoted.group(1) if quoted else None


def most_similar(prediction: str, choices: tuple[str, ...]) -> str:
    """The option with the least Levenshtein distance to `prediction`, the first of equally near ones."""
    distances = [distance(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def _normalise(extraction: str, item: EvalItem) -> tuple[str | None, bool]:
    """(prediction, whether the nearest-option fallback chose it)."""
    if item.answer_type == "multi_choice":
        extraction = extraction.strip()
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        options = list(LETTERS[:len(item.choices)])
        if not options:  # an unchecked item without choices: no option can be right
            return None, False
        if extraction in options:
            return item.choices[options.index(extraction)], False
        nearest = most_similar(extraction, item.choices)
        return nearest, nearest != extraction
    try:
        if item.answer_type == "integer":
            return str(int(float(extraction))), False
        if item.answer_type == "float":
            return str(round(float(extraction), item.precision)), False
    except (ValueError, OverflowError):
        return None, False
    return str(extraction), False


def normalize_extracted_answer(extraction: str, item: EvalItem) -> str | None:
    """Step 2: the prediction MathVista compares with the gold answer (None: an unreadable number)."""
    return _normalise(extraction, item)[0]


def gold_text(item: EvalItem) -> str:
    """The gold answer as MathVista stores it: an option's text for multiple choice (a gold letter, as
    MATH-Vision and some project files give it, is read as its option), else the answer string."""
    options = list(LETTERS[:len(item.choices)])
    if item.answer_type == "multi_choice" and item.answer not in item.choices and item.answer in options:
        return item.choices[options.index(item.answer)]
    return item.answer


def verdict(extraction: str, item: EvalItem, rule: str) -> Verdict:
    """Steps 2 and 3 on an extraction: a `Verdict` whose `extracted` is the normalised
    prediction ("" for None) and whose rule is `rule`, "· nearest option" added when the fallback chose."""
    prediction, nearest = _normalise(extraction, item)
    return Verdict(prediction if prediction is not None else "", prediction == gold_text(item),
                   rule + (" · nearest option" if nearest else ""))
