"""The XY tab (issue #22, after supermerger's XY plot): the question asked in Compare answered by the
current plan changed along two axes (`merging.experiments.xy_grid`); a click on a cell opens its plan in
Compare. Cells run one by one through the answers cache; *Stop* ends the grid before the next cell."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.experiments.xy_grid import AXIS_KINDS, MAX_CELLS, XY_SETTINGS, check_axis, xy_grid
from merging.plan.merge_plan import MergePlan

from .asking import compare_inputs
from .explorer import CHEAP, GPU, Explorer, bind
from .layer_figures import xy_table
from .layers_api import PUBLIC_MAX_XY_CELLS, axis_values
from .open_plan import editor_outputs, editor_values, keep_editor
from .panel import Panel, with_panel
from .stops import Stops

STOPS = Stops("Stopping after the current cell…")  # read by xy_grid before each cell
DEFAULT_VALUES = {"alpha": "[0.25, 0.5, 0.75, 1]", "preset": '["constant", "linear", "loglinear", "step"]',
                  "group": '["attention", "mlp", "norms", "all"]', "method": '["linear", "slerp", "ties"]',
                  "step": "[2, 4, 6]"}


def on_axis_kind(kind):
    """A kind's example values in its box."""
    return DEFAULT_VALUES.get(kind, "")


def on_xy(explorer: Explorer, request: gr.Request, img, q, text_only_q, x_kind, x_text, y_kind, y_text, donor_name,
          panel: Panel):
    """Streams (table, status, cells) as each cell of the grid is answered; the table's colours: orange
    where the answer differs from the base VLM's."""
    try:
        q, img, plan, _ = compare_inputs(explorer, request, img, q, text_only_q, "", panel)
        x = check_axis(x_kind, axis_values(x_text, "x values"), explorer.num_layers, "x")
        y = check_axis(y_kind, axis_values(y_text, "y values"), explorer.num_layers, "y")
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}", gr.update()
        return
    total, done, stop = len(x[1]) * len(y[1]), [], STOPS.start(request)
    try:  # xy_grid checks the axes and every cell's plan before its first forward pass
        for cell in xy_grid(explorer.answerer, plan, q, img, x, y, XY_SETTINGS, donor=donor_name,
                            max_cells=PUBLIC_MAX_XY_CELLS if explorer.public else MAX_CELLS, should_stop=stop.is_set):
            done.append(cell)
            yield xy_table(done, x_kind, y_kind), f"XY: {len(done)}/{total} cells", done
        differ = sum(c["differs"] for c in done)
        end = f"stopped at {len(done)}/{total} cells" if stop.is_set() else f"all {total} cells"
        yield gr.update(), (f"XY: {end}; {differ} answer{'s' if differ != 1 else ''} differ from the base VLM's "
                            "(orange). Click a cell to open its plan in Compare."), gr.update()
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}", gr.update()
    finally:
        STOPS.end(request, stop)


def on_cell(explorer: Explorer, cells, evt: gr.SelectData):
    """Compare's editor values for the clicked cell's plan (the first column, the y labels, opens nothing)."""
    row, column = evt.index if isinstance(evt.index, (list, tuple)) else (None, None)
    width = len({repr(c["x"]) for c in cells or []})
    if not cells or column is None or column < 1 or row * width + column - 1 >= len(cells):
        return keep_editor()
    cell = cells[row * width + column - 1]
    plan = MergePlan.from_dict(cell["plan"])
    return editor_values(explorer, plan, f"Opened XY cell {cell['y']} × {cell['x']} (plan `{plan.hash()}`; "
                                         f"it answered {cell['answer']!r})")


def build_xy_tab(explorer: Explorer, compare) -> None:
    gr.Markdown("The question asked in *Compare*, answered by the current plan changed along two axes. Each cell: "
                "the answer · p(top token) · KL(base ‖ cell). **Orange**: a different answer from the base VLM; "
                "green: the same. Click a cell to open its plan in *Compare*.")
    with gr.Row():
        x_kind = gr.Dropdown(list(AXIS_KINDS), value="alpha", label="X axis", elem_id="xy-x-kind")
        x_values = gr.Textbox(DEFAULT_VALUES["alpha"], label="X values (a JSON list)", elem_id="xy-x-values")
        y_kind = gr.Dropdown(list(AXIS_KINDS), value="group", label="Y axis", elem_id="xy-y-kind")
        y_values = gr.Textbox(DEFAULT_VALUES["group"], label="Y values (a JSON list)", elem_id="xy-y-values")
    with gr.Row():
        run = gr.Button("Run XY grid", variant="primary", elem_id="xy-run")
        stop = gr.Button("Stop", elem_id="xy-stop")
    status = gr.Markdown("", elem_id="xy-status")
    table = gr.Dataframe(label="answer · p(top) · KL", elem_id="xy-table", interactive=False, wrap=True)
    cells = gr.State([])
    x_kind.change(on_axis_kind, x_kind, x_values, **CHEAP)
    y_kind.change(on_axis_kind, y_kind, y_values, **CHEAP)
    inputs = [compare.image, compare.question, compare.text_only, x_kind, x_values, y_kind, y_values, compare.donor,
              *compare.plan_inputs]
    run.click(bind(with_panel(on_xy), explorer), inputs, [table, status, cells], **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)
    table.select(bind(on_cell, explorer), cells, editor_outputs(compare), **CHEAP)
