"""What a model request from the Compare panel asks: the question and image checked, the plans built,
the gold answer of an eval example. Shared by Compare, the α scan, lessons and the API (below them all)."""

from __future__ import annotations

from merging.errors import MergescopeError
from merging.io.images import read_image
from merging.limits import as_text
from merging.plan.merge_plan import MergePlan
from merging.run.generate import check_question

from .explorer import Explorer
from .panel import Panel, plan_of


def gold_for(explorer: Explorer, question: str) -> str | None:
    """The gold answer of the eval example whose question this is (None for a question typed in)."""
    q = str(question or "").strip()
    return next((item.answer for item in explorer.eval_items if item.question.strip() == q), None)


def compare_inputs(explorer: Explorer, request, img, q, text_only_q, pinned, panel: Panel) -> tuple:
    """(question, image, plan, plan B) checked; MergescopeError (one line) for what cannot be asked.
    `pinned`: plan B's YAML, or "" for none."""
    explorer.admit(request)
    q = check_question(as_text(q, "the question"))
    if img is None and not text_only_q:
        raise MergescopeError("this question needs an image: pick an example or upload one, "
                              "or tick 'Text-only question'")
    plan = plan_of(panel)
    plan_b = MergePlan.from_text(pinned) if pinned else None
    return q, None if text_only_q else read_image(img), plan, plan_b
