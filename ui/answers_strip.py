"""The answers strip of the class view: Compare, then base / merged / plan B side by side, each with its
first-token bars, and how far the merge moved (first token: KL; whole answer: per-token divergence).

The strip never folds into one column (a class must see the answers together, at 800 px too); its
model handlers take the explorer explicitly and plain values, so tests call them without a browser."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.limits import bounded_int
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings
from merging.run.probe import kl_divergence

from .asking import compare_inputs, gold_for
from .explorer import Explorer
from .figures import divergence_figure, probability_figure
from .panel import Panel
from .plan_panel import badge, token_diff
from .records import asked, record

ANSWER_LABELS = {"base": "Base VLM", "merged": "Merged (current plan)", "pinned": "Plan B (pinned)"}
BARS_SHOWN = 5        # first-token bars per card: what reads from the back of a room
LARGE_DIVERGENCE = 1.0  # nats per token: above it the whole answer is far from what the base VLM would say


def fresh(name: str, value: str) -> dict:
    return gr.update(value=value, label=ANSWER_LABELS[name], elem_classes=["answer"])


def on_compare(explorer: Explorer, request: gr.Request, img, q, text_only_q, tokens, pinned, donor_name,
               panel: Panel):
    """Streams (status, base, merged, plan B, their three badges, diff) as the answers grow."""
    keep, path = gr.update(), img  # the file, for History's record (the image itself is decoded below)
    try:
        q, img, plan, plan_b = compare_inputs(explorer, request, img, q, text_only_q, pinned, panel, donor_name)
        settings = GenerationSettings(max_new_tokens=bounded_int(tokens, "max new tokens", 1,
                                                                 explorer.max_new_tokens))
    except MergescopeError as exc:
        yield (f"⚠️ {exc}", *[keep] * 7)
        return
    shown = {"base": fresh("base", ""), "merged": fresh("merged", ""), "pinned": fresh("pinned", "")}
    metas = {"base": "", "merged": "", "pinned": ""}
    yield ("Answering…", *shown.values(), *metas.values(), [])
    answers = {}
    runs = [("base", MergePlan()), ("merged", plan)] + ([("pinned", plan_b)] if plan_b is not None else [])
    try:
        for name, p in runs:
            explorer.remember(request, explorer.answerer.config(p, q, img, settings, donor_name))
            for update in explorer.answerer.stream(p, q, img, settings, donor=donor_name, source="compare"):
                answers[name] = shown[name] = update["answer"]
                metas[name] = badge(update) + (f" · donor: {donor_name}" if p.rules else " · no donor")
                yield ("Answering…", *shown.values(), *metas.values(), keep)
    except MergescopeError as exc:  # no badge stays on "generating…" for an answer that stopped
        yield (f"⚠️ {exc}", *[keep] * 3, *(m if m.split(" · ")[1:2] != ["generating…"] else "" for m in
                                          metas.values()), keep)
        return
    record(explorer, request, asked("compare", q, path, img, text_only_q, donor_name, plan,
                                    max_new_tokens=settings.max_new_tokens,
                                    plan_b=plan_b.to_dict() if plan_b is not None else None), {"answers": answers})
    yield ("", *[keep] * 6, token_diff(answers["base"], answers["merged"]))


def distributions(explorer: Explorer, plans: dict, q: str, img, donor_name, top_k: int = 10) -> tuple[dict, float]:
    """{name: distribution} for each plan, and KL(base ‖ merged) in nats."""
    gold = gold_for(explorer, q)
    out = {name: explorer.answerer.distribution(plan, q, img, top_k=top_k, gold=gold, donor=donor_name)
           for name, plan in plans.items()}
    return out, kl_divergence(out["base"]["summary"], out["merged"]["summary"])


def on_distributions(explorer: Explorer, request: gr.Request, img, q, text_only_q, pinned, donor_name,
                     panel: Panel):
    """After Compare: the next-token bars of base, merged and plan B, and KL(base ‖ merged)."""
    keep = gr.update()
    try:
        q, img, plan, plan_b = compare_inputs(explorer, None, img, q, text_only_q, pinned, panel, donor_name)
        plans = {"base": MergePlan(), "merged": plan, **({"pinned": plan_b} if plan_b is not None else {})}
        dists, kl = distributions(explorer, plans, q, img, donor_name)
    except MergescopeError:
        return keep, keep, keep, ""  # Compare's status already says why
    gold = gold_for(explorer, q)
    figs = [probability_figure(dists[n]["tokens"][:BARS_SHOWN], "next token", gold)
            if n in dists else gr.update(visible=False) for n in ("base", "merged", "pinned")]
    if "pinned" in dists:
        figs[2] = gr.update(value=figs[2], visible=True)
    return (*figs, f"**First token:** KL(base ‖ merged) = **{kl:.3f} nats**")


def divergence_text(d: dict) -> str:
    """One line on the whole merged answer: its mean per-token KL(base ‖ merged), both models' mean
    log-probability of its tokens, and where it parts from the base VLM's answer."""
    if not d["tokens"]:
        return "**Whole answer:** empty"
    where = "the same tokens as the base VLM" if d["parting"] is None else \
        f"parts from the base VLM at token {d['parting']}" + \
        (f" ({d['tokens'][d['parting']]!r})" if d["parting"] < len(d["tokens"]) else "")
    flag = " ⚠️ **far from the base VLM**" if d["mean_kl"] >= LARGE_DIVERGENCE else ""
    count = f"{len(d['tokens'])} token" + ("s" if len(d["tokens"]) > 1 else "")
    return (f"**Whole answer** ({count}): mean KL(base ‖ merged) = **{d['mean_kl']:.2f} "
            f"nats/token**{flag} · log p per token: base {d['mean_logp_base']:.2f}, merged "
            f"{d['mean_logp_merged']:.2f} · {where}")


