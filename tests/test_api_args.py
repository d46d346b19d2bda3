"""Every API endpoint takes any JSON value in any argument and answers a result or a one-line gr.Error,
a refusal within 2 s, with the resident weights at a known plan afterwards; images arrive as
gradio_client.handle_file sends them (issue #25)."""

from __future__ import annotations

import shutil
import socket
import time

import gradio as gr
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merging import MergeEngine, MergePlan
from merging.model.known_pairs import TOY_EVAL
from ui.api import api_answer
from ui.app import build_app
from ui.explorer import bind
from ui.guard import upload_folder
from ui.probe_panel import api_distribution, api_scan

TOY_IMAGE = TOY_EVAL.parent / "images" / "colour-00000.png"
PLAN = "rules: [{components: [all], curve: {preset: constant, value: 0.5}}]"
REFUSAL_SECONDS = 2.0


@pytest.fixture(scope="module")
def uploaded():
    """The toy picture as an upload of this app (the only files an image argument may name)."""
    folder = upload_folder() / "test_api_args"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "colour.png"
    shutil.copy(TOY_IMAGE, path)
    yield str(path)
    shutil.rmtree(folder, ignore_errors=True)


def _nest(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 80),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
big = st.integers(0, 70_000).map(lambda n: "a" * n)                              # sizes past every limit
deep = st.integers(1, 400).map(lambda d: "[" * d + "]" * d)                      # nesting, as JSON text
nested = st.integers(1, 200).map(_nest)                                          # nesting, as a real value
plans = st.sampled_from(["", "rules: []", PLAN, '{"rules": []}', "rules: [{curve: {preset: nope}}]",
                         "&a [*a]", "- 1"]) | st.just({"rules": []})
questions = st.sampled_from(["What colour?", "Hello?", "", " ", "x" * 2001])
numbers = st.lists(st.floats(0, 1), min_size=1, max_size=4)


def anything(*useful):
    return st.one_of(json_values, big, deep, nested, *useful)


def _images(path: str):
    return st.one_of(st.just(path), st.just({"path": path, "meta": {"_type": "gradio.FileData"}}),
                     st.just("/etc/passwd"), st.just({"path": "/etc/hostname"}), st.just({"url": "data:image/png;base64,"}),
                     st.just(str(TOY_IMAGE)), st.just(path + "\x00"), st.none())


def _call(explorer, endpoint, *args):
    """(result or None, the gr.Error's message or None, seconds); any other exception fails the test."""
    start = time.perf_counter()
    try:
        result, message = bind(endpoint, explorer)(*args), None
    except gr.Error as exc:
        result, message = None, exc.message
    return result, message, time.perf_counter() - start


def check_weights_hold_a_known_plan(engine: MergeEngine, original: dict) -> None:
    """The resident weights are exactly `engine.plan` merged: restoring gives the original weights back,
    and applying the plan again gives the same weights as before."""
    params = dict(engine.pair.vlm.named_parameters())
    plan = engine.plan
    now = {n: p.detach().clone() for n, p in params.items()}
    engine.restore()
    assert all(torch.equal(params[n], t) for n, t in original.items()), "restore did not give the VLM back"
    engine.apply(plan)
    assert all(torch.equal(params[n], t) for n, t in now.items()), "the weights were not the plan's"


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_endpoint_answers_or_explains_in_one_line(api_explorer, api_original, uploaded, data):
    endpoint = data.draw(st.sampled_from(["answer", "distribution", "scan"]))
    useful = [plans, questions]
    if endpoint == "answer":
        useful.append(st.integers(-3, 5000))
    else:
        useful.append(_images(uploaded))
        useful.append(st.integers(-3, 60) if endpoint == "distribution" else
                      st.one_of(numbers, numbers.map(str), st.just(""), st.floats(0, 1)))
    # one argument (or none) gets any JSON value; the others one a caller would send, valid or not
    hostile = data.draw(st.sampled_from([None, *range(len(useful))]))
    args = tuple(data.draw(anything() if i == hostile else kind) for i, kind in enumerate(useful))
    fn = {"answer": api_answer, "distribution": api_distribution, "scan": api_scan}[endpoint]
    result, message, seconds = _call(api_explorer, fn, *args)
    if message is not None:
        assert message and "\n" not in message and len(message) <= 300 and "Traceback" not in message
    else:
        assert result is not None
    # a refusal costs no model time, whatever was sent: bounded here; a model run's time is measured by
    # benchmarks/soak.py (stalls over 2 s), not by a timed test on a shared machine
    assert message is None or seconds < REFUSAL_SECONDS, f"/{endpoint} took {seconds:.1f} s to refuse"
    check_weights_hold_a_known_plan(api_explorer.engine, api_original)


def test_scan_takes_a_real_list_a_number_and_json_text(api_explorer):
    as_list = bind(api_scan, api_explorer)(PLAN, "What colour?", None, [0.0, 0.5, 1.0])
    assert [p["alpha"] for p in as_list] == [0.0, 0.5, 1.0]
    assert bind(api_scan, api_explorer)(PLAN, "What colour?", None, "[0, 0.5, 1]") == as_list
    assert [p["alpha"] for p in bind(api_scan, api_explorer)(PLAN, "What colour?", None, 0.5)] == [0.5]
    with pytest.raises(gr.Error, match=r"alphas: 2 is not a number in \[0, 1\]"):
        bind(api_scan, api_explorer)(PLAN, "What colour?", None, [0.5, 2])


@pytest.fixture(scope="module")
def client(api_explorer):
    from gradio_client import Client
    app = build_app(api_explorer).queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=False)
    yield Client(f"http://127.0.0.1:{port}", verbose=False)
    app.close()


def test_images_arrive_as_handle_file_sends_them(client, api_explorer):
    from gradio_client import handle_file
    from merging.io.images import read_image
    direct = api_explorer.answerer.distribution(MergePlan(), "What colour?", read_image(TOY_IMAGE), top_k=3)
    sent = client.predict("", "What colour?", handle_file(str(TOY_IMAGE)), 3, api_name="/distribution")
    assert sent["tokens"] == direct["tokens"]
    text_only = client.predict("", "What colour?", None, 3, api_name="/distribution")
    assert text_only["tokens"] != sent["tokens"]  # the image was read, not dropped
    scan = client.predict(PLAN, "What colour?", handle_file(str(TOY_IMAGE)), [0.0, 1.0], api_name="/scan")
    assert [p["alpha"] for p in scan] == [0.0, 1.0] and scan[0]["answer"]
    with pytest.raises(Exception, match="other paths are refused"):
        client.predict("", "What colour?", "/etc/hostname", 3, api_name="/distribution")
