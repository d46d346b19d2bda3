"""ZeroGPU: model calls go through the real `spaces.GPU` (a no-op off a ZeroGPU Space), and a worker in a
process forked from the app — as ZeroGPU runs each call — re-applies the plan it is sent, answering as
the plan does whatever the weights held when it was forked."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import spaces
import torch
import yaml

from app import parse_args, space_argv

from merging import MergeEngine, MergePlan, load_pair
from merging.model.known_pairs import TOY_LLM, TOY_VLM
from merging.run import worker as worker_module
from merging.run import zerogpu
from merging.run.generate import GenerationSettings, answer
from merging.run.worker import Donor, ModelWorker
from merging.run.zerogpu import PairJob

QUESTION = "How many times does fox appear in: fox fox fish fox fox dog? Add 2."  # toy item text_plus-00000
DONOR_PLAN = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 1.0}}]})
REPO = Path(__file__).resolve().parents[1]
JOB = PairJob(answer, (QUESTION, None, GenerationSettings(max_new_tokens=4)))


def test_model_calls_go_through_the_real_spaces_decorator():
    assert zerogpu.spaces is spaces and not zerogpu.ON_ZEROGPU  # installed, and this is no ZeroGPU Space
    assert spaces.GPU(duration=zerogpu.GPU_SECONDS)(answer) is answer  # the package's own off-Spaces path
    assert not hasattr(worker_module._on_weights, "zerogpu")  # what spaces marks a wrapped function with
    assert pickle.loads(pickle.dumps(JOB)) == JOB  # ZeroGPU pickles a call's arguments: jobs are data


def _child(key: int, calls, results) -> None:
    """What a ZeroGPU worker process does with a call: unpickle it, run the wrapped function."""
    torch.set_num_threads(1)  # CPU OpenMP threads hang after a fork; a ZeroGPU worker computes on its GPU
    plan, donor_name, job = calls.get(timeout=120)
    worker = worker_module._WORKERS[key]
    donor = Donor(donor_name, worker.engine.pair.donor, worker.engine.pair.layout)
    results.put((worker_module._on_weights(key, plan, donor, job), worker.engine.plan == plan))


def test_a_forked_worker_answers_like_the_plan_it_is_sent():
    pair = load_pair(TOY_VLM, TOY_LLM, dtype="float32")
    worker = ModelWorker(MergeEngine(pair))
    donor = Donor("donor", pair.donor, pair.layout)
    vlm_answer = worker.run(MergePlan(), donor, JOB)
    merged_answer = worker.run(DONOR_PLAN, donor, JOB)  # the app's weights now hold DONOR_PLAN
    assert vlm_answer != merged_answer
    fork = multiprocessing.get_context("fork")
    for plan, expected in ((MergePlan(), vlm_answer), (DONOR_PLAN, merged_answer)):
        calls, results = fork.Queue(), fork.Queue()
        child = fork.Process(target=_child, args=(id(worker), calls, results), daemon=True)
        child.start()
        calls.put((plan, "donor", JOB))  # pickled across, as spaces sends a call
        got, holds_plan = results.get(timeout=120)
        child.join(timeout=60)
        assert (got, holds_plan) == (expected, True)
    assert worker.run(None, donor, JOB) == merged_answer  # the app's own weights: untouched by the children


def test_a_gradio_sdk_space_starts_with_the_docker_images_options():
    """A Gradio-SDK Space runs `python app.py` bare; `space_argv` gives it public mode on 0.0.0.0:7860 (on
    ZeroGPU on cuda in bfloat16), the pair from the Space's variables; off Spaces nothing changes."""
    env = {"SPACE_ID": "someone/mergescope", "SPACES_ZERO_GPU": "true", "MERGESCOPE_VLM": "a/vlm",
           "MERGESCOPE_LLM": "a/llm"}
    args = parse_args(space_argv([], env))
    assert (args.host, args.port, args.public, args.export_dir, args.proxy_hops) == ("0.0.0.0", 7860, True, "", 1)
    assert (args.device, args.dtype, args.vlm, args.llm, args.base) == ("cuda", "bfloat16", "a/vlm", "a/llm", None)
    assert parse_args(space_argv([], {"SPACE_ID": "x/y"})).device == "cpu"  # a CPU Gradio Space
    assert space_argv([], {}) == [] and space_argv(["--port", "1"], env) == ["--port", "1"]


def test_the_readmes_zerogpu_front_matter_names_the_pinned_gradio():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("**ZeroGPU Space**"):].split("```yaml")[1].split("```")[0]
    front = yaml.safe_load(block.replace("---", ""))
    gradio_pin = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                      if line.startswith("gradio=="))
    assert (front["sdk"], front["app_file"], front["python_version"]) == ("gradio", "app.py", "3.11")
    assert f"gradio=={front['sdk_version']}" == gradio_pin
