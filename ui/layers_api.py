"""See where (issue #22): the `/layers`, `/lens` and `/xy` endpoints — layer sensitivity, the logit lens
of base vs merged and the XY grid of answers for one question (merging.run.sensitivity, Answerer.lens,
merging.experiments.xy_grid). Arguments are read as `ui.api_args` reads them: any JSON value gets a
result or a one-line error."""

from __future__ import annotations

from typing import Any

import gradio as gr

from merging.experiments.xy_grid import MAX_CELLS, XY_SETTINGS, check_axis, xy_grid
from merging.limits import LimitError, as_text, brief
from merging.plan.merge_plan import MergePlan
from merging.run.sensitivity import layer_sensitivity

from .api_args import ImageArg, endpoint, image_arg, int_arg, json_text, plan_arg, question_arg
from .compare_tab import gold_for
from .explorer import GPU, Explorer, bind
from .layers_panel import check_public_cells

PUBLIC_MAX_XY_CELLS = 16
ROW_KEYS = ("layers", "group", "mode", "p_top", "p_gold", "kl_to_base", "answer")


def _inputs(explorer: Explorer, plan_yaml: Any, question: Any, image: Any) -> tuple[MergePlan, str, Any]:
    return plan_arg(plan_yaml), question_arg(question), image_arg(image)


@endpoint
def api_layers(explorer: Explorer, plan_yaml: str | dict, question: str, image: ImageArg = None, block: int = 1,
               request: gr.Request = None) -> list:
    """Layer sensitivity: [{"layers": [first, last], "group": "attention" | "mlp" | "norms", "mode": "only" |
    "without", "p_top", "p_gold", "kl_to_base", "answer"}, ...]; `block`: layers per block (1 to the
    model's layers; in public mode large enough for at most PUBLIC_MAX_LAYER_CELLS cells)."""
    explorer.admit(request)
    plan, q, img = _inputs(explorer, plan_yaml, question, image)
    size = int_arg(block, "block", 1, explorer.engine.pair.layout.num_layers)
    check_public_cells(explorer, size)
    rows = layer_sensitivity(explorer.answerer, plan, q, img, size, gold_for(explorer, q))
    return [{k: row[k] for k in ROW_KEYS} for row in rows]


@endpoint
def api_lens(explorer: Explorer, plan_yaml: str | dict, question: str, image: ImageArg = None,
             request: gr.Request = None) -> dict:
    """The logit lens: {"base": [{"layer", "token", "p_top", "p_gold"}, ...], "merged": [...]}, one entry per
    decoder layer, the last the model's own output."""
    explorer.admit(request)
    plan, q, img = _inputs(explorer, plan_yaml, question, image)
    gold = gold_for(explorer, q)
    lens = explorer.answerer.lens
    return {"base": lens(MergePlan(), q, img, gold), "merged": lens(plan, q, img, gold)}


def axis_values(value: Any, what: str) -> list:
    """An axis' values: a real list, or the list as JSON text ("[0.2, 0.5]", '["mlp", "norms"]')."""
    value = json_text(value, what, "a list like [0.3, 0.6]")
    if not isinstance(value, list):
        raise LimitError(f"{what}: give a list of values (or that JSON list as text), got {brief(value, 60)}")
    return value


@endpoint
def api_xy(explorer: Explorer, plan_yaml: str | dict, question: str, image: ImageArg = None,
           x_axis: str = "alpha", x_values: list | str = "[0.25, 0.5, 0.75, 1]", y_axis: str = "group",
           y_values: list | str = '["attention", "mlp", "norms", "all"]', request: gr.Request = None) -> list:
    """The XY grid: [{"x", "y", "plan", "plan_hash", "answer", "p_top", "kl_to_base", "differs"}, ...], y
    outer. Axes: "alpha" (numbers in [0, 1]), "preset", "group", "method" or "step" (a layer); at most 64
    cells (16 in public mode)."""
    explorer.admit(request)
    plan, q, img = _inputs(explorer, plan_yaml, question, image)
    layers = explorer.engine.pair.layout.num_layers
    x = check_axis(as_text(x_axis, "x_axis"), axis_values(x_values, "x_values"), layers, "x")
    y = check_axis(as_text(y_axis, "y_axis"), axis_values(y_values, "y_values"), layers, "y")
    cells = xy_grid(explorer.answerer, plan, q, img, x, y, XY_SETTINGS,
                    max_cells=PUBLIC_MAX_XY_CELLS if explorer.public else MAX_CELLS)
    return [{k: v for k, v in cell.items() if k != "cached"} for cell in cells]


def register_layers_api(explorer: Explorer) -> None:
    gr.api(bind(api_layers, explorer), api_name="layers", **GPU)
    gr.api(bind(api_lens, explorer), api_name="lens", **GPU)
    gr.api(bind(api_xy, explorer), api_name="xy", **GPU)