def on_divergence(explorer: Explorer, img, q, text_only_q, donor_name, base_answer, merged_answer, panel: Panel):
    """After Compare: the whole-answer divergence of the merged answer (text, per-token figure)."""
    try:
        q, img, plan, _ = compare_inputs(explorer, None, img, q, text_only_q, "", panel, donor_name)
        if not merged_answer or not plan.rules:
            return "", gr.update(visible=False)
        d = explorer.answerer.answer_divergence(plan, q, img, str(merged_answer), str(base_answer or ""),
                                                donor_name)
    except MergescopeError:
        return "", gr.update(visible=False)  # Compare's status already says why
    return divergence_text(d), gr.update(value=divergence_figure(d), visible=True)


# -- layout ----------------------------------------------------------------------------------------

def _answer_card(name: str, elem: str, visible: bool = True) -> dict:
    with gr.Column(min_width=120, visible=visible, elem_classes=["answer-card"]) as column:
        box = gr.Textbox(label=ANSWER_LABELS[name], elem_id=f"answer-{elem}", interactive=False,
                         elem_classes=["answer"], lines=1, max_lines=2)
        meta = gr.Markdown("", elem_id=f"meta-{elem}", elem_classes=["meta"])
    return {"column": column, "box": box, "meta": meta}


def build_answers_strip() -> dict:
    """Compare (with its status and the compare-on-release switch), the three answer cards side by side,
    the first-token KL and the whole-answer divergence line."""
    c = {}
    with gr.Row(equal_height=True, elem_id="compare-row"):
        c["compare"] = gr.Button("Compare", variant="primary", elem_id="compare", scale=0, min_width=140)
        c["on_release"] = gr.Checkbox(False, label="Compare on curve release", elem_id="compare-on-release",
                                      scale=0, min_width=230, container=False)
        c["status"] = gr.Markdown("", elem_id="status")
    with gr.Row(elem_id="answers", elem_classes=["answers-strip"]):
        c["cards"] = {"base": _answer_card("base", "base"), "merged": _answer_card("merged", "merged"),
                      "pinned": _answer_card("pinned", "pinned", visible=False)}
    c["divergence"] = gr.Markdown("", elem_id="divergence")
    c["kl"] = gr.Markdown("", elem_id="kl")
    with gr.Row(elem_classes=["answers-strip"]):  # the bars under their answers, in the same columns
        for name, card in c["cards"].items():
            card["probs"] = gr.Plot(label="next token", elem_id=f"probs-{ {'pinned': 'b'}.get(name, name) }",
                                    show_label=False, visible=name != "pinned", elem_classes=["answer-card"])
    return c
