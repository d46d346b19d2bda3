"""The Sweep tab: score a grid of plans on an eval set, cell by cell, into a heatmap and a table."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from merging.errors import MergescopeError
from merging.evaluate import load_eval_set
from merging.limits import bounded_int
from merging.sweep import parse_grid, run_sweep

from .explorer import CHEAP, GPU, PUBLIC_MAX_NEW_TOKENS, PUBLIC_MAX_SWEEP_ANSWERS, Explorer, bind
from .figures import sweep_heatmap, sweep_lines

DEFAULT_GRID = """settings:
  Setting 1: [all]
  Setting 2: [self_attn]
methods:
  constant α: {preset: constant}
  log ramp: {preset: loglinear, start: 0.0}
alphas: [0.4, 0.6]
max_new_tokens: 8
"""


def sweep_plan(explorer: Explorer, grid, spec, limit) -> tuple[list, list, object]:
    """(cells, items, settings) for a grid and an eval set; MergescopeError (one line) for what a public
    demo may not run or what does not parse."""
    # public: the cell count is refused from the axes' lengths, before any cell is built
    cells, settings = parse_grid(grid, max_cells=PUBLIC_MAX_SWEEP_ANSWERS) if explorer.public else parse_grid(grid)
    limit = bounded_int(limit or 1, "items (max)", 1, 1_000_000)
    items = load_eval_set(explorer.eval_spec if explorer.public else spec)[:limit]
    if explorer.public and (len(cells) * len(items) > PUBLIC_MAX_SWEEP_ANSWERS
                            or settings.max_new_tokens > PUBLIC_MAX_NEW_TOKENS):
        raise MergescopeError(f"this public demo runs sweeps of at most {PUBLIC_MAX_SWEEP_ANSWERS} "
                              f"answers of ≤ {PUBLIC_MAX_NEW_TOKENS} tokens; this grid asks for "
                              f"{len(cells) * len(items)} of {settings.max_new_tokens}")
    return cells, items, settings


def sweep_summary(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{k: r[k] for k in ("setting", "method", "alpha", "accuracy", "computed", "cached")}
                         for r in rows])


def on_sweep(explorer: Explorer, grid, spec, limit, donor_name, progress=gr.Progress(), request: gr.Request = None):
    """Streams (status, heatmap, lines, table) after each cell."""
    keep = gr.update()
    try:
        explorer.admit(request)
        cells, items, settings = sweep_plan(explorer, grid, spec, limit)
    except MergescopeError as exc:
        yield f"⚠️ {exc}", keep, keep, keep
        return
    rows, total = [], len(cells) * len(items)
    progress((0, total), desc="sweep", unit="answers")
    for i, cell in enumerate(cells):
        rows += run_sweep(explorer.answerer, [cell], items, settings, donor=donor_name,
                          progress=lambda done, _: progress((i * len(items) + done, total), desc="sweep",
                                                            unit="answers"))
        yield (f"Sweep: {i + 1}/{len(cells)} cells", sweep_heatmap(rows) if len(rows) > 1 else keep,
               sweep_lines(rows), sweep_summary(rows))


def build_sweep_tab(explorer: Explorer, donor: gr.Radio) -> None:
    gr.Markdown("Score a grid of plans on an eval set. Cells computed before come from the cache at once.")
    grid_text = gr.Code(DEFAULT_GRID, language="yaml", label="Grid", elem_id="grid")
    with gr.Row():
        eval_spec = gr.Textbox(explorer.eval_spec, label="Eval set (PATH.jsonl, mathvista:PATH, "
                               "mathvision:PATH)", elem_id="eval-set", interactive=not explorer.public)
        max_items = gr.Number(8, label="Items (max)", precision=0, minimum=1)
    with gr.Row():
        run = gr.Button("Run sweep", variant="primary", elem_id="run-sweep")
        stop = gr.Button("Stop", elem_id="stop-sweep")
    status = gr.Markdown("", elem_id="sweep-status")
    with gr.Row():
        sweep_plot = gr.Plot(label="Accuracy", elem_id="sweep-plot")
        sweep_line_plot = gr.Plot(label="Accuracy against α", elem_id="sweep-lines")
    sweep_table = gr.Dataframe(label="Cells", elem_id="sweep-table")
    event = run.click(bind(on_sweep, explorer), [grid_text, eval_spec, max_items, donor],
                      [status, sweep_plot, sweep_line_plot, sweep_table], api_name="on_sweep", **GPU)
    stop.click(None, None, None, cancels=[event], **CHEAP)
