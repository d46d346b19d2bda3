"""Inspect's eval-set layer map (issue #22): for the loaded eval set, which layer blocks × groups carry
which kind of question — `mergescope layers --eval-set` in the page (merging.experiments.layer_map), with
the command's default plan (every tensor, linear, α 1: "only" puts the donor's block in place of the VLM's)."""

from __future__ import annotations

import gradio as gr

from merging.cli.layers import DEFAULT_PLAN
from merging.errors import MergescopeError
from merging.evals.eval_sets import sample_items
from merging.experiments.layer_map import eval_layer_sensitivity, layer_map_figure
from merging.limits import bounded_int
from merging.plan.merge_plan import MergePlan

from .explorer import CHEAP, GPU, Explorer, bind
from .stops import Stops

STOPS = Stops("Stopping after the current cell…")  # read between two block × group cells
PUBLIC_MAX_MAP_ITEMS = 16
DEFAULT_SAMPLE = 24


def on_layer_map(explorer: Explorer, sample, donor_name, progress=gr.Progress(), request: gr.Request = None):
    """(figure, status): the mean Δ ln p(gold) per layer block × group and category over a seeded,
    stratified sample of the loaded eval set; *Stop* ends it between cells (the cells not reached blank)."""
    try:
        explorer.admit(request)
        if not explorer.eval_items:
            raise MergescopeError("no eval set is loaded (start the app with --eval-set)")
        n = bounded_int(sample, "items", 1, PUBLIC_MAX_MAP_ITEMS if explorer.public else len(explorer.eval_items))
    except MergescopeError as exc:
        return gr.update(), f"⚠️ {exc}"
    items, stop = sample_items(explorer.eval_items, n, 0), STOPS.start(request)

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="layer map", unit="passes")
    try:
        result = eval_layer_sensitivity(explorer.answerer, MergePlan.from_dict(DEFAULT_PLAN), items, 1, donor_name,
                                        progress=tick, should_stop=stop.is_set)
    except MergescopeError as exc:
        return gr.update(), f"⚠️ {exc}"
    finally:
        STOPS.end(request, stop)
    state = "complete" if result["complete"] else "stopped: the blank cells were not reached"
    return layer_map_figure(result), (f"Layer map of {result['items']} items ({state}). Blue: merging that block "
                                      "helps the kind's gold answer, red: it takes it away.")


def build_layer_map_panel(explorer: Explorer, donor: gr.Radio) -> None:
    gr.Markdown("**Which layers carry which kind of question?** Each cell puts the donor's layer block and group "
                "(α 1) into the VLM alone and averages the change of ln p(gold) per kind of question "
                "(`mergescope layers --eval-set`).")
    with gr.Row(equal_height=True):
        sample = gr.Number(min(DEFAULT_SAMPLE, len(explorer.eval_items) or 1), label="Items (a stratified sample)",
                           precision=0, minimum=1, elem_id="map-items")
        run = gr.Button("Layer map of the eval set", elem_id="map-run", variant="primary")
        stop = gr.Button("Stop", elem_id="map-stop")
    status = gr.Markdown("", elem_id="map-status")
    plot = gr.Plot(label="layer map", elem_id="map-plot", show_label=False)
    run.click(bind(on_layer_map, explorer), [sample, donor], [plot, status], **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)
