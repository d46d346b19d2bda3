"""Shared fixtures: tiny model pairs built locally (never downloaded), once per test session."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers.utils import logging as hf_logging  # noqa: E402

from cache import AnswerCache  # noqa: E402
from merging import MergeEngine, load_pair  # noqa: E402
from merging.evals.eval_sets import load_eval_set  # noqa: E402
from merging.io import checkpoint  # noqa: E402
from merging.io.checkpoint import Checkpoint  # noqa: E402
from merging.model.known_pairs import TOY_LLM, TOY_VLM, resolve_models  # noqa: E402
from merging.run.answerer import Answerer  # noqa: E402
from toy.tiny import DecoderShape, build_llava_pair, build_qwen_pair  # noqa: E402
from ui.app import build_app  # noqa: E402
from ui.explorer import Explorer  # noqa: E402

hf_logging.disable_progress_bar()
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def qwen_dirs(tmp_path_factory):
    """(vlm_dir, llm_dir): tiny Qwen2.5-VL + Qwen2, fp32, 4 layers."""
    return build_qwen_pair(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="session")
def qwen_bf16_dirs(tmp_path_factory):
    return build_qwen_pair(tmp_path_factory.mktemp("qwen_bf16"), DecoderShape(num_hidden_layers=3),
                           dtype=torch.bfloat16, seed=1)


@pytest.fixture(scope="session")
def llava_dirs(tmp_path_factory):
    """(vlm_dir, llm_dir): tiny LLaVA + Llama; the VLM has 3 more vocabulary rows than the donor."""
    return build_llava_pair(tmp_path_factory.mktemp("llava"), vocab_extra=3)


@pytest.fixture
def qwen_pair(qwen_dirs):
    return load_pair(*qwen_dirs)


@pytest.fixture
def qwen_engine(qwen_pair):
    return MergeEngine(qwen_pair)


@pytest.fixture
def file_checks(monkeypatch):
    """{"n": how many times a safetensors file was checked for changes (one os.stat each)} from now on."""
    checks = {"n": 0}
    real = checkpoint._SafetensorsFile.check

    def counted(self):
        checks["n"] += 1
        return real(self)
    monkeypatch.setattr(checkpoint._SafetensorsFile, "check", counted)
    return checks


@pytest.fixture
def failing_method():
    """Registers linear-merge methods that raise `error` on their `call`-th tensor: stand-ins for an
    out-of-memory or device error mid-apply. Returns the method's name; unregistered afterwards."""
    from merging.methods import REGISTRY, linear, merge_method
    names = []

    def make(name: str, call: int, error: BaseException) -> str:
        calls = {"n": 0}

        def fn(out, vlm, donor, base, alpha):
            calls["n"] += 1
            if calls["n"] == call:
                raise error
            linear(out, vlm, donor, base, alpha)

        merge_method(name, formula=f"linear, but tensor {call} raises {type(error).__name__}")(fn)
        names.append(name)
        return name

    yield make
    for name in names:
        del REGISTRY[name]


def lm_state(pair) -> dict[str, torch.Tensor]:
    """A copy of every mergeable VLM tensor, to compare weights before and after."""
    params = dict(pair.vlm.named_parameters())
    return {s.name: params[s.name].detach().clone() for s in pair.layout.slots}


def assert_same_weights(pair, expected: dict[str, torch.Tensor]) -> None:
    params = dict(pair.vlm.named_parameters())
    differing = [n for n, t in expected.items() if not torch.equal(params[n], t)]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def api_explorer(tmp_path_factory):
    """A public-mode explorer on the toy pair (float32, its own cache), for the API endpoint tests."""
    engine = MergeEngine(load_pair(TOY_VLM, TOY_LLM, dtype="float32"))
    return Explorer(Answerer(engine, AnswerCache(tmp_path_factory.mktemp("api") / "cache")), public=True,
                    rate_limit=100_000)


@pytest.fixture(scope="module")
def api_original(api_explorer):
    """The VLM's own weights (the engine is fresh: it holds the empty plan)."""
    return {n: p.detach().clone() for n, p in api_explorer.engine.pair.vlm.named_parameters()}


# The browser-test harness: the explorer on the shipped toy pair behind a real Gradio server, and Debian's
# chromium driven by playwright. Each module that uses `server` gets its own, so its cache starts empty.
CHROMIUM = "/usr/bin/chromium"
NEEDS_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                                    reason="Debian chromium is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toy_explorer(root: Path) -> Explorer:
    """The explorer on the shipped toy pair as app.py builds it (the default pair, both donors, its eval
    set), with its cache, exports and searches under `root`."""
    models = resolve_models(None, None, None, None)
    donors = {label: Checkpoint(path) for label, path in models.other_donors}
    answerer = Answerer(MergeEngine(load_pair(models.vlm, models.llm, models.base)), AnswerCache(root / "cache"),
                        donors, models.donor_label)
    return Explorer(answerer, load_eval_set(models.eval_set), models.eval_set, root / "exports",
                    search_dir=root / "search", answer_tokens=models.answer_tokens)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer on the shipped toy pair, built as app.py builds it (the default pair, both donors)."""
    root = tmp_path_factory.mktemp("ui")
    explorer = toy_explorer(root)
    app = build_app(explorer).queue(default_concurrency_limit=1)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}", explorer
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


BROWSER_WAIT_MS = 120_000  # a busy machine answers a click in seconds, not milliseconds


def new_page(browser, width: int = 1400, height: int = 1700):
    """A page whose waits (clicks, fills, wait_for_function) allow a busy machine's pace."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(BROWSER_WAIT_MS)
    return page


@pytest.fixture
def page(server, browser):
    page = new_page(browser)
    page.goto(server[0], wait_until="domcontentloaded")
    page.wait_for_selector("#curve svg", timeout=60_000)
    yield page
    page.close()


def wait_status(page, selector: str, text: str, timeout: int = 180_000) -> str:
    page.wait_for_function(f"() => (document.querySelector('{selector}')?.innerText || '').includes({json.dumps(text)})",
                           timeout=timeout)
    return page.locator(selector).inner_text()


def fill_number(page, selector: str, value: int | float, tries: int = 5) -> None:
    """Types `value` into the number box at `selector` (its `input`) and leaves it, until the box holds it.

    Why more than one try: a box in an accordion that has just opened can be mounted a second time with its
    default value (seen in CI and here: `#skill-items` read its default 40 for 6 s after `fill("5")` and
    Tab, in one run of test_ui.py + test_ui_class.py out of three), so a first fill can be lost. Each try
    waits for the value to read back and to hold for a moment; after `tries` lost fills it fails with what
    the box shows."""
    box, text = page.locator(f"{selector} input"), str(value)
    check = f"() => document.querySelector('{selector} input')?.value === {json.dumps(text)}"
    for _ in range(tries):
        box.fill(text)
        box.press("Tab")  # a number box reports its value when it loses focus
        page.wait_for_timeout(500)  # a second mount comes right after the first
        if page.evaluate(check):
            return
    raise AssertionError(f"{selector} shows {box.input_value()!r} after {tries} fills of {text!r}")


