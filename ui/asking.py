"""What a model request from the Compare panel asks: the question and image checked, the plans built,
the gold answer of an eval example. Shared by Compare, the α scan, lessons and the API (below them all)."""

from __future__ import annotations

from merging.errors import MergescopeError
from merging.io.images import read_image
from merging.limits import as_text
from merging.methods import REGISTRY
from merging.plan.merge_plan import MergePlan
from merging.run.generate import check_question

from .explorer import Explorer
from .panel import Panel, plan_of


def gold_for(explorer: Explorer, question: str) -> str | None:
    """The gold answer of the eval example whose question this is (None for a question typed in)."""
    q = str(question or "").strip()
    return next((item.answer for item in explorer.eval_items if item.question.strip() == q), None)


def method_refusal(explorer: Explorer, method_name: str, donor_name=None) -> str | None:
    """Why `method_name` cannot run on what is loaded (one line), or None when it can: a base-model
    method without `--base`, RegMean without Gram files for this pair and donor."""
    method = REGISTRY.get(method_name)
    if method is None:
        return None  # an unknown name is the plan's to refuse
    if method.needs_base and explorer.engine.pair.base is None:
        return f"{method_name} needs a base model and none is loaded (start the app with --base)"
    if method.needs_grams:
        donor = explorer.answerer.donors.get(donor_name or explorer.answerer.default_donor)
        if not all(explorer.engine.gram_fingerprints(donor).values()):
            return (f"{method_name} needs Gram files and none are attached for this pair (`python -m merging "
                    "grams`, then start with --grams-vlm and --grams-donor)")
    return None


def compare_inputs(explorer: Explorer, request, img, q, text_only_q, pinned, panel: Panel,
                   donor_name=None) -> tuple:
    """(question, image, plan, plan B) checked; MergescopeError (one line) for what cannot be asked.
    `pinned`: plan B's YAML, or "" for none; a rule whose method cannot run with `donor_name` (see
    `method_refusal`) is refused here, before anything is answered."""
    explorer.admit(request)
    q = check_question(as_text(q, "the question"))
    if img is None and not text_only_q:
        raise MergescopeError("this question needs an image: pick an example or upload one, "
                              "or tick 'Text-only question'")
    plan = plan_of(panel)
    plan_b = MergePlan.from_text(pinned) if pinned else None
    for rule in [*plan.rules, *(plan_b.rules if plan_b else [])]:
        if (reason := method_refusal(explorer, rule.method, donor_name)) is not None:
            raise MergescopeError(f"cannot compare: {reason}")
    return q, None if text_only_q else read_image(img), plan, plan_b
