"""The data flow of one question: plan → cache key → hit, or (lock → apply → generate → store).

This is what the CLI and the UI call. The base VLM's answer is just the empty plan, cached the same
way. Apply and generate run under the engine's lock, so concurrent callers with different plans
never see each other's weights.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from typing import Any, Iterator

from PIL import Image

from cache import AnswerCache

from .engine import MergeEngine
from .generate import GenerationSettings, answer, stream_answer, tokenizer_of
from .plan import MergePlan

# Bump when a change to the engine or generation would change answers for the same configuration.
ENGINE_VERSION = "2"  # 2: DARE masks seeded per tensor


def image_digest(image: Image.Image | None) -> str | None:
    """Hash of the decoded pixels (mode, size, bytes): the same picture hits whatever its file format."""
    if image is None:
        return None
    hasher = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    hasher.update(image.tobytes())
    return hasher.hexdigest()


class Answerer:
    def __init__(self, engine: MergeEngine, cache: AnswerCache | None = None):
        self.engine, self.cache = engine, cache

    def config(self, plan: MergePlan, question: str, image: Image.Image | None,
               settings: GenerationSettings) -> dict:
        """Everything that determines an answer: the cache key's contents."""
        return {"kind": "answer", "engine": ENGINE_VERSION, "models": self.engine.pair.fingerprints(),
                "grams": self.engine.gram_fingerprints(),
                "plan": plan.to_dict(), "image": image_digest(image), "question": question.strip(),
                "generation": settings.as_dict()}

    @contextmanager
    def _merged(self, plan: MergePlan) -> Iterator[None]:
        """The weights hold `plan` (and no other caller can change them) inside this block."""
        with self.engine.lock:
            self.engine.apply(plan)
            yield

    def ask(self, plan: MergePlan, question: str, image: Image.Image | None = None,
            settings: GenerationSettings = GenerationSettings()) -> dict[str, Any]:
        """{"answer", "cached", "seconds", "plan_hash"} for `question` under `plan`."""
        *_, final = self.stream(plan, question, image, settings, live=False)
        del final["done"]
        return final

    def stream(self, plan: MergePlan, question: str, image: Image.Image | None = None,
               settings: GenerationSettings = GenerationSettings(), live: bool = True) -> Iterator[dict[str, Any]]:
        """Like `ask`, but yields the answer as it grows (`"done": False`) before the final result.

        A cache hit yields once. The engine lock is held from apply to the last token, so the
        weights cannot change under a running answer; it is held by the generating thread, never
        across a `yield` (see `stream_answer`).
        """
        start = time.perf_counter()
        config = self.config(plan, question, image, settings)
        result = {"answer": "", "cached": False, "seconds": 0.0, "plan_hash": plan.hash(), "done": False}
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is not None:
            yield dict(result, answer=hit["answer"], cached=True, done=True, seconds=time.perf_counter() - start)
            return
        if live:
            text = ""
            for text in stream_answer(self.engine.pair, question, image, settings, guard=lambda: self._merged(plan)):
                yield dict(result, answer=text, seconds=time.perf_counter() - start)
        else:
            with self._merged(plan):
                text = answer(self.engine.pair, question, image, settings)
        seconds = time.perf_counter() - start
        if self.cache is not None:
            tokens = len(tokenizer_of(self.engine.pair).encode(text, add_special_tokens=False))
            self.cache.put(config, {"answer": text, "tokens": tokens, "seconds": seconds})
        yield dict(result, answer=text, seconds=seconds, done=True)
