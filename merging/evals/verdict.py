"""What a judge decided about one answer (`merging.evals.scoring.judge`, in either mode)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict"]


@dataclass(frozen=True)
class Verdict:
    """What `judge` decided: the extracted answer (as people read it in results), whether it is right,
    and the rule that decided — strict: "boxed", "final choice", "letter", "letter in parentheses",
    "last choice", "option text", "option value", "numeric", "math-verify", "identity check", "text",
    "list", "no answer"; official: "mathvista quick" / "mathvista rules" (model-free extraction or its
    stand-in for GPT-4), with " · nearest option" when MathVista's edit-distance fallback chose, and
    "mathvision"."""
    extracted: str
    correct: bool
    rule: str
