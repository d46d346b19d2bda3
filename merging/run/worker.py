"""The model worker: one thread owns the resident weights and runs jobs on them, one at a time.

A job names a plan, the donor it merges with, and what to run on the weights (a function of the
engine). The worker puts that donor in, applies the plan (writing only the tensors that change) and
runs the function — all on its own thread, so a plan and the forward passes that read it never
interleave with another job's, and no caller holds a lock across the weights or is called back to
apply a merge. The web server and the CLI queue jobs; the worker owns the model (FastChat's model
worker is the model of the split).

A job submitted from inside a job (the worker's own thread) runs at once, inline: queueing it would
wait for itself.

What a job does to the weights is one call of `_on_weights`, wrapped by `zerogpu.on_gpu`: on a ZeroGPU
Space that call runs in a GPU worker process (merging/run/zerogpu.py), elsewhere right here. The call
finds its worker by key (the worker itself is never pickled), re-applies the job's plan every time, and
in a process it has not run in before first takes the weights back to the VLM's (`_adopt_process`).
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from merging.engine.merge_engine import MergeEngine
from merging.io.checkpoint import Checkpoint
from merging.model.layout import Layout
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings, build_inputs, generate_kwargs, text_tokenizer, trim_stop
from merging.run.zerogpu import on_gpu

T = TypeVar("T")


@dataclass(frozen=True)
class Donor:
    """A donor LLM a job merges with: its label, checkpoint and the layout mapping it onto the VLM."""
    name: str
    checkpoint: Checkpoint
    layout: Layout


class _UntilSet(StoppingCriteria):
    """Stops generation once `event` is set (the consumer went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ModelWorker:
    """Runs jobs on `engine`'s resident weights on one thread of its own, in the order they come.

    The thread lives as long as the worker (a pool of one thread: it ends when the worker is
    garbage-collected). A job's exception reaches its caller; the engine's own recovery keeps the
    weights whole when an apply fails half-way.
    """

    def __init__(self, engine: MergeEngine):
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")
        self._inside = threading.local()  # set on the worker's thread while it runs a job
        self._pid = os.getpid()           # the process whose weights the engine's plan describes
        _WORKERS[id(self)] = self

    def submit(self, plan: MergePlan | None, donor: Donor, job: Callable[[MergeEngine], T]) -> Future:
        """Queue `job(engine)` to run with `donor` in and `plan` applied (None: the weights as they are)."""
        return self._pool.submit(self._run, plan, donor, job)

    def run(self, plan: MergePlan | None, donor: Donor, job: Callable[[MergeEngine], T]) -> T:
        """`submit`, then wait for the job's result (or raise its exception)."""
        if getattr(self._inside, "job", False):
            return self._run(plan, donor, job)
        return self.submit(plan, donor, job).result()

    def _run(self, plan: MergePlan | None, donor: Donor, job: Callable[[MergeEngine], T]) -> T:
        outer = getattr(self._inside, "job", False)
        self._inside.job = True
        try:
            with self.engine.lock:  # held by this thread only; another holder (a test, an export) waits us out
                return _on_weights(id(self), plan, donor, job)
        finally:
            self._inside.job = outer

    def _adopt_process(self) -> None:
        """In a process this worker has not run in (a ZeroGPU worker forked from the app): a fresh engine
        lock (a thread that held it there does not exist here; the write pool renews its own threads),
        and the weights back to the VLM's — they hold the VLM's or the recorded plan's, and `restore`
        makes either the VLM's — so the next apply starts from a known state."""
        if os.getpid() == self._pid:
            return
        self._pid = os.getpid()
        self.engine.lock = threading.RLock()
        self.engine.restore()

    def stream(self, plan: MergePlan, donor: Donor, question: str, image: Image.Image | None,
               settings: GenerationSettings) -> Iterator[str]:
        """Yield the answer so far, growing token by token, as the worker generates it under `plan`; the
        last value equals `generate.answer`'s. Not on ZeroGPU (the streamer is a closure of this process:
        the Answerer asks for the whole answer there). A consumer that stops iterating half-way (a closed tab)
        stops generation at the next token, so the worker is free again at once."""
        pair = self.engine.pair
        streamer = TextIteratorStreamer(text_tokenizer(pair.processor), skip_prompt=True, skip_special_tokens=True)
        abandoned = threading.Event()

        def generate(engine: MergeEngine) -> None:
            inputs = build_inputs(engine.pair, question, image)
            with torch.no_grad():
                engine.pair.vlm.generate(**inputs, **generate_kwargs(engine.pair, settings), streamer=streamer,
                                         stopping_criteria=StoppingCriteriaList([_UntilSet(abandoned)]))

        done = self.submit(plan, donor, generate)
        # also when the apply or the inputs failed: the consumer must never wait for a token that cannot come
        done.add_done_callback(lambda _: streamer.end())
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield trim_stop(text, settings.stop)
        finally:  # normal end, error, or the consumer closed us (GeneratorExit)
            abandoned.set()
        done.result()  # the job's exception, if it had one


_WORKERS: weakref.WeakValueDictionary[int, ModelWorker] = weakref.WeakValueDictionary()  # key → worker


@on_gpu
def _on_weights(key: int, plan: MergePlan | None, donor: Donor, job: Callable[[MergeEngine], T]) -> T:
    """One model call: `donor` in, `plan` applied (None: the weights as they are), `job(engine)`'s result —
    in a ZeroGPU worker process on a ZeroGPU Space (`zerogpu.on_gpu`), else on the calling thread."""
    worker = _WORKERS[key]
    worker._adopt_process()
    worker.engine.set_donor(donor.checkpoint, donor.layout)
    if plan is not None:
        worker.engine.apply(plan)
    return job(worker.engine)
