"""The History tab: configurations evaluated so far (from the cache); a click restores one's plan."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from merging.methods import REGISTRY
from merging.plan.merge_plan import MergePlan

from .explorer import CHEAP, HISTORY_LIMIT, Explorer, bind
from .panel import PARAM_DEFS, component_choices
from .plan_panel import editor_state, plan_summary, table_of


def listed(entry: dict) -> bool:
    """Whether History lists a cache entry: answers asked here and whole sweeps; not a sweep's answers,
    nor the probability summaries Compare caches."""
    kind = entry["config"].get("kind")
    return kind == "sweep" or (kind == "answer" and not entry["result"].get("batched"))


def on_refresh(explorer: Explorer, request: gr.Request = None):
    cache = explorer.answerer.cache
    if cache is None:
        entries = []
    elif explorer.public:  # a visitor sees only their own questions, never everyone's
        entries = [e for e in map(cache.entry, explorer.history.keys(explorer.client(request))) if e and listed(e)]
    else:  # filtered before the limit: a 300-answer sweep never pushes Compare's answers out
        entries = cache.entries(limit=HISTORY_LIMIT, keep=listed)
    rows = [[time.strftime("%H:%M:%S", time.localtime(e["created_at"])), *_describe(e)] for e in entries]
    return pd.DataFrame(rows, columns=["when", "question", "plan", "answer"]), [e["config"] for e in entries]


def _describe(entry: dict) -> list[str]:
    """(question, plan, answer) columns of a History row: an answer, or a whole sweep."""
    config, result = entry["config"], entry["result"]
    if config.get("kind") == "sweep":
        done = "" if result.get("complete", True) else " (stopped)"
        return [f"sweep of {config['items']} items of {config['eval_set']}{done}",
                f"{config['grid']}: {len(config['cells'])} cells, donor {config['donor']}", f"best: {result['best']}"]
    return [config.get("question", ""), plan_summary(config.get("plan", {})), result.get("answer", "")]


def restore(explorer: Explorer, config: dict) -> list:
    """The Compare panel's values (components, method, curve, table, question, status, donor, params)
    that show a cached configuration."""
    plan = MergePlan.from_dict(config["plan"])
    layout = explorer.engine.pair.layout
    role_order = [role for _, role in component_choices(explorer)]
    comps, method_name, params, alphas = editor_state(plan, layout, role_order)
    param_updates = [gr.update(value=params.get(p.name, p.default),
                               visible=p.name in {d.name for d in REGISTRY[method_name].params})
                     for p in PARAM_DEFS]
    note = f"Restored plan `{plan.hash()}`" + (" (first rule shown)" if len(plan.rules) > 1 else "")
    used = config.get("models", {}).get("donor")
    label = next((name for name, ckpt in explorer.answerer.donors.items() if ckpt.fingerprint() == used), None)
    return [comps, method_name, alphas, table_of(alphas), config.get("question", ""), note,
            gr.update(value=label) if plan.rules and label else gr.update(), *param_updates]


def on_history_select(explorer: Explorer, configs, evt: gr.SelectData):
    if not isinstance(evt.index, (list, tuple)) or not isinstance(evt.index[0], int) \
            or not 0 <= evt.index[0] < len(configs):  # a stale table, or a crafted call
        return [gr.update()] * 5 + ["⚠️ that row is gone: press Refresh"] + [gr.update()] * (1 + len(PARAM_DEFS))
    if configs[evt.index[0]].get("kind") == "sweep":
        return [gr.update()] * 5 + ["A sweep: its cells are in the Sweep tab's table when rerun (from the cache)"] \
            + [gr.update()] * (1 + len(PARAM_DEFS))
    return restore(explorer, configs[evt.index[0]])


def build_history_tab(explorer: Explorer, compare) -> None:
    rows_state = gr.State([])
    gr.Markdown("Configurations evaluated so far (from the cache). Click a row to restore its plan.")
    refresh = gr.Button("Refresh", elem_id="refresh-history")
    history = gr.Dataframe(headers=["when", "question", "plan", "answer"], interactive=False, elem_id="history")
    refresh.click(bind(on_refresh, explorer), None, [history, rows_state], api_name="on_refresh", **CHEAP)
    history.select(bind(on_history_select, explorer), rows_state,
                   [compare.components, compare.method, compare.curve, compare.table, compare.question,
                    compare.status, compare.donor, *compare.param_boxes], **CHEAP)
