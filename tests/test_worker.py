"""The model worker owns the weights: every job runs on its one thread, with its plan applied, in order."""

import threading

import pytest
from PIL import Image

from merging.errors import PlanError
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings, answer
from merging.run.worker import Donor, ModelWorker

IMAGE = Image.new("RGB", (56, 56), (250, 200, 0))
PLAN = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                       "curve": {"preset": "constant", "value": 0.5}}]})


@pytest.fixture
def worker(qwen_engine):
    return ModelWorker(qwen_engine), Donor("donor", qwen_engine.pair.donor, qwen_engine.pair.layout)


def test_jobs_run_on_one_thread_with_their_plan_applied(worker):
    model_worker, donor = worker
    seen = [model_worker.run(plan, donor, lambda engine: (threading.current_thread().name, engine.plan))
            for plan in (PLAN, MergePlan(), PLAN)]
    assert {name for name, _ in seen} == {seen[0][0]} and seen[0][0].startswith("model-worker")
    assert seen[0][0] != threading.current_thread().name
    assert [plan for _, plan in seen] == [PLAN, MergePlan(), PLAN]


def test_a_job_inside_a_job_runs_inline(worker):
    model_worker, donor = worker
    inner = model_worker.run(PLAN, donor, lambda engine: model_worker.run(None, donor, lambda e: e.plan))
    assert inner == PLAN  # queued, it would have waited for itself


def test_a_failing_apply_reaches_the_caller_and_leaves_the_weights_whole(worker):
    model_worker, donor = worker
    bad = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                          "curve": {"preset": "custom", "values": [0.5]}}]})
    model_worker.run(PLAN, donor, lambda engine: None)
    with pytest.raises(PlanError):
        model_worker.run(bad, donor, lambda engine: None)
    assert model_worker.run(None, donor, lambda engine: engine.plan) == PLAN


def test_a_stream_whose_apply_fails_raises_instead_of_waiting(worker):
    model_worker, donor = worker
    bad = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "linear",
                                          "curve": {"preset": "custom", "values": [0.5]}}]})
    with pytest.raises(PlanError):
        list(model_worker.stream(bad, donor, "What colour?", IMAGE, GenerationSettings(max_new_tokens=4)))


def test_an_abandoned_stream_frees_the_worker(worker):
    model_worker, donor = worker
    settings = GenerationSettings(max_new_tokens=64)
    stream = model_worker.stream(PLAN, donor, "Describe it.", IMAGE, settings)
    next(stream)
    stream.close()  # a closed tab
    short = GenerationSettings(max_new_tokens=4)
    assert model_worker.run(PLAN, donor, lambda engine: answer(engine.pair, "What colour?", IMAGE, short)) == \
        answer(model_worker.engine.pair, "What colour?", IMAGE, short)
