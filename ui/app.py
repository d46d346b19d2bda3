"""The explorer: draw an α curve, tick components, compare the merged model's answer with the base VLM's.

This module only assembles the tabs (one module each, with their handlers). Every model event
(compare, sweep, the API) shares one queue slot (`concurrency_id="gpu"`, limit 1): the weights hold
one plan at a time. Cheap events (presets, table edits, plots) never wait behind them. Errors in what a
user typed come back as a one-line message in a status line, never as a traceback.
"""

from __future__ import annotations

import gradio as gr

from .api import register_api
from .compare_tab import build_compare_tab, on_method
from .explorer import CHEAP, PUBLIC_DELETE_CACHE, Explorer, bind
from .export_tab import build_export_tab
from .guard import explain_bad_inputs
from .history_tab import build_history_tab
from .inspect_tab import build_inspect_tab
from .search_tab import build_search_tab
from .sweep_tab import build_sweep_tab
from .xy_tab import build_xy_tab

__all__ = ["Explorer", "build_app"]  # the entry points' API; everything else lives in its tab's module


def build_app(explorer: Explorer) -> gr.Blocks:
    # public: Gradio deletes this app's uploads after a while (and a janitor bounds the folder, app.py)
    with gr.Blocks(title="Mergescope",
                   delete_cache=PUBLIC_DELETE_CACHE if explorer.public else None) as app:
        gr.Markdown("# Mergescope\nMerge a VLM with the text LLM that shares its backbone, layer by layer. "
                    "α is the donor LLM's weight: 0 keeps the VLM, 1 takes the LLM.")
        with gr.Tab("Compare"):
            compare = build_compare_tab(explorer)
        with gr.Tab("Inspect"):
            build_inspect_tab(explorer, compare.donor)
        with gr.Tab("Sweep"):
            build_sweep_tab(explorer, compare.donor)
        with gr.Tab("XY grid"):
            build_xy_tab(explorer, compare)
        with gr.Tab("Search"):
            build_search_tab(explorer, compare)
        with gr.Tab("History"):
            build_history_tab(explorer, compare)
        with gr.Tab("Export"):
            build_export_tab(explorer, compare)
        register_api(explorer)
        app.load(bind(on_method, explorer), [compare.method, compare.donor],
                 [compare.method_formula, *compare.param_boxes], **CHEAP)
    explain_bad_inputs(app)  # a value the page would never send: one line, not Gradio's generic error
    return app
