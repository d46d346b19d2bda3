"""Plotly figures for the UI: VLM⇄donor distances, sweep heatmaps, next-token bars, the α scan."""

from __future__ import annotations

import plotly.graph_objects as go

from merging.experiments.sweep import heatmap as _heatmap

__all__ = ["distance_figure", "divergence_figure", "probability_figure", "scan_figure", "skill_figure",
           "skill_scan_figure", "sweep_heatmap", "sweep_lines"]


# one colour scale whatever the donor: two independent random networks sit near √2 apart
DISTANCE_RANGES = {"rel_l2": (0.0, 1.5), "cosine": (-1.0, 1.0)}


def distance_figure(rows: list[dict], metric: str, donor: str | None = None) -> go.Figure:
    """Heatmap of `metric` (rel_l2 or cosine) over decoder layer × role, on a fixed colour scale (the
    same for every donor, so two donors' maps compare by eye)."""
    layered = [r for r in rows if r["layer"] is not None]
    roles = list(dict.fromkeys(r["role"] for r in layered))
    layers = sorted({r["layer"] for r in layered})
    z = [[None] * len(layers) for _ in roles]
    for r in layered:
        z[roles.index(r["role"])][layers.index(r["layer"])] = r[metric]
    title = {"rel_l2": "‖θ_L − θ_V‖ / ‖θ_V‖ — where the donor moved away from the VLM",
             "cosine": "cosine(θ_V, θ_L)"}[metric]
    low, high = DISTANCE_RANGES[metric]
    fig = go.Figure(go.Heatmap(z=z, x=layers, y=roles, colorscale="Viridis" if metric == "rel_l2" else "RdBu",
                               zmin=low, zmax=high))
    fig.update_layout(title=f"{donor}: {title}" if donor else title, height=360,
                      xaxis_title="layer", margin={"l": 10, "r": 10, "t": 40, "b": 30})
    return fig


def _interval_text(r: dict) -> str:
    """Both scores of a sweep row for hover text: strict (Wilson 95 %), official, over how many answers."""
    low, high = r.get("accuracy_low"), r.get("accuracy_high")
    done = "" if r.get("complete", True) else " (stopped: partial)"
    official = f"; official {100 * r['official_accuracy']:.1f} %" if "official_accuracy" in r else ""
    return (f"strict {100 * r['accuracy']:.1f} %, Wilson 95 %: {100 * low:.0f}–{100 * high:.0f} %{official} "
            f"over {r.get('answered', '?')} answers{done}") if low is not None \
        else f"strict {100 * r['accuracy']:.1f} %{official}"


def sweep_heatmap(rows: list[dict]) -> go.Figure:
    """The sweep heatmap; each cell's flips against the base VLM (−right→wrong/+wrong→right) under its score,
    on hover its strict score, its Wilson 95 % interval, its official score and McNemar's p."""
    fig = _heatmap(rows)
    merged = [r for r in rows if r["alpha"] is not None]
    labels, alphas = list(fig.data[0].y), sorted({r["alpha"] for r in merged})
    hover = [[""] * len(alphas) for _ in labels]
    text = [list(row) for row in fig.data[0].text]
    for r in merged:
        i, j = labels.index(f"{r['setting']} · {r['method']}"), alphas.index(r["alpha"])
        hover[i][j] = _interval_text(r)
        if r.get("mcnemar_p") is not None:  # the flips against the base VLM under the score
            flips = f"−{len(r['right_to_wrong'])}/+{len(r['wrong_to_right'])}"
            text[i][j] += f"<br>{flips}"
            hover[i][j] += f"; flips {flips}, McNemar p {r['mcnemar_p']:.3g}"
    fig.data[0].customdata, fig.data[0].text = hover, text
    fig.data[0].hovertemplate = "%{y}, %{x}: %{customdata}<extra></extra>"
    return fig


def sweep_lines(rows: list[dict]) -> go.Figure:
    """Accuracy against α, one line per setting × method, the base VLM as a dashed level."""
    fig = go.Figure()
    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        if r["alpha"] is not None:
            series.setdefault(f"{r['setting']} · {r['method']}", []).append(
                (r["alpha"], 100 * r["accuracy"], _interval_text(r)))
    for name, points in series.items():
        points.sort()
        fig.add_trace(go.Scatter(x=[a for a, _, _ in points], y=[v for _, v, _ in points], mode="lines+markers",
                                 name=name, text=[t for _, _, t in points], hovertemplate="α %{x}: %{text}"))
    base = next((100 * r["accuracy"] for r in rows if r["alpha"] is None), None)
    if base is not None:
        fig.add_hline(y=base, line_dash="dash", annotation_text="base VLM")
    fig.update_layout(height=320, xaxis_title="α", yaxis_title="strict accuracy %",
                      margin={"l": 40, "r": 10, "t": 20, "b": 40})
    return fig


def probability_figure(tokens: list, title: str, gold: str | None = None) -> go.Figure:
    """Next-token probabilities as horizontal bars, the likeliest on top; the gold answer's token in green."""
    tokens = list(tokens)[::-1]
    labels = [repr(t)[1:-1] or "␣" for t, _ in tokens]
    colours = ["#2ca02c" if gold is not None and t.strip() and gold.strip().startswith(t.strip()) else "#1f77b4"
               for t, _ in tokens]
    fig = go.Figure(go.Bar(x=[p for _, p in tokens], y=labels, orientation="h", marker_color=colours,
                           text=[f"{p:.2f}" for _, p in tokens], textposition="auto"))
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=150, font={"size": 13},
                      xaxis={"range": [0, 1], "showticklabels": False}, margin={"l": 8, "r": 8, "t": 28, "b": 8})
    return fig


