"""Score search trials on Ray actors: one resident pair per worker, the study on the driver.

    mergescope search ... --workers N       # a local Ray cluster with N workers
    mergescope search ... --ray ADDRESS     # join a running cluster

The driver asks the study for trials and tells it their values (Optuna's ask-and-tell: only the
driver touches study.db); each job — a plan and the dev items of one rung — goes to an idle actor,
which applies the plan in place and scores the items through its own answers cache opened on the
given folder (diskcache is safe for several processes on one machine; on several machines each keeps
its own). A job whose actor dies is sent again to a fresh one. Ray is an optional extra, imported here only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from typing import Any

from cache import AnswerCache

from merging.experiments.distributed import WORKER_NAME, SweepWorker, start_error, start_ray
from merging.run.stack import ModelSpec
from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem
from merging.run.generate import GenerationSettings
from merging.plan.merge_plan import MergePlan
from merging.experiments.search import item_scores


class SearchWorker(SweepWorker):
    """A sweep worker (resident pair) that also scores search jobs, caching in `cache_dir`."""

    def __init__(self, spec: dict, cache_dir: str):
        super().__init__(spec)
        if self.error is None:  # a pair that did not load is reported by `ready`, as the sweep's workers do
            self.answerer.cache = AnswerCache(cache_dir)

    def score(self, plan: dict, items: list[EvalItem], fitness: str, max_new_tokens: int,
              batch_size: int | None) -> dict[str, Any]:
        """`search.item_scores` of `plan` on `items`, less the answers (the driver needs only scores)."""
        result = item_scores(self.answerer, MergePlan.from_dict(plan), items, fitness,
                             GenerationSettings(max_new_tokens=max_new_tokens), batch_size)
        return dict(result, answers=None)


class RayEvaluator:
    """`search.Evaluator` on `workers` Ray actors (default 2; on a GPU cluster one per GPU)."""

    def __init__(self, spec: ModelSpec, fitness: str, max_new_tokens: int, cache_dir: str, *,
                 workers: int | None = None, address: str | None = None, batch_size: int | None = None):
        ray, on_gpu, self.capacity = start_ray(spec, workers, address)
        self.ray, self.spec, self.cache_dir = ray, asdict(spec), cache_dir
        self.fitness, self.max_new_tokens, self.batch_size = fitness, max_new_tokens, batch_size
        self.actor_class = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=1, max_restarts=0)(SearchWorker)
        self.started = self.requeued = self.deaths_in_a_row = 0
        self.pending: dict = {}  # object ref → (job, plan dict, items, actor)
        self.idle = deque(self._start() for _ in range(self.capacity))
        failed = start_error(ray, list(self.idle))  # all load at once; one that cannot ends the search here
        if failed is not None:
            self.close()
            raise MergescopeError(f"a Ray worker could not start: {failed}")

    def _start(self):
        name = WORKER_NAME.format(f"search-{self.started}")
        self.started += 1
        return self.actor_class.options(name=name).remote(self.spec, self.cache_dir)

    def submit(self, job: int, plan: MergePlan, items: list[EvalItem]) -> None:
        self._send(job, plan.to_dict(), items, self.idle.popleft())

    def _send(self, job: int, plan: dict, items: list[EvalItem], actor) -> None:
        ref = actor.score.remote(plan, items, self.fitness, self.max_new_tokens, self.batch_size)
        self.pending[ref] = (job, plan, items, actor)

    def next_result(self) -> tuple[int, dict[str, Any]]:
        """The next job to finish; a job whose actor died is sent to a fresh actor and waited for."""
        while True:
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            job, plan, items, actor = self.pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self.deaths_in_a_row += 1
                if self.deaths_in_a_row > self.capacity:  # workers that cannot start: say why, never retry forever
                    self.close()
                    raise MergescopeError(f"Ray workers keep dying; the last: {_last_line(exc)}") from None
                self.requeued += 1
                self._send(job, plan, items, self._start())
                continue
            self.deaths_in_a_row = 0
            self.idle.append(actor)
            return job, result

    def close(self) -> None:
        for actor in [*self.idle, *(p[3] for p in self.pending.values())]:
            self.ray.kill(actor)
        self.idle.clear()
        self.pending.clear()


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of a Ray error (its cause), for a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
