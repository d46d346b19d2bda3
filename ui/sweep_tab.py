"""The Sweep tab: score a grid of plans on an eval set, cell by cell, into a heatmap and a table."""

from __future__ import annotations

import hashlib

import gradio as gr
import pandas as pd

from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set, spread_items
from merging.limits import bounded_int
from merging.experiments.sweep import add_flips, parse_grid, record_sweep, run_sweep

from .explorer import CHEAP, GPU, PUBLIC_MAX_NEW_TOKENS, PUBLIC_MAX_SWEEP_ANSWERS, Explorer, bind
from .figures import sweep_heatmap, sweep_lines
from .flips import flip_columns, flips_html
from .stops import Stops

DEFAULT_GRID = """components:
  Setting 1: [all]
  Setting 2: [self_attn]
curves:
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
    limit = bounded_int(limit or 1, "items", 1, 1_000_000)
    items = spread_items(load_eval_set(explorer.eval_spec if explorer.public else spec), limit)
    if explorer.public and (len(cells) * len(items) > PUBLIC_MAX_SWEEP_ANSWERS
                            or settings.max_new_tokens > PUBLIC_MAX_NEW_TOKENS):
        raise MergescopeError(f"this public demo runs sweeps of at most {PUBLIC_MAX_SWEEP_ANSWERS} "
                              f"answers of ≤ {PUBLIC_MAX_NEW_TOKENS} tokens; this grid asks for "
                              f"{len(cells) * len(items)} of {settings.max_new_tokens}")
    return cells, items, settings


def sweep_summary(rows: list[dict]) -> pd.DataFrame:
    """One line per cell: the strict and the official accuracy, each with its Wilson 95 % interval, over
    how many answers, and its flips against the base VLM (counts, exact McNemar p; * below 0.05)."""
    return pd.DataFrame([{"setting": r["setting"], "method": r["method"], "alpha": r["alpha"],
                          "strict accuracy": r["accuracy"], "95 % interval": _interval(r),
                          "official accuracy": r.get("official_accuracy"), "official 95 %": _interval(r, "official_"),
                          "answered": r.get("answered"), **flip_columns(r),
                          "complete": r.get("complete", True), "computed": r["computed"], "cached": r["cached"]}
                         for r in rows])


def _interval(row: dict, prefix: str = "") -> str:
    low, high = row.get(f"{prefix}accuracy_low"), row.get(f"{prefix}accuracy_high")
    return f"{100 * low:.0f}–{100 * high:.0f} %" if low is not None and high is not None else ""


def category_table(rows: list[dict]) -> pd.DataFrame:
    """Accuracy per category (columns: the strict one in %, with its Wilson 95 % interval, then the
    official one) for each cell (rows)."""
    def shown(v: dict) -> str:
        official = f" · official {100 * v['official_accuracy']:.0f} %" if "official_accuracy" in v else ""
        return f"{100 * v['accuracy']:.0f} % ({100 * v['low']:.0f}–{100 * v['high']:.0f}){official}"
    return pd.DataFrame([{"cell": f"{r['setting']} · {r['method']} · α {r['alpha']}",
                          **{k: shown(v) for k, v in (r.get("by_category") or {}).items()}} for r in rows])


STOPS = Stops("Stopping after the current batch…")  # read between batches
PER_KIND = 10  # the default sweep's items per category: a per-category cell reads "30 % (11–60)", not "0 % (0–79)"


def default_items(explorer: Explorer) -> int:
    """The Items box's start value: PER_KIND items of each category of the loaded eval set (public: as many
    as the default grid may answer within the demo's cap)."""
    kinds = len({item.category for item in explorer.eval_items}) or 1
    if explorer.public:
        return max(1, PUBLIC_MAX_SWEEP_ANSWERS // len(parse_grid(DEFAULT_GRID)[0]))
    return min(PER_KIND * kinds, len(explorer.eval_items)) or PER_KIND * kinds


def on_sweep(explorer: Explorer, grid, spec, limit, donor_name, progress=gr.Progress(), request: gr.Request = None):
    """Streams (status, heatmap, lines, table, per-category table, the rows) after each cell; Stop ends it
    between batches and keeps what was scored. The rows (with each answer) are what a click on a cell's
    line opens (`on_cell`)."""
    keep = gr.update()
    try:
        explorer.admit(request)
        cells, items, settings = sweep_plan(explorer, grid, spec, limit)
    except MergescopeError as exc:
        yield f"⚠️ {exc}", keep, keep, keep, keep, keep
        return
    stop = STOPS.start(request)
    rows, total = [], len(cells) * len(items)
    if progress is not None:
        progress((0, total), desc="sweep", unit="answers")
    try:
        for i, cell in enumerate(cells):
            def tick(done, _, i=i):
                if progress is not None:
                    progress((i * len(items) + done, total), desc="sweep", unit="answers")
            rows = add_flips(rows + run_sweep(explorer.answerer, [cell], items, settings, donor=donor_name,
                                              progress=tick, should_stop=stop.is_set))  # flips need the base row
            answered = sum(r.get("answered", len(items)) for r in rows)
            status = (f"Sweep stopped at {answered} / {total} answers ({len(rows)} of {len(cells)} cells); "
                      f"the partial results stay below" if stop.is_set() else f"Sweep: {i + 1}/{len(cells)} cells")
            yield (status, sweep_heatmap(rows) if len(rows) > 1 else keep, sweep_lines(rows), sweep_summary(rows),
                   category_table(rows), {"rows": rows, "spec": spec})
            if stop.is_set():
                return
    finally:
        STOPS.end(request, stop)
        grid_name = "grid " + hashlib.sha256(str(grid).encode()).hexdigest()[:8]
        config = record_sweep(explorer.answerer.cache, rows, grid_name, explorer.eval_spec if explorer.public else spec,
                              planned=len(cells))
        if explorer.public and config is not None:  # a visitor's History lists their own sweeps
            explorer.remember(request, config)


def on_flips(explorer: Explorer, shown, evt: gr.SelectData):
    """The flipped items of the clicked table line's cell (ui.flips), read from the sweep's eval set."""
    if not isinstance(shown, dict) or not shown.get("rows") or not isinstance(evt.index, (list, tuple)):
        return ""
    try:
        items = load_eval_set(explorer.eval_spec if explorer.public else shown["spec"])
    except MergescopeError as exc:
        return f"<p>⚠️ {exc}</p>"
    return flips_html(shown["rows"], evt.index[0], items)


def on_cell(explorer: Explorer, shown, evt: gr.SelectData):
    """A cell's answers (the row clicked in the cells or the per-category table): per item its question,
    gold answer, the answer, what was read from it and whether that is right."""
    rows = shown.get("rows") if isinstance(shown, dict) else None
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else None
    if not isinstance(row, int) or not 0 <= row < len(rows or []):  # a stale table, or a crafted call
        return gr.update(), "⚠️ that cell is gone: run the sweep again"
    items, cell = {i.id: i for i in explorer.eval_items}, rows[row]
    answers = pd.DataFrame([{"item": a["id"], "question": getattr(items.get(a["id"]), "question", ""),
                             "gold": getattr(items.get(a["id"]), "answer", ""), "answer": a["answer"],
                             "read as": a["extracted"], "right": a["correct"]} for a in cell["answers"]])
    alpha = "" if cell["alpha"] is None else f" · α {cell['alpha']:g}"
    return answers, f"Answers of {cell['setting']} · {cell['method']}{alpha}: {sum(answers['right'])} of " \
                    f"{len(answers)} right"


def build_sweep_tab(explorer: Explorer, donor: gr.Radio) -> None:
    gr.Markdown("Score a grid of plans on an eval set. Cells computed before come from the cache at once.")
    grid_text = gr.Code(DEFAULT_GRID, language="yaml", label="Grid", elem_id="grid")
    with gr.Row():
        eval_spec = gr.Textbox(explorer.eval_spec, label="Eval set (PATH.jsonl, mathvista:PATH, "
                               "mathvision:PATH)", elem_id="eval-set", interactive=not explorer.public)
        max_items = gr.Number(default_items(explorer), label="Items (spread evenly over the kinds)", precision=0,
                              minimum=1, elem_id="sweep-items")
    with gr.Row():
        run = gr.Button("Run sweep", variant="primary", elem_id="run-sweep")
        stop = gr.Button("Stop", elem_id="stop-sweep")
    status = gr.Markdown("", elem_id="sweep-status")
    with gr.Row():
        sweep_plot = gr.Plot(label="Accuracy", elem_id="sweep-plot")
        sweep_line_plot = gr.Plot(label="Accuracy against α", elem_id="sweep-lines")
    sweep_table = gr.Dataframe(label="Cells (strict and official accuracy, each with its Wilson 95 % interval)",
                               elem_id="sweep-table")
    categories = gr.Dataframe(label="Accuracy per category (strict, then official)", elem_id="sweep-categories")
    gr.Markdown("Click a cell's line in the table to list the items it flipped against the base VLM.")
    flipped = gr.HTML("", elem_id="sweep-flips")
    shown = gr.State({})
    cell_answers = gr.Dataframe(label="A cell's answers: click a line of the cells table (one line per heatmap cell)",
                                elem_id="sweep-answers", wrap=True)
    run.click(bind(on_sweep, explorer), [grid_text, eval_spec, max_items, donor],
              [status, sweep_plot, sweep_line_plot, sweep_table, categories, shown], api_name="on_sweep", **GPU)
    for table in (sweep_table, categories):  # both list the cells in the sweep's order
        table.select(bind(on_cell, explorer), shown, [cell_answers, status], **CHEAP)
    stop.click(STOPS.stop, None, status, **CHEAP)
    sweep_table.select(bind(on_flips, explorer), shown, flipped, **CHEAP)
