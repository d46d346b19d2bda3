"""The data flow of one question: plan → cache key → hit, or (model worker: apply → generate) → store.

This is what the CLI and the UI call: the cache in front of the model worker. The base VLM's answer is
just the empty plan, cached the same way. Apply and generate run as one job on the worker's thread
(merging/run/worker.py), so concurrent callers with different plans never see each other's weights.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence, TypeVar

from PIL import Image

from cache import AnswerCache

from merging.io.checkpoint import Checkpoint
from merging.engine.merge_engine import MergeEngine
from merging.errors import MergescopeError
from merging.run.generate import (GenerationSettings, answer, answer_batch, check_question, default_batch_size,
    text_tokenizer)
from merging.model.pair import ModelPair
from merging.plan.merge_plan import MergePlan
from merging.run.teacher_forcing import reference_logprobs
from merging.run.probe import (TOP_STORED, first_token_id, first_token_logprobs, kl_divergence, probability_of,
    scale_plan, summarize, token_decoder)
from merging.run.runtime import runtime_fingerprint
from merging.run.lens import lens_logprobs, lens_rows
from merging.run.divergence import answer_logprobs, answer_token_ids, divergence_along, first_parting
from merging.run.worker import Donor, ModelWorker
from merging.run.zerogpu import ON_ZEROGPU, PairJob

DEFAULT_DONOR = "donor"  # the label of the pair's own donor when no other is named

SCAN_ALPHAS = tuple(i / 10 for i in range(11))  # 0, 0.1, ..., 1: the default α scan
SCAN_SETTINGS = GenerationSettings(max_new_tokens=8)
GOLD_BATCH = 32  # gold answers scored per forward pass (teacher_forcing.reference_logprobs)

# Bump when a change to the engine or generation would change answers for the same configuration.
ENGINE_VERSION = "2"  # 2: DARE masks seeded per tensor


T = TypeVar("T")
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
    Every model run is a job of the answerer's model worker (`worker`), which owns the weights.
    """

    def __init__(self, engine: MergeEngine, cache: AnswerCache | None = None,
                 donors: dict[str, Checkpoint] | None = None, default_donor: str = DEFAULT_DONOR):
        self.engine, self.cache = engine, cache
        self.default_donor = default_donor
        self.donors: dict[str, Checkpoint] = {default_donor: engine.pair.donor, **(donors or {})}
        self._layouts = {name: engine.pair.layout if ckpt is engine.pair.donor else engine.donor_layout(ckpt)
                         for name, ckpt in self.donors.items()}
        self.worker = ModelWorker(engine)
        self._runtime: dict[str, str] | None = None  # read once from the loaded objects (merging.run.runtime)

    def donor_name(self, name: str | None) -> str:
        """`name` checked against the donors on offer (None: the default donor)."""
        name = self.default_donor if name is None else name
        if name not in self.donors:
            raise MergescopeError(f"unknown donor {name!r}; choose one of {list(self.donors)}")
        return name

    def _donor_for(self, plan: MergePlan, name: str | None) -> str:
        # the pure VLM involves no donor: its answers are shared by all of them
        return self.donor_name(name) if plan.rules else self.default_donor

    def _donor(self, name: str) -> Donor:
        return Donor(name, self.donors[name], self._layouts[name])

    def pair_with(self, donor: str | None = None) -> ModelPair:
        """The pair as seen with `donor`, for reading weights (inspect); the resident VLM is shared."""
        name = self.donor_name(donor)
        return replace(self.engine.pair, donor=self.donors[name], layout=self._layouts[name])

    def config(self, plan: MergePlan, question: str, image: Image.Image | None,
               settings: GenerationSettings, donor: str | None = None) -> dict:
        """Everything that determines an answer: the cache key's contents. Besides the plan, question, image
        and settings: the weights' fingerprints and the runtime (dtype, device, processor, chat template,
        generation config, code versions: `runtime.runtime_fingerprint`)."""
        checkpoint = self.donors[self._donor_for(plan, donor)]
        models = dict(self.engine.pair.fingerprints(), donor=checkpoint.fingerprint())
        if self._runtime is None:
            self._runtime = runtime_fingerprint(self.engine.pair, ENGINE_VERSION)
        return {"kind": "answer", "engine": ENGINE_VERSION, "models": models, "runtime": self._runtime,
                "grams": self.engine.gram_fingerprints(checkpoint),
                "plan": plan.to_dict(), "image": image_digest(image), "question": question.strip(),
                "generation": settings.as_dict()}

    def run(self, job: Callable[[MergeEngine], T], donor: str | None = None, plan: MergePlan | None = None) -> T:
        """`job(engine)` on the model worker, with `donor` in and `plan` applied (None: the weights as they
        are), no other job beside it (e.g. to export a merge); its result or its exception."""
        return self.worker.run(plan, self._donor(self.donor_name(donor)), job)

    def _on_merged(self, plan: MergePlan, donor: str | None, job: Callable[[MergeEngine], T]) -> T:
        """`job(engine)` on the worker with the weights holding `plan` merged with `donor`."""
        return self.worker.run(plan, self._donor(self._donor_for(plan, donor)), job)

    def ask(self, plan: MergePlan, question: str, image: Image.Image | None = None,
            settings: GenerationSettings = GenerationSettings(), donor: str | None = None,
            source: str = "ask") -> dict[str, Any]:
        """{"answer", "cached", "seconds", "plan_hash"} for `question` under `plan` (merged with `donor`);
        `source` as `stream`'s."""
        *_, final = self.stream(plan, question, image, settings, live=False, donor=donor, source=source)
        del final["done"]
        return final

    def stream(self, plan: MergePlan, question: str, image: Image.Image | None = None,
               settings: GenerationSettings = GenerationSettings(), live: bool = True,
               donor: str | None = None, source: str = "ask") -> Iterator[dict[str, Any]]:
        """Like `ask`, but yields the answer as it grows (`"done": False`) before the final result.
        `source` is stored beside a computed answer: "ask" (one question), or what asked it as part of a
        larger record ("compare", "scan"), which History lists as one row in its place.

        A cache hit yields once. Apply and generation are one job of the model worker, so the weights
        cannot change under a running answer (`ModelWorker.stream`). On a ZeroGPU Space the answer comes
        whole (one GPU call whose result crosses back at its end: merging.run.zerogpu).
        """
        start = time.perf_counter()
        config = self.config(plan, question, image, settings, donor)
        result = {"answer": "", "cached": False, "seconds": 0.0, "plan_hash": plan.hash(), "done": False}
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is not None:
            yield dict(result, answer=hit["answer"], cached=True, done=True, seconds=time.perf_counter() - start)
            return
        if live and not ON_ZEROGPU:
            text = ""
            pieces = self.worker.stream(plan, self._donor(self._donor_for(plan, donor)), question, image, settings)
            for text in pieces:
                yield dict(result, answer=text, seconds=time.perf_counter() - start)
        else:
            text = self._on_merged(plan, donor, PairJob(answer, (question, image, settings)))
        seconds = time.perf_counter() - start
        self._store(config, text, seconds, source=source)
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
        all at once. An item whose image cannot be read (or whose question is refused) comes back at once
        as failed: its result has "error" (one line) and an empty "answer", and the others go on.
        Greedy only (MergescopeError for a seeded `settings`).
        """
        configs, missing = {}, []
        for i, (question, image) in enumerate(requests):
            try:  # one unreadable image or bad question fails its item, not the whole run
                configs[i] = self.config(plan, check_question(question), _load(image), settings, donor)
            except MergescopeError as exc:
                yield i, {"answer": "", "cached": False, "seconds": 0.0, "plan_hash": plan.hash(), "error": str(exc)}
                continue
            hit = self.cache.get(configs[i]) if self.cache is not None else None
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
            batch = [(requests[i][0], _load(requests[i][1])) for i in part]
            texts = self._on_merged(plan, donor, PairJob(answer_batch, (batch, settings, batch_size)))
            seconds = (time.perf_counter() - begin) / len(part)
            for i, text in zip(part, texts):
                self._store(configs[i], text, seconds, batched=True)
                yield i, {"answer": text, "cached": False, "seconds": seconds, "plan_hash": plan.hash()}

    def _store(self, config: dict, text: str, seconds: float, batched: bool = False, source: str = "ask") -> None:
        """Cache an answer; `batched` marks one a sweep computed, `source` what asked it (History lists
        sweeps, scans and Compare's questions as one row each)."""
        if self.cache is not None:
            tokens = len(text_tokenizer(self.engine.pair.processor).encode(text, add_special_tokens=False))
            self.cache.put(config, {"answer": text, "tokens": tokens, "seconds": seconds, "batched": batched,
                                    "source": "sweep" if batched else source})

    # -- the next-token distribution (issue #11) -------------------------------------------------
    def distribution_config(self, plan: MergePlan, question: str, image: Image.Image | None,
                            donor: str | None = None, gold: str | None = None) -> dict:
        """The cache key's contents for the distribution under `plan` (kind "distribution"): an
        answer's, less the generation settings (the first token's distribution does not depend on
        them), plus how many tokens are stored; with `gold`, the key of that gold token's probability
        (kind "gold_probability"), stored only where the summary does not list it."""
        config = self.config(plan, question, image, GenerationSettings(), donor)
        del config["generation"]
        config.update(kind="distribution", top=TOP_STORED)
        if gold is not None:
            config.update(kind="gold_probability", gold=gold)
        return config

    def distribution(self, plan: MergePlan, question: str, image: Image.Image | None = None, top_k: int = 10,
                     gold: str | None = None, donor: str | None = None) -> dict[str, Any]:
        """{"tokens": [[token text, p], ...] (the `top_k` most probable first answer tokens, most
        probable first), "p_gold": probability of `gold`'s first token (None without gold), "summary":
        `probe.summarize` of the distribution (what is cached), "cached": whether no forward pass ran}
        under `plan` merged with `donor`. One forward pass on the model worker on a miss. Raises
        MergescopeError for top_k < 1, an empty gold, a bad question or image, PlanError for a bad plan."""
        if top_k < 1:
            raise MergescopeError(f"top_k={top_k} must be ≥ 1")
        gold_id = None if gold is None else first_token_id(self.engine.pair, question, image, gold)
        return self._distribution(plan, question, image, top_k, gold, gold_id, donor)

    def _distribution(self, plan: MergePlan, question: str, image: Image.Image | None, top_k: int,
                      gold: str | None, gold_id: int | None, donor: str | None) -> dict[str, Any]:
        config = self.distribution_config(plan, question, image, donor)
        hit = self.cache.get(config) if self.cache is not None else None
        logprobs = None
        if hit is None:
            logprobs = self._on_merged(plan, donor, PairJob(first_token_logprobs, (question, image)))
            summary = summarize(logprobs, decode=token_decoder(self.engine.pair))
            if self.cache is not None:
                self.cache.put(config, {"summary": summary})
        else:
            summary = hit["summary"]
        p_gold, cached = None, hit is not None
        if gold_id is not None:
            p_gold = probability_of(summary, gold_id)
            if p_gold is None and logprobs is not None:
                p_gold = math.exp(float(logprobs[gold_id]))
                self._put(self.distribution_config(plan, question, image, donor, gold), {"p_gold": p_gold})
            elif p_gold is None:
                p_gold, gold_cached = self._gold_probability(plan, question, image, gold, gold_id, donor)
                cached = cached and gold_cached
        tokens = [[text, p] for _, text, p in summary["top"][:top_k]]
        return {"tokens": tokens, "p_gold": p_gold, "summary": summary, "cached": cached}

    def _gold_probability(self, plan: MergePlan, question: str, image: Image.Image | None, gold: str,
                          gold_id: int, donor: str | None) -> tuple[float, bool]:
        """(p of the gold token, cached) for a gold token the stored summary does not list."""
        config = self.distribution_config(plan, question, image, donor, gold)
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is not None:
            return hit["p_gold"], True
        logprobs = self._on_merged(plan, donor, PairJob(first_token_logprobs, (question, image)))
        p_gold = math.exp(float(logprobs[gold_id]))
        self._put(config, {"p_gold": p_gold})
        return p_gold, False

    def _put(self, config: dict, value: dict) -> None:
        if self.cache is not None:
            self.cache.put(config, value)

    def alpha_scan(self, plan: MergePlan, question: str, image: Image.Image | None = None,
                   alphas: Sequence[float] = SCAN_ALPHAS, gold: str | None = None, donor: str | None = None,
                   settings: GenerationSettings = SCAN_SETTINGS,
                   should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
        """For each α of `alphas`, in order: {"alpha", "answer", "p_top", "p_gold", "kl_to_base", "cached"}
        for `plan` scaled to that α (`probe.scale_plan`: its largest α becomes α, shape kept). "answer" is
        `ask`'s under the scaled plan (the same cache entries, so bit for bit an individual ask's),
        "p_top" the probability of the most probable first token, "p_gold" of `gold`'s first token
        (None without gold), "kl_to_base" KL(base VLM ‖ scaled plan) of the first-token distributions
        in nats (`probe.kl_divergence`), "cached" whether the point needed no model run.
        `should_stop()` is asked before each point; when it says True, the scan ends. Raises PlanError
        for an α outside [0, 1] (before anything runs), MergescopeError as `distribution` does."""
        name = self.donor_name(donor)
        num_layers = self._layouts[name].num_layers
        plans = [(float(a), scale_plan(plan, a, num_layers)) for a in alphas]
        gold_id = None if gold is None else first_token_id(self.engine.pair, question, image, gold)
        base = None
        for alpha, scaled in plans:
            if should_stop():
                return
            base_cached = base is not None  # fetched once per scan: only the first point pays for it
            if base is None:
                base = self._distribution(MergePlan(), question, image, 1, None, None, donor)
                base_cached = base["cached"]
            reply = self.ask(scaled, question, image, settings, donor, source="scan")
            dist = self._distribution(scaled, question, image, 1, gold, gold_id, donor)
            yield {"alpha": alpha, "answer": reply["answer"], "p_top": dist["tokens"][0][1],
                   "p_gold": dist["p_gold"], "kl_to_base": kl_divergence(base["summary"], dist["summary"]),
                   "cached": reply["cached"] and dist["cached"] and base_cached}

    def lens(self, plan: MergePlan, question: str, image: Image.Image | None = None, gold: str | None = None,
             donor: str | None = None) -> list[dict[str, Any]]:
        """The logit lens under `plan` (`merging.run.lens.lens_rows`: per decoder layer the top token, its
        probability and p(gold's first token)), cached (kind "lens"); one forward pass on the model worker
        on a miss. Raises MergescopeError as `distribution` does, PlanError for a bad plan."""
        gold_id = None if gold is None else first_token_id(self.engine.pair, question, image, gold)
        config = dict(self.distribution_config(plan, question, image, donor), kind="lens", gold=gold)
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is not None:
            return hit["rows"]
        logprobs = self._on_merged(plan, donor, PairJob(lens_logprobs, (question, image)))
        rows = lens_rows(self.engine.pair, logprobs, gold_id)
        self._put(config, {"rows": rows})
        return rows

    def answer_divergence(self, plan: MergePlan, question: str, image: Image.Image | None, merged_answer: str,
                          base_answer: str, donor: str | None = None) -> dict[str, Any]:
        """The whole-answer divergence of `merged_answer` (the answer under `plan`) from the base VLM
        (`divergence.divergence_along`: per token its log-probability under base and merged, KL(base ‖
        merged) at each position and its mean, nats), plus "parting": the first token index where
        `base_answer` and `merged_answer` differ (None: the same). Cached (kind "answer_divergence"); on a
        miss two teacher-forced forward passes on the model worker. Raises MergescopeError as `distribution`."""
        config = dict(self.distribution_config(plan, question, image, donor), kind="answer_divergence",
                      answer=merged_answer)
        hit = self.cache.get(config) if self.cache is not None else None
        if hit is None:
            forced = PairJob(answer_logprobs, (question, image, merged_answer))  # picklable, for ZeroGPU
            base = self._on_merged(MergePlan(), donor, forced)
            merged = self._on_merged(plan, donor, forced)
            ids = answer_token_ids(self.engine.pair, question, image, merged_answer)
            hit = divergence_along(base, merged, ids, token_decoder(self.engine.pair))
            self._put(config, hit)
        return dict(hit, parting=first_parting(self.engine.pair, base_answer, merged_answer))

    # -- teacher-forced log-probabilities of gold answers (the search's cheap fitness) -----------------
    def gold_logprobs(self, plan: MergePlan, requests: Sequence[tuple[str, ImageSource, str]],
                      donor: str | None = None) -> list[float]:
        """For each (question, image, gold) of `requests`: the mean log-probability per token (nats, ≤ 0)
        of `gold` as the answer under `plan` (`teacher_forcing.reference_logprobs`), cached (kind
        "gold_logprob"). The missing items go through batched forward passes on the model worker, one job
        per batch. Raises MergescopeError as `reference_logprobs` does (an empty gold, a bad image)."""
        configs = []
        for question, image, gold in requests:
            config = self.config(plan, question, _load(image), GenerationSettings(), donor)
            del config["generation"]
            configs.append(dict(config, kind="gold_logprob", gold=gold))
        hits = [self.cache.get(c) if self.cache is not None else None for c in configs]
        values = [None if hit is None else hit["logprob"] for hit in hits]
        missing = [i for i, v in enumerate(values) if v is None]
        for start in range(0, len(missing), GOLD_BATCH):  # images decoded a batch at a time
            part = missing[start:start + GOLD_BATCH]
            batch = [(requests[i][0], _load(requests[i][1]), requests[i][2]) for i in part]
            scored = self._on_merged(plan, donor, PairJob(reference_logprobs, (batch, GOLD_BATCH)))
            for i, value in zip(part, scored):
                values[i] = value
                self._put(configs[i], {"logprob": value})
        return values
