"""The data flow of one question: plan → cache key → hit, or (lock → apply → generate → store).

This is what the CLI and the UI call. The base VLM's answer is just the empty plan, cached the same
way. Apply and generate run under the engine's lock, so concurrent callers with different plans
never see each other's weights.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

from PIL import Image

from cache import AnswerCache

from .checkpoint import Checkpoint
from .engine import MergeEngine
from .errors import MergescopeError
from .generate import (GenerationSettings, answer, answer_batch, default_batch_size, stream_answer,
                       text_tokenizer)
from .pair import ModelPair
from .plan import MergePlan

DEFAULT_DONOR = "donor"  # the label of the pair's own donor when no other is named

# Bump when a change to the engine or generation would change answers for the same configuration.
ENGINE_VERSION = "2"  # 2: DARE masks seeded per tensor


ImageSource = Image.Image | None | Callable[[], Image.Image | None]  # an image, or a function that loads it


def _load(image: ImageSource) -> Image.Image | None:
    return image() if callable(image) else image


def image_digest(image: Image.Image | None) -> str | None:
    """Hash of the decoded pixels (mode, size, bytes): the same picture hits whatever its file format."""
    if image is None:
        return None
    hasher = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    hasher.update(image.tobytes())
    return hasher.hexdigest()


class Answerer:
    """Answers under a plan, cached; with `donors`, each request may name which donor LLM it merges.

    `donors` maps a label to a donor checkpoint of the same architecture as the pair's own, which is
    `DEFAULT_DONOR` unless `default_donor` names it otherwise. Each is checked against the VLM at once.
    """

    def __init__(self, engine: MergeEngine, cache: AnswerCache | None = None,
                 donors: dict[str, Checkpoint] | None = None, default_donor: str = DEFAULT_DONOR):
        self.engine, self.cache = engine, cache
        self.default_donor = default_donor
        self.donors: dict[str, Checkpoint] = {default_donor: engine.pair.donor, **(donors or {})}
        self._layouts = {name: engine.pair.layout if ckpt is engine.pair.donor else engine.donor_layout(ckpt)
                         for name, ckpt in self.donors.items()}

    def donor_name(self, name: str | None) -> str:
        """`name` checked against the donors on offer (None: the default donor)."""
        name = self.default_donor if name is None else name
        if name not in self.donors:
            raise MergescopeError(f"unknown donor {name!r}; choose one of {list(self.donors)}")
        return name

    def _donor_for(self, plan: MergePlan, name: str | None) -> str:
        # the pure VLM involves no donor: its answers are shared by all of them
        return self.donor_name(name) if plan.rules else self.default_donor

    def pair_with(self, donor: str | None = None) -> ModelPair:
        """The pair as seen with `donor`, for reading weights (inspect); the resident VLM is shared."""
        name = self.donor_name(donor)
        return replace(self.engine.pair, donor=self.donors[name], layout=self._layouts[name])

    def config(self, plan: MergePlan, question: str, image: Image.Image | None,
               settings: GenerationSettings, donor: str | None = None) -> dict:
        """Everything that determines an answer: the cache key's contents."""
        checkpoint = self.donors[self._donor_for(plan, donor)]
        models = dict(self.engine.pair.fingerprints(), donor=checkpoint.fingerprint())
        return {"kind": "answer", "engine": ENGINE_VERSION, "models": models,
                "grams": self.engine.gram_fingerprints(checkpoint),
                "plan": plan.to_dict(), "image": image_digest(image), "question": question.strip(),
                "generation": settings.as_dict()}

    @contextmanager
    def holding(self, donor: str | None = None) -> Iterator[MergeEngine]:
        """The engine with `donor` in, and no other caller, for the block (e.g. to export a merge)."""
        name = self.donor_name(donor)
        with self.engine.lock:
            self.engine.set_donor(self.donors[name], self._layouts[name])
            yield self.engine

    @contextmanager
    def _merged(self, plan: MergePlan, donor: str | None) -> Iterator[None]:
        """The weights hold `plan` merged with `donor` (and no other caller can change them) in this block."""
        with self.holding(self._donor_for(plan, donor)) as engine:
            engine.apply(plan)
            yield

    def ask(self, plan: MergePlan, question: str, image: Image.Image | None = None,
            settings: GenerationSettings = GenerationSettings(), donor: str | None = None) -> dict[str, Any]:
        """{"answer", "cached", "seconds", "plan_hash"} for `question` under `plan` (merged with `donor`)."""
        *_, final = self.stream(plan, question, image, settings, live=False, donor=donor)
        del final["done"]
        return final

    def stream(self, plan: MergePlan, question: str, image: Image.Image | None = None,
               settings: GenerationSettings = GenerationSettings(), live: bool = True,
               donor: str | None = None) -> Iterator[dict[str, Any]]:
        """Like `ask`, but yields the answer as it grows (`"done": False`) before the final result.

        A cache hit yields once. The engine lock is held from apply to the last token, so the
        weights cannot change under a running answer; it is held by the generating thread, never
        across a `yield` (see `stream_answer`).
        """
        start = time.perf_counter()
        config = self.config(plan, question, image, settings, donor)
        result = {"answer": "", "cached": False, "seconds": 0.0, "plan_hash": plan.hash(), "done": False}
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is not None:
            yield dict(result, answer=hit["answer"], cached=True, done=True, seconds=time.perf_counter() - start)
            return
        if live:
            text = ""
            pieces = stream_answer(self.engine.pair, question, image, settings, guard=lambda: self._merged(plan, donor))
            for text in pieces:
                yield dict(result, answer=text, seconds=time.perf_counter() - start)
        else:
            with self._merged(plan, donor):
                text = answer(self.engine.pair, question, image, settings)
        seconds = time.perf_counter() - start
        self._store(config, text, seconds)
        yield dict(result, answer=text, seconds=seconds, done=True)

    def ask_many(self, plan: MergePlan, requests: list[tuple[str, ImageSource]],
                 settings: GenerationSettings = GenerationSettings(), donor: str | None = None,
                 batch_size: int | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, result) for each of `requests` [(question, image)] under `plan`, as results
        become available: cache hits first, then one batch of answers at a time (`answer_batch`), each
        answer stored in the cache as its batch ends — so a run killed half-way resumes with what it
        finished. `should_stop()` is asked between batches; when it says True, no more are started.
        Results are as `ask`'s; `seconds` is the batch's time shared among its answers. An image may be
        given as a function that loads it (an eval item's `image`), so a large eval set is never decoded
        all at once. Greedy only (MergescopeError for a seeded `settings`).
        """
        configs = [self.config(plan, q, _load(image), settings, donor) for q, image in requests]
        missing = []
        for i, config in enumerate(configs):
            hit = self.cache.get(config) if self.cache is not None else None
            if hit is None:
                missing.append(i)
            else:
                yield i, {"answer": hit["answer"], "cached": True, "seconds": 0.0, "plan_hash": plan.hash()}
        batch_size = batch_size or default_batch_size(self.engine.pair)
        for start in range(0, len(missing), batch_size):
            if should_stop():
                return
            part = missing[start:start + batch_size]
            begin = time.perf_counter()
            with self._merged(plan, donor):
                batch = [(requests[i][0], _load(requests[i][1])) for i in part]
                texts = answer_batch(self.engine.pair, batch, settings, batch_size)
            seconds = (time.perf_counter() - begin) / len(part)
            for i, text in zip(part, texts):
                self._store(configs[i], text, seconds)
                yield i, {"answer": text, "cached": False, "seconds": seconds, "plan_hash": plan.hash()}

    def _store(self, config: dict, text: str, seconds: float) -> None:
        if self.cache is not None:
            tokens = len(text_tokenizer(self.engine.pair.processor).encode(text, add_special_tokens=False))
            self.cache.put(config, {"answer": text, "tokens": tokens, "seconds": seconds})
