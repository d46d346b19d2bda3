"""Compare's "Which layers moved this answer?" accordion (issue #22): the layer-sensitivity heatmap of the
question asked (`merging.run.sensitivity`) and the logit lens of base vs merged (`Answerer.lens`).

Every model call goes through the answerer (the model worker, the answers cache); a *Stop* ends the
sensitivity between two cells and keeps the cells drawn."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.limits import bounded_int
from merging.plan.merge_plan import MergePlan
from merging.run.sensitivity import LAYER_GROUPS, MODES, blocks, layer_sensitivity

from .asking import compare_inputs, gold_for
from .explorer import CHEAP, GPU, Explorer, bind
from .layer_figures import METRICS, lens_figure, sensitivity_figure
from .panel import Panel, with_panel
from .stops import Stops

STOPS = Stops("Stopping after the current cell…")  # read by layer_sensitivity before each cell
PUBLIC_MAX_LAYER_CELLS = 48  # a public demo's cells per run: each is one apply and one forward pass
DEFAULT_METRIC = "p(gold)"


def layer_cells(num_layers: int, block: int) -> int:
    """How many (block, group, mode) cells one sensitivity run asks at `block` layers per block."""
    return len(blocks(num_layers, block)) * len(LAYER_GROUPS) * len(MODES)


def check_public_cells(explorer: Explorer, block: int) -> None:
    """MergescopeError (one line) when a public demo would run more than PUBLIC_MAX_LAYER_CELLS cells at
    `block` layers per block, naming the smallest block that fits."""
    if explorer.public and layer_cells(explorer.num_layers, block) > PUBLIC_MAX_LAYER_CELLS:
        smallest = next(k for k in range(1, explorer.num_layers + 1)
                        if layer_cells(explorer.num_layers, k) <= PUBLIC_MAX_LAYER_CELLS)
        raise MergescopeError(f"this public demo runs at most {PUBLIC_MAX_LAYER_CELLS} layer cells at a time: "
                              f"use blocks of at least {smallest} layers")


def _base(explorer: Explorer, q: str, img, donor_name) -> dict:
    """The base VLM's p(top token) and p(gold) (a cache hit once the sensitivity ran)."""
    dist = explorer.answerer.distribution(MergePlan(), q, img, top_k=1, gold=gold_for(explorer, q), donor=donor_name)
    return {"p_top": dist["tokens"][0][1], "p_gold": dist["p_gold"]}


def on_layers(explorer: Explorer, request: gr.Request, img, q, text_only_q, block, metric, donor_name,
              panel: Panel):
    """Streams (heatmap, status, rows) as each (block, group, mode) cell of the current plan is asked;
    *Stop* ends it before the next cell and keeps the rows drawn."""
    try:
        q, img, plan, _ = compare_inputs(explorer, request, img, q, text_only_q, "", panel)
        size = bounded_int(block, "layers per block", 1, explorer.num_layers)
        check_public_cells(explorer, size)
        metric = metric if metric in METRICS else DEFAULT_METRIC
        if not plan.rules:
            raise MergescopeError("the current plan merges nothing: tick components and draw α above 0 first")
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}", gr.update()
        return
    total = layer_cells(explorer.num_layers, size)
    rows, stop, base = [], STOPS.start(request), None
    try:
        for row in layer_sensitivity(explorer.answerer, plan, q, img, size, gold_for(explorer, q), donor_name,
                                     should_stop=stop.is_set):
            rows.append(row)
            base = base or _base(explorer, q, img, donor_name)
            shown = {"rows": rows, "base": base}
            block_done = len(rows) % (len(LAYER_GROUPS) * len(MODES)) == 0  # redraw once per block: cheaper
            yield (sensitivity_figure(rows, metric, base) if block_done else gr.update(),
                   f"Layers: {len(rows)}/{total} cells", shown)
        done = f"stopped at {len(rows)}/{total} cells" if stop.is_set() else f"all {total} cells"
        yield sensitivity_figure(rows, metric, base) if rows else gr.update(), f"Layers: {done}", gr.update()
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}", gr.update()
    finally:
        STOPS.end(request, stop)


def on_metric(shown, metric):
    """Redraw the heatmap for another metric from the rows already computed (no model call)."""
    if not isinstance(shown, dict) or not shown.get("rows") or metric not in METRICS:
        return gr.update()
    return sensitivity_figure(shown["rows"], metric, shown["base"])


def on_lens(explorer: Explorer, request: gr.Request, img, q, text_only_q, donor_name, panel: Panel):
    """(figure, status): the logit lens of the base VLM and the current plan for the question asked."""
    try:
        q, img, plan, _ = compare_inputs(explorer, request, img, q, text_only_q, "", panel)
        gold = gold_for(explorer, q)
        lens = {"base": explorer.answerer.lens(MergePlan(), q, img, gold, donor_name),
                "merged": explorer.answerer.lens(plan, q, img, gold, donor_name)}
    except MergescopeError as exc:
        return gr.update(), f"⚠️ {exc}"
    last = {name: rows[-1] for name, rows in lens.items()}
    return lens_figure(lens), (f"Last layer: base says {last['base']['token']!r} ({last['base']['p_top']:.2f}), "
                               f"merged says {last['merged']['token']!r} ({last['merged']['p_top']:.2f})")


def build_layers_panel(explorer: Explorer, compare) -> None:
    """The accordion, wired to the Compare tab's question, image, donor and merge panel."""
    with gr.Accordion("Which layers moved this answer? (layer sensitivity, logit lens)", open=False,
                      elem_id="layers-panel"):
        gr.Markdown("Each cell merges **only** one layer block and group at the current plan's α (top rows), or "
                    "takes the current plan **without** it (bottom rows), and reads the first answer token.")
        with gr.Row(equal_height=True):
            block = gr.Number(1, label="Layers per block", precision=0, minimum=1, maximum=explorer.num_layers,
                              elem_id="layers-block")
            metric = gr.Radio(list(METRICS), value=DEFAULT_METRIC, label="Colour", elem_id="layers-metric")
        with gr.Row():
            run = gr.Button("Which layers?", variant="primary", elem_id="layers-run")
            stop = gr.Button("Stop", elem_id="layers-stop")
            lens_button = gr.Button("Logit lens", elem_id="lens-run")
        status = gr.Markdown("", elem_id="layers-status")
        heatmap = gr.Plot(label="layer × group", elem_id="layers-plot", show_label=False)
        lens_plot = gr.Plot(label="logit lens", elem_id="lens-plot", show_label=False)
        rows = gr.State({})
    asked = [compare.image, compare.question, compare.text_only]
    run.click(bind(with_panel(on_layers), explorer), [*asked, block, metric, compare.donor, *compare.plan_inputs],
              [heatmap, status, rows], **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)
    metric.change(on_metric, [rows, metric], heatmap, **CHEAP)
    lens_button.click(bind(with_panel(on_lens), explorer), [*asked, compare.donor, *compare.plan_inputs],
                      [lens_plot, status], **GPU)
