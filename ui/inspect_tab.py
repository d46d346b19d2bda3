"""The Inspect tab: where the donor moved away from the VLM, per layer and role; which layers carry which
kind of question (the eval-set layer map, ui.layer_map_panel)."""

from __future__ import annotations

import gradio as gr

from .explorer import GPU, Explorer, bind
from .figures import distance_figure
from .layer_map_panel import build_layer_map_panel


def on_inspect(explorer: Explorer, donor_name):
    """Both heatmaps for `donor_name`, named in their titles."""
    rows = explorer.distances(donor_name)
    return distance_figure(rows, "rel_l2", donor_name), distance_figure(rows, "cosine", donor_name)


def on_donor_switch(explorer: Explorer, donor_name, shown):
    """Redraw for the new donor once the maps were drawn (nothing to redraw before)."""
    return on_inspect(explorer, donor_name) if shown else (gr.update(), gr.update())


def build_inspect_tab(explorer: Explorer, donor: gr.Radio) -> None:
    gr.Markdown("Where did the donor (the one picked in *Compare*) move away from the VLM? Per layer and "
                "role, over all its tensors. A donor from the VLM's own seed stays close; one from "
                "another init is as far as two random networks.")
    inspect_btn = gr.Button("Compute distances", elem_id="inspect")
    rel_plot = gr.Plot(label="relative distance", elem_id="rel-plot")
    cos_plot = gr.Plot(label="cosine", elem_id="cos-plot")
    inspect_btn.click(bind(on_inspect, explorer), donor, [rel_plot, cos_plot], **GPU)
    donor.change(bind(on_donor_switch, explorer), [donor, rel_plot], [rel_plot, cos_plot], **GPU)
    build_layer_map_panel(explorer, donor)
