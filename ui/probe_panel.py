"""See the merge: the α scan panel, and the `/distribution` and `/scan` APIs.

They call `Answerer.distribution` and `Answerer.alpha_scan` (merging.run.probe)."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.run.answerer import SCAN_ALPHAS

from .api_args import ImageArg, endpoint, image_arg, int_arg, numbers_arg, plan_arg, question_arg
from .asking import compare_inputs, gold_for
from .explorer import CHEAP, GPU, Explorer, bind
from .figures import scan_figure
from .panel import Panel, with_panel
from .records import asked, record
from .stops import Stops

MAX_SCAN_ALPHAS = 21
STOPS = Stops("Stopping after the current point…")  # read by alpha_scan before each point


def on_scan(explorer: Explorer, request: gr.Request, img, q, text_only_q, donor_name, panel: Panel):
    """Streams (figure, status) as `alpha_scan` answers the current plan scaled by α = 0, 0.1, …, 1;
    *Stop scan* ends it before the next point and keeps the points drawn."""
    path = img  # the file, for History's record
    try:
        q, img, plan, _ = compare_inputs(explorer, request, img, q, text_only_q, "", panel, donor_name)
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}"
        return
    points, stop = [], STOPS.start(request)
    try:
        for point in explorer.answerer.alpha_scan(plan, q, img, alphas=SCAN_ALPHAS, gold=gold_for(explorer, q),
                                                  donor=donor_name, should_stop=stop.is_set):
            points.append(point)
            yield scan_figure(points), f"α scan: {len(points)}/{len(SCAN_ALPHAS)} points"
        if stop.is_set():
            yield gr.update(), f"α scan stopped at {len(points)}/{len(SCAN_ALPHAS)} points"
    except MergescopeError as exc:
        yield gr.update(), f"⚠️ {exc}"
    finally:
        STOPS.end(request, stop)
        if points:  # one History row for the whole scan, not one per point
            record(explorer, request, asked("scan", q, path, img, text_only_q, donor_name, plan,
                                            points=len(SCAN_ALPHAS)),
                   {"points": [{"alpha": p["alpha"], "answer": p["answer"]} for p in points],
                    "complete": len(points) == len(SCAN_ALPHAS)})


def build_scan_panel(explorer: Explorer, compare, text_only, image) -> None:
    with gr.Accordion("α scan: the current plan scaled from the VLM (0) to the full plan (1)", open=False,
                      elem_id="alpha-scan"):
        with gr.Row():
            run = gr.Button("Scan α", elem_id="scan")
            stop = gr.Button("Stop scan", elem_id="stop-scan")
            status = gr.Markdown("", elem_id="scan-status")
        plot = gr.Plot(label="p(top token), p(gold) against α", elem_id="scan-plot")
    inputs = [image, compare.question, text_only, compare.donor, *compare.plan_inputs]
    run.click(bind(with_panel(on_scan), explorer), inputs, [plot, status], **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)


# -- API ------------------------------------------------------------------------------------------

@endpoint
def api_distribution(explorer: Explorer, plan_yaml: str | dict, question: str, image: ImageArg = None,
                     top_k: int = 10, request: gr.Request = None) -> dict:
    """The next-token distribution under a plan: {"tokens": [[token, p], ...], "p_gold": p or null}.
    `image`: None, or the file as gradio_client's handle_file sends it (ui.api_args)."""
    explorer.admit(request)
    plan, q, img = plan_arg(plan_yaml), question_arg(question), image_arg(image)
    result = explorer.answerer.distribution(plan, q, img, top_k=int_arg(top_k, "top_k", 1, 50),
                                            gold=gold_for(explorer, q))
    return {"tokens": result["tokens"], "p_gold": result["p_gold"]}


@endpoint
def api_scan(explorer: Explorer, plan_yaml: str | dict, question: str, image: ImageArg = None,
             alphas: list[float] | float | str = "", request: gr.Request = None) -> list:
    """The plan scaled by each α: [{alpha, answer, p_top, p_gold, kl_to_base}, ...]. `alphas`: a list of
    up to 21 numbers in [0, 1] (a real list or JSON text; default 0, 0.1, …, 1)."""
    explorer.admit(request)
    plan, q, img = plan_arg(plan_yaml), question_arg(question), image_arg(image)
    chosen = numbers_arg(alphas, "alphas", 0.0, 1.0, MAX_SCAN_ALPHAS, default=list(SCAN_ALPHAS))
    keys = ("alpha", "answer", "p_top", "p_gold", "kl_to_base")
    return [{k: point.get(k) for k in keys} for point in
            explorer.answerer.alpha_scan(plan, q, img, alphas=chosen, gold=gold_for(explorer, q))]


def register_probe_api(explorer: Explorer) -> None:
    gr.api(bind(api_distribution, explorer), api_name="distribution", **GPU)
    gr.api(bind(api_scan, explorer), api_name="scan", **GPU)
