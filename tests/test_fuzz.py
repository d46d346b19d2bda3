"""Property-based fuzzing: plan parsing and the public answer API either work or say clearly why not."""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import AnswerCache
from merging import MergeEngine, MergePlan, PlanError, load_pair
from merging.plan.curves import PRESETS
from merging.model.layout import KNOWN_COMPONENTS
from merging.methods import REGISTRY
from merging.run.answerer import Answerer
from ui.app import Explorer, build_app

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)
curve = st.fixed_dictionaries({"preset": st.sampled_from(sorted(PRESETS) + ["bogus"])},
                              optional={"value": scalars, "start": scalars, "end": scalars, "layer": scalars,
                                        "values": st.lists(st.floats(-0.5, 1.5), max_size=6), "non_layer": scalars})
rule = st.fixed_dictionaries({"components": st.lists(st.sampled_from(sorted(KNOWN_COMPONENTS) + ["vision"]),
                                                     max_size=3), "curve": curve},
                             optional={"method": st.sampled_from(sorted(REGISTRY) + ["average"]),
                                       "params": st.dictionaries(st.sampled_from(["density", "lambda", "seed", "x"]),
                                                                 scalars, max_size=2)})
plans = st.one_of(junk, st.fixed_dictionaries({"rules": st.lists(rule, max_size=3)}))


@settings(max_examples=400, deadline=None, derandomize=True)  # reproducible in CI
@given(plans)
def test_plan_parsing_accepts_or_explains(data):
    try:
        plan = MergePlan.from_dict(data)
    except PlanError as exc:
        assert str(exc)  # a message, never an empty error
        return
    assert MergePlan.from_text(plan.to_yaml()) == plan  # what parses, round-trips
    assert MergePlan.from_text(plan.canonical_json()).hash() == plan.hash()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_plan_text_never_crashes(text):
    try:
        MergePlan.from_text(text)
    except PlanError:
        pass


@pytest.fixture(scope="module")
def api(qwen_dirs, tmp_path_factory):
    from gradio_client import Client
    explorer = Explorer(Answerer(MergeEngine(load_pair(*qwen_dirs)), AnswerCache(tmp_path_factory.mktemp("f"))),
                        public=True, rate_limit=10_000)
    app = build_app(explorer).queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=False)
    yield Client(f"http://127.0.0.1:{port}", verbose=False), explorer
    app.close()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan_text=st.one_of(st.text(max_size=60), plans.map(lambda p: __import__("yaml").safe_dump(p))),
       question=st.text(max_size=40), tokens=st.integers(-3, 100))
def test_public_api_answers_or_explains(api, plan_text, question, tokens):
    client, explorer = api
    try:
        result = client.predict(plan_text, question, tokens, api_name="/answer")
    except Exception as exc:  # the server answered with a clear message: no traceback, no crash
        message = str(exc)
        assert "Traceback" not in message
        assert any(word in message for word in ("plan", "rules", "question", "max_new_tokens", "α", "curve",
                                               "component", "method", "must", "unknown", "missing"))
        return
    assert set(result) == {"answer", "cached", "seconds", "plan_hash"}
    assert explorer.engine.plan.hash() == result["plan_hash"] or result["cached"]
