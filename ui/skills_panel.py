"""Live skill scores: the current plan's accuracy per skill on a small stratified item set of the loaded
eval set (`merging.experiments.skills`), on demand or after every Compare, and the same along α — each
skill's accuracy against α on one plot, with a Stop that ends it between batches."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.experiments.skills import SKILL_ALPHAS, SKILL_ITEMS_PER_KIND, skill_items, skill_scan, skill_scores
from merging.limits import bounded_int
from merging.plan.merge_plan import MergePlan

from .explorer import CHEAP, GPU, PUBLIC_MAX_SWEEP_ANSWERS, Explorer, bind
from .figures import skill_figure, skill_scan_figure
from .panel import Panel, plan_of, with_panel
from .stops import Stops

STOPS = Stops("Stopping after the current batch…")  # one switch per page, read between batches


def chosen_items(explorer: Explorer, per_skill) -> list:
    """The stratified items for `per_skill` items per skill; MergescopeError (one line) for a bad count or
    more answers than a public demo runs."""
    items = skill_items(explorer.eval_items, bounded_int(per_skill, "items per skill", 1, 10_000))
    if not items:
        raise MergescopeError("no eval set is loaded (start with --eval-set)")
    if explorer.public and len(items) > PUBLIC_MAX_SWEEP_ANSWERS:
        raise MergescopeError(f"this public demo scores at most {PUBLIC_MAX_SWEEP_ANSWERS} items at a time; "
                              f"{len(items)} asked for: lower the items per skill")
    return items


def default_per_skill(explorer: Explorer) -> int:
    """SKILL_ITEMS_PER_KIND, or in a public demo as many per skill as its answer cap allows."""
    if not explorer.public:
        return SKILL_ITEMS_PER_KIND
    kinds = len({item.category for item in explorer.eval_items}) or 1
    return max(1, min(SKILL_ITEMS_PER_KIND, PUBLIC_MAX_SWEEP_ANSWERS // kinds))


def _summary(row: dict) -> str:
    cells = [f"{skill} **{100 * v['accuracy']:.0f} %** ({100 * v['low']:.0f}–{100 * v['high']:.0f})"
             for skill, v in row["by_category"].items()]
    return " · ".join(cells)


def on_skills(explorer: Explorer, request: gr.Request, per_skill, donor_name, panel: Panel):
    """Streams (status, figure): the base VLM's skill scores, then the current plan's beside them."""
    stop = STOPS.start(request)
    try:
        explorer.admit(request)
        items, plan = chosen_items(explorer, per_skill), plan_of(panel)
        yield f"Scoring skills on {len(items)} items…", gr.update()
        settings = explorer.answer_settings
        base = skill_scores(explorer.answerer, MergePlan(), items, settings, donor_name, should_stop=stop.is_set)
        row = skill_scores(explorer.answerer, plan, items, settings, donor_name, should_stop=stop.is_set) \
            if base["complete"] else base
        if not row["complete"]:
            yield f"Skill scores stopped at {row['answered']} / {len(items)} items", skill_figure(row)
            return
        yield (f"Skills of the current plan on {len(items)} items (Wilson 95 %): {_summary(row)}",
               skill_figure(row, base))
    except MergescopeError as exc:
        yield f"⚠️ {exc}", gr.update()
    finally:
        STOPS.end(request, stop)


def on_skill_scan(explorer: Explorer, request: gr.Request, per_skill, donor_name, panel: Panel):
    """Streams (status, figure) as each α of SKILL_ALPHAS is scored; Stop ends it between batches and keeps
    the points drawn."""
    stop = STOPS.start(request)
    try:
        explorer.admit(request)
        items, plan = chosen_items(explorer, per_skill), plan_of(panel)
        yield f"Skills along α: 0/{len(SKILL_ALPHAS)} points ({len(items)} items each)…", gr.update()
        rows = []
        for row in skill_scan(explorer.answerer, plan, items, explorer.answer_settings, donor=donor_name,
                              should_stop=stop.is_set):
            rows.append(row)
            done = sum(r["complete"] for r in rows)
            yield f"Skills along α: {done}/{len(SKILL_ALPHAS)} points ({len(items)} items each)", \
                skill_scan_figure([r for r in rows if r["complete"]])
        if stop.is_set():
            done = sum(r["complete"] for r in rows)
            yield f"Skills along α stopped at {done}/{len(SKILL_ALPHAS)} points", gr.update()
    except MergescopeError as exc:
        yield f"⚠️ {exc}", gr.update()
    finally:
        STOPS.end(request, stop)


def build_skills_panel(explorer: Explorer, compare) -> gr.Checkbox:
    """The accordion; returns the "after every Compare" switch (Compare's chain clicks *Score skills*)."""
    with gr.Accordion("Skill scores: accuracy per skill for the current plan, and along α", open=False,
                      elem_id="skills", visible=bool(explorer.eval_items)):
        with gr.Row(equal_height=True):
            run = gr.Button("Score skills", variant="primary", elem_id="score-skills")
            scan = gr.Button(f"Skills along α ({len(SKILL_ALPHAS)} points)", elem_id="skill-scan")
            stop = gr.Button("Stop", elem_id="stop-skills")
            per_skill = gr.Number(default_per_skill(explorer), label="Items per skill", precision=0, minimum=1,
                                  elem_id="skill-items")
            after = gr.Checkbox(False, label="Score skills after every Compare", elem_id="skills-after-compare")
        status = gr.Markdown("", elem_id="skills-status")
        with gr.Row(elem_classes=["one-column-narrow"]):
            bars = gr.Plot(label="Accuracy per skill", elem_id="skills-plot")
            lines = gr.Plot(label="Accuracy per skill against α", elem_id="skills-scan-plot")
    inputs = [per_skill, compare.donor, *compare.plan_inputs]
    run.click(bind(with_panel(on_skills), explorer), inputs, [status, bars], api_name="on_skills", **GPU)
    scan.click(bind(with_panel(on_skill_scan), explorer), inputs, [status, lines], api_name="on_skill_scan", **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)
    return after