def scan_figure(points: list[dict]) -> go.Figure:
    """p(top token) and p(gold) against α, each point labelled with the answer at that α."""
    alphas = [p["alpha"] for p in points]
    fig = go.Figure(go.Scatter(x=alphas, y=[p["p_top"] for p in points], mode="lines+markers+text",
                               name="p(top token)", text=[str(p["answer"])[:12] for p in points],
                               textposition="top center"))
    if any(p.get("p_gold") is not None for p in points):
        fig.add_trace(go.Scatter(x=alphas, y=[p.get("p_gold") for p in points], mode="lines+markers",
                                 name="p(gold)", line={"dash": "dash"}))
    fig.update_layout(height=320, xaxis={"title": "α (scaled plan)", "range": [-0.05, 1.05]},
                      yaxis={"title": "probability", "range": [0, 1.1]}, legend={"orientation": "h"},
                      margin={"l": 40, "r": 10, "t": 20, "b": 40})
    return fig


def divergence_figure(d: dict) -> go.Figure:
    """The merged answer token by token (`merging.run.divergence.divergence_along`): KL(base ‖ merged) at
    each token as bars (nats), each token's log-probability under base and merged as lines."""
    labels = [f"{i}:{repr(t)[1:-1] or '␣'}" for i, t in enumerate(d["tokens"])]
    fig = go.Figure(go.Bar(x=labels, y=d["kl"], name="KL(base ‖ merged)", marker_color="#d62728", opacity=0.6))
    fig.add_trace(go.Scatter(x=labels, y=d["logp_base"], name="log p base", mode="lines+markers", yaxis="y2",
                             line={"color": "#444444"}))
    fig.add_trace(go.Scatter(x=labels, y=d["logp_merged"], name="log p merged", mode="lines+markers", yaxis="y2",
                             line={"dash": "dash", "color": "#1f77b4"}))
    fig.update_layout(height=260, title={"text": "The merged answer, token by token", "font": {"size": 14}},
                      yaxis={"title": "KL, nats", "rangemode": "tozero"},
                      yaxis2={"title": "log p", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.35}, margin={"l": 40, "r": 40, "t": 30, "b": 40})
    return fig


def _skill_hover(v: dict) -> str:
    return f"{100 * v['accuracy']:.0f} % (Wilson 95 %: {100 * v['low']:.0f}–{100 * v['high']:.0f}) of {v['items']}"


def skill_figure(row: dict, base: dict | None = None) -> go.Figure:
    """Accuracy per skill (a sweep row's `by_category`) as bars with Wilson 95 % error bars, in %; the base
    VLM's row, when given, as grey bars beside them."""
    fig = go.Figure()
    for name, r, colour in (("base VLM", base, "#aaaaaa"), ("current plan", row, "#1f77b4")):
        if r is None:
            continue
        skills = list(r["by_category"])
        values = [r["by_category"][k] for k in skills]
        fig.add_trace(go.Bar(x=skills, y=[100 * v["accuracy"] for v in values], name=name, marker_color=colour,
                             error_y={"type": "data", "symmetric": False,
                                      "array": [100 * (v["high"] - v["accuracy"]) for v in values],
                                      "arrayminus": [100 * (v["accuracy"] - v["low"]) for v in values]},
                             text=[f"{100 * v['accuracy']:.0f}" for v in values], textposition="inside",
                             insidetextanchor="middle", textangle=0,
                             hovertext=[_skill_hover(v) for v in values], hoverinfo="text"))
    fig.update_layout(height=300, barmode="group", yaxis={"title": "accuracy %", "range": [0, 105]},
                      font={"size": 14}, legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
                      uniformtext={"minsize": 10, "mode": "hide"}, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def skill_scan_figure(rows: list[dict]) -> go.Figure:
    """Each skill's accuracy (%) against α, one line per skill, Wilson 95 % intervals as error bars."""
    fig = go.Figure()
    skills = list(dict.fromkeys(k for r in rows for k in r["by_category"]))
    for skill in skills:
        points = [(r["alpha"], r["by_category"][skill]) for r in rows if skill in r["by_category"]]
        fig.add_trace(go.Scatter(x=[a for a, _ in points], y=[100 * v["accuracy"] for _, v in points],
                                 mode="lines+markers", name=skill, hovertext=[_skill_hover(v) for _, v in points],
                                 error_y={"type": "data", "symmetric": False, "thickness": 1,
                                          "array": [100 * (v["high"] - v["accuracy"]) for _, v in points],
                                          "arrayminus": [100 * (v["accuracy"] - v["low"]) for _, v in points]}))
    fig.update_layout(height=360, xaxis={"title": "α (the current plan scaled; 0 = base VLM)", "range": [-0.05, 1.05]},
                      yaxis={"title": "accuracy %", "range": [-5, 105]}, font={"size": 14},
                      margin={"l": 50, "r": 10, "t": 20, "b": 50})
    return fig
