"""Text clean-up shared by every answer judge: what two ways of writing the same answer differ by."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["key", "normalise"]

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


def key(text: str) -> str:
    """Comparison key for text answers: normalised, lower case, no spaces or outer brackets/quotes."""
    return re.sub(r"\s+", "", normalise(text)).lower().strip("'\"*")
