"""What a judge decided about one answer (`merging.scoring.judge`, in either mode)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict"]


@dataclass(frozen=True)
class Verdict:
    """What `judge` decided: the extracted answer (as people read it in results), whether it is right,
    and the rule that decided ("boxed", "final choice", "letter", "option text", "option value",
    "numeric", "math-verify", "text", "list", "no answer")."""
    extracted: str
    correct: bool
    rule: str
