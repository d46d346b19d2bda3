"""Plotly figures and tables for the layer views (issue #22): the layer-sensitivity heatmap of one question,
the logit lens of base vs merged, and the XY grid of answers as a coloured table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from merging.run.sensitivity import LAYER_GROUPS, MODES

# metric choice → (row key, what the colour bar says, colour scale, fixed range or None for the data's)
METRICS = {
    "p(gold)": ("p_gold", "p(gold)", "Viridis", (0.0, 1.0)),
    "p(top token of the base)": ("p_top", "p(base's top)", "Viridis", (0.0, 1.0)),
    "KL(base ‖ cell)": ("kl_to_base", "KL nats", "Reds", None),
}
FONT = {"size": 16}  # read from the back of a room
DIFFERS, SAME = "#ffb74d", "#e8f5e9"  # an XY cell whose answer differs from the base VLM's / the same


def block_label(layers: list[int]) -> str:
    first, last = layers
    return f"L{first}" if first == last else f"L{first}–{last}"


def sensitivity_figure(rows: list[dict], metric: str, base: dict | None = None) -> go.Figure:
    """Heatmap of one question's layer sensitivity (`merging.run.sensitivity` rows): columns the layer
    blocks, rows group · mode ("only": that block and group merged alone; "without": the plan with it
    put back to the VLM); each cell's colour the chosen METRICS entry, its text the value and the cell's
    first token. `base`: the base VLM's {"p_top", "p_gold"} for the title."""
    key, bar, scale, span = METRICS[metric]
    columns = list(dict.fromkeys(block_label(r["layers"]) for r in rows))
    labels = [f"{group} · {mode}" for mode in MODES for group in LAYER_GROUPS]
    z = [[None] * len(columns) for _ in labels]
    text = [[""] * len(columns) for _ in labels]
    for r in rows:
        i, j = labels.index(f"{r['group']} · {r['mode']}"), columns.index(block_label(r["layers"]))
        z[i][j] = r[key]
        value = "–" if r[key] is None else f"{r[key]:.2f}"
        text[i][j] = f"{value}<br>{str(r['answer']).strip()[:8] or '␣'}"
    low, high = span or (0.0, max([v for row in z for v in row if v is not None] + [1e-3]))
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=labels, colorscale=scale, zmin=low, zmax=high, text=text,
                               texttemplate="%{text}", textfont=FONT, colorbar={"title": bar},
                               hovertemplate="%{y}, %{x}: " + bar + " %{z:.3f}<extra></extra>"))
    title = f"Which layers moved this answer? colour: {metric}"
    if base is not None:
        gold = "" if base.get("p_gold") is None else f", p(gold) {base['p_gold']:.2f}"
        title += f" — base VLM: p(top) {base['p_top']:.2f}{gold}"
    fig.update_layout(title={"text": title, "font": FONT}, font=FONT, yaxis={"autorange": "reversed"},
                      height=120 + 62 * len(labels), margin={"l": 10, "r": 10, "t": 50, "b": 40},
                      xaxis_title="layer block (0 = nearest the input)")
    return fig


def lens_figure(lens: dict[str, list[dict]]) -> go.Figure:
    """The logit lens: p(top token) after each decoder layer for the base VLM and the merged plan, each
    point labelled with its top token; p(gold) dashed where the question has one."""
    fig = go.Figure()
    for name, colour, place in (("base", "#1f77b4", "top center"), ("merged", "#d62728", "bottom center")):
        rows = lens[name]
        layers = [r["layer"] for r in rows]
        fig.add_trace(go.Scatter(x=layers, y=[r["p_top"] for r in rows], mode="lines+markers+text",
                                 name=f"{name}: p(top token)", line={"color": colour, "width": 3},
                                 text=[repr(r["token"])[1:-1].strip()[:10] or "␣" for r in rows],
                                 textposition=place, textfont={"size": 15, "color": colour}))
        if any(r["p_gold"] is not None for r in rows):
            fig.add_trace(go.Scatter(x=layers, y=[r["p_gold"] for r in rows], mode="lines", name=f"{name}: p(gold)",
                                     line={"color": colour, "dash": "dash"}))
    fig.update_layout(title={"text": "Logit lens: what each layer would answer (base vs merged)", "font": FONT},
                      font=FONT, height=440, xaxis={"title": "after decoder layer (last = the model's output)",
                                                    "dtick": 1},
                      yaxis={"title": "probability", "range": [-0.08, 1.12]}, legend={"orientation": "h", "y": -0.25},
                      margin={"l": 50, "r": 10, "t": 50, "b": 40})
    return fig


def xy_cell_text(cell: dict) -> str:
    return f"{str(cell['answer']).strip()[:14] or '␣'} · p {cell['p_top']:.2f} · KL {cell['kl_to_base']:.2f}"


def xy_table(cells: list[dict], x_kind: str, y_kind: str):
    """The XY grid as a styled table: one row per y value, one column per x value, each cell "answer ·
    p(top) · KL", orange where the answer differs from the base VLM's, green where it is the same."""
    xs = list(dict.fromkeys(_shown(c["x"]) for c in cells))
    ys = list(dict.fromkeys(_shown(c["y"]) for c in cells))
    frame = pd.DataFrame("", index=range(len(ys)), columns=[f"{y_kind} \\ {x_kind}", *xs])
    colours = pd.DataFrame("", index=frame.index, columns=frame.columns)
    frame.iloc[:, 0] = ys
    for c in cells:
        i, j = ys.index(_shown(c["y"])), 1 + xs.index(_shown(c["x"]))
        frame.iloc[i, j] = xy_cell_text(c)
        colours.iloc[i, j] = f"background-color: {DIFFERS if c['differs'] else SAME}; font-size: 1.15em"
    return frame.style.apply(lambda _: colours, axis=None)


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
