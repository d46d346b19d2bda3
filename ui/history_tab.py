"""The History tab: what was asked so far (from the cache), one row per Compare, α scan, sweep or answer
asked on its own; a click restores a row's plan, question, image, Text-only state and donor."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from merging.plan.merge_plan import MergePlan

from .compare_tab import param_updates
from .explorer import CHEAP, HISTORY_LIMIT, Explorer, bind
from .panel import PARAM_DEFS, component_choices
from .plan_panel import editor_state, table_of
from .records import describe, donor_label, listed, restored_image

COLUMNS = ["when", "question", "plan", "donor", "answer", "kind"]


def on_refresh(explorer: Explorer, request: gr.Request = None):
    cache = explorer.answerer.cache
    if cache is None:
        entries = []
    elif explorer.public:  # a visitor sees only their own questions, never everyone's
        entries = [e for e in map(cache.entry, explorer.history.keys(explorer.client(request))) if e and listed(e)]
    else:  # filtered before the limit: a 300-answer sweep never pushes Compare's answers out
        entries = cache.entries(limit=HISTORY_LIMIT, keep=listed)
    rows = [[time.strftime("%H:%M:%S", time.localtime(e["created_at"])), *describe(explorer, e)] for e in entries]
    return pd.DataFrame(rows, columns=COLUMNS), [e["config"] for e in entries]


def restore(explorer: Explorer, config: dict) -> list:
    """The Compare panel's values (components, method, curve, table, question, status, donor, image,
    Text-only, max new tokens, params) that show a cached configuration."""
    plan = MergePlan.from_dict(config["plan"])
    layout = explorer.engine.pair.layout
    role_order = [role for _, role in component_choices(explorer)]
    comps, method_name, params, alphas = editor_state(plan, layout, role_order)
    image, gone = restored_image(explorer, config)
    note = f"Restored plan `{plan.hash()}`" + (" (first rule shown)" if len(plan.rules) > 1 else "") + gone
    label = donor_label(explorer, config)
    tokens = config.get("max_new_tokens") or config.get("generation", {}).get("max_new_tokens")
    return [comps, method_name, alphas, table_of(alphas), config.get("question", ""), note,
            gr.update(value=label) if label in explorer.answerer.donors else gr.update(),
            image, config.get("text_only", config.get("image") is None),
            gr.update(value=tokens) if tokens else gr.update(), *param_updates(method_name, params)]


def on_history_select(explorer: Explorer, configs, evt: gr.SelectData):
    keep = [gr.update()] * 5, [gr.update()] * (4 + len(PARAM_DEFS))
    if not isinstance(evt.index, (list, tuple)) or not isinstance(evt.index[0], int) \
            or not 0 <= evt.index[0] < len(configs):  # a stale table, or a crafted call
        return [*keep[0], "⚠️ that row is gone: press Refresh", *keep[1]]
    if configs[evt.index[0]].get("kind") == "sweep":
        return [*keep[0], "A sweep: run it again in the Sweep tab (its cells come from the cache) and click a "
                "cell's row there to read its answers", *keep[1]]
    return restore(explorer, configs[evt.index[0]])


def build_history_tab(explorer: Explorer, compare) -> None:
    rows_state = gr.State([])
    gr.Markdown("What was asked so far (from the cache): one row per Compare, α scan, sweep or answer. Click a "
                "row to restore its plan, question, image and donor in Compare.")
    refresh = gr.Button("Refresh", elem_id="refresh-history")
    history = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="history", wrap=True,
                           column_widths=["7%", "22%", "22%", "12%", "23%", "14%"])  # all six on a projector
    refresh.click(bind(on_refresh, explorer), None, [history, rows_state], api_name="on_refresh", **CHEAP)
    history.select(bind(on_history_select, explorer), rows_state,
                   [compare.components, compare.method, compare.curve, compare.table, compare.question,
                    compare.status, compare.donor, compare.image, compare.text_only, compare.max_new_tokens,
                    *compare.param_boxes], **CHEAP)
