"""Sweeps on Ray: one resident pair per worker (a GPU, or a CPU), whole cells handed out by the driver.

    mergescope sweep ... --workers N          # a local Ray cluster with N workers
    mergescope sweep ... --ray ADDRESS        # join a running cluster (`ray start --head` on one
                                              # machine, `ray start --address ADDRESS` on the others)

Each worker is a Ray actor that loads the pair once onto its own device and keeps it resident, so it
switches plans in place exactly as the single-process sweep does. The driver owns the answers cache:
for each cell it asks a worker for the cell's cache keys (cheap: fingerprints and pixel hashes), keeps
what is cached, and sends the rest of the cell (plan × items) to an idle worker; answers are written to
the cache as they come back, so nothing is computed twice and a killed driver resumes. A worker that
dies has its cell queued again on a fresh worker. Ray is an optional extra (`pip install ray`), imported
only here; the eval set's image files must be readable at the same paths on every machine (or use an
eval set that embeds its images, such as the MathVista / MATH-Vision parquet files).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from typing import Any, Callable

from cache import AnswerCache
from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem
from merging.experiments.sweep import Cell, cell_row
from merging.plan.merge_plan import MergePlan
from merging.run.stack import ModelSpec, build_stack
from merging.run.generate import GenerationSettings

WORKER_NAME = "mergescope-worker-{}"
MAX_REPLACEMENTS = 8   # workers that die mid-sweep are replaced this often, then the sweep fails


class SweepWorker:
    """A resident pair answering whole cells (run as a Ray actor; plain Python otherwise)."""

    def __init__(self, spec: dict):
        spec = ModelSpec(**spec)
        device = "cuda" if spec.device == "auto-gpu" else spec.device  # Ray sets CUDA_VISIBLE_DEVICES
        self.error: str | None = None
        try:
            self.answerer = build_stack(spec, device=device).answerer  # no cache: the driver keeps it
        except Exception as exc:  # kept, not raised: Ray would restart the actor, and the driver never learn why
            self.error = str(exc) if isinstance(exc, MergescopeError) else f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        """None once the pair is loaded; else why it could not be (one line, as the single-process path says)."""
        return None if self.error is None else " ".join(self.error.split())[:500]

    def configs(self, plan: dict, items: list[EvalItem], settings: dict) -> list[dict]:
        """The cache key contents of each item's answer under `plan`."""
        plan_, settings_ = MergePlan.from_dict(plan), GenerationSettings(**settings)
        return [self.answerer.config(plan_, it.question, it.image(), settings_) for it in items]

    def answer(self, plan: dict, items: list[EvalItem], settings: dict, batch_size: int | None) -> list[dict]:
        """Answers to `items` under `plan`, batched, in order."""
        plan_, settings_ = MergePlan.from_dict(plan), GenerationSettings(**settings)
        requests = [(it.question, it.image) for it in items]
        results = dict(self.answerer.ask_many(plan_, requests, settings_, batch_size=batch_size))
        return [results[i] for i in range(len(items))]


def _settings_dict(settings: GenerationSettings) -> dict:
    return dict(asdict(settings), stop=list(settings.stop))


def start_ray(spec: ModelSpec, workers: int | None, address: str | None) -> tuple[Any, bool, int]:
    """(the ray module, whether workers take a GPU, how many workers) after joining `address` or starting
    a local cluster: `workers` if given, else one per GPU of the cluster for a GPU spec, else 2.
    Raises MergescopeError when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise MergescopeError("--workers/--ray need Ray: pip install 'mergescope[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else max(2, workers or 2), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    on_gpu = spec.device in ("auto-gpu", "cuda") or spec.device.startswith("cuda:")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return ray, on_gpu, workers or (gpus if on_gpu and gpus else 2)


def start_error(ray, actors: list) -> str | None:
    """Wait until `actors` (SweepWorker actors) have loaded their pair: None, or the first one's reason
    for not (one line; a worker that died while loading gives Ray's error)."""
    try:
        errors = ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayActorError as exc:  # died while loading (out of memory, a crash)
        errors = [" ".join(str(exc).split())[:500]]
    return next((e for e in errors if e is not None), None)


def run_sweep_ray(spec: ModelSpec, cells: list[Cell], items: list[EvalItem], settings: GenerationSettings,
                  cache: AnswerCache, *, workers: int | None = None, address: str | None = None,
                  batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                  on_dispatch: Callable[[str, int], None] | None = None,
                  donor_label: str = "donor") -> dict[str, Any]:
    """The sweep of `run_sweep`, on Ray workers: {"rows": [...] (as run_sweep's), "workers", "requeued"}.

    `workers` actors (default: one per GPU of the cluster, else 2) each hold the pair on one GPU
    (spec.device "auto-gpu", or "cuda") or on the CPU; `address` joins a running cluster instead of
    starting a local one. `on_dispatch(worker_name, cell_index)` is told when a cell is sent out;
    `donor_label` names the donor in the rows (as the single-process sweep's answerer does).
    Raises MergescopeError when Ray is not installed.
    """
    ray, on_gpu, count = start_ray(spec, workers, address)
    sweep = _RaySweep(ray, spec, on_gpu, cells, items, _settings_dict(settings), cache, batch_size)
    sweep.idle.extend(sweep.start() for _ in range(count))
    sweep.check_started(list(sweep.idle))  # all load at once; a worker that cannot start ends the sweep here
    queue = deque(range(len(cells)))
    while queue or sweep.pending:
        while queue and sweep.idle:
            c = queue.popleft()
            name = sweep.dispatch(c)
            if name is None:
                queue.appendleft(c)  # its worker died before taking it
            elif on_dispatch and sweep.pending:
                on_dispatch(name, c)
        if sweep.pending:
            died = sweep.collect()
            if died is not None:
                queue.appendleft(died)
            elif progress:
                progress(sweep.done, len(cells) * len(items))
    for _, actor in sweep.idle:
        ray.kill(actor)
    rows = [cell_row(cell, items, sweep.results[c], donor_label) for c, cell in enumerate(cells)]
    return {"rows": rows, "workers": count, "requeued": sweep.requeued}


class _RaySweep:
    """The driver's state: idle workers, cells out on workers, answers so far (cached or computed)."""

    def __init__(self, ray, spec: ModelSpec, on_gpu: bool, cells: list[Cell], items: list[EvalItem],
                 settings: dict, cache: AnswerCache, batch_size: int | None):
        self.ray, self.spec, self.cells, self.items = ray, asdict(spec), cells, items
        self.settings, self.cache, self.batch_size = settings, cache, batch_size
        self.actor_class = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=1, max_restarts=0)(SweepWorker)
        self.idle: deque = deque()
        self.pending: dict = {}  # object ref → (cell, worker name, actor, missing item indices, configs)
        self.results: dict[int, dict[int, dict]] = {c: {} for c in range(len(cells))}
        self.done = self.requeued = self.started = 0

    def start(self) -> tuple[str, Any]:
        name = WORKER_NAME.format(self.started)
        self.started += 1
        return name, self.actor_class.options(name=name).remote(self.spec)

    def check_started(self, workers: list[tuple[str, Any]]) -> None:
        """Wait until `workers` have loaded the pair; MergescopeError with the first one's reason (all of
        this sweep's workers killed) when one could not, so a bad --vlm fails as it does without Ray."""
        failed = start_error(self.ray, [actor for _, actor in workers])
        if failed is not None:
            self.kill_all(workers)
            raise MergescopeError(f"a Ray worker could not start: {failed}")

    def kill_all(self, others: list[tuple[str, Any]] = ()) -> None:
        """Kill every worker of this sweep (idle, busy, and `others` not yet counted)."""
        for _, actor in [*others, *self.idle, *((n, a) for _, n, a, *_ in self.pending.values())]:
            self.ray.kill(actor)

    def dispatch(self, c: int) -> str | None:
        """Serve cell `c` from the cache, sending what is missing to an idle worker; the worker's name,
        or None if it died (it is replaced)."""
        name, actor = self.idle.popleft()
        plan = self.cells[c].plan.to_dict()
        try:
            configs = self.ray.get(actor.configs.remote(plan, self.items, self.settings))
        except self.ray.exceptions.RayActorError:
            self._replace()
            return None
        missing = []
        for i, config in enumerate(configs):
            hit = self.cache.get(config)
            if hit is None:
                missing.append(i)
            else:
                self.results[c][i] = {"answer": hit["answer"], "cached": True}
        self.done += len(self.items) - len(missing)
        if not missing:
            self.idle.append((name, actor))
            return name
        ref = actor.answer.remote(plan, [self.items[i] for i in missing], self.settings, self.batch_size)
        self.pending[ref] = (c, name, actor, missing, configs)
        return name

    def collect(self) -> int | None:
        """Wait for one cell's answers and cache them; the cell's index if its worker died instead."""
        (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
        c, name, actor, missing, configs = self.pending.pop(ref)
        try:
            answers = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:  # the worker died: its cell goes back to the queue
            self.done -= len(self.items) - len(missing)
            self.results[c] = {}
            self._replace()
            return c
        for i, result in zip(missing, answers):
            self.cache.put(configs[i], {"answer": result["answer"], "seconds": result["seconds"], "batched": True})
            self.results[c][i] = {"answer": result["answer"], "cached": False}
        self.done += len(missing)
        self.idle.append((name, actor))
        return None

    def _replace(self) -> None:
        """A fresh worker for one that died (checked like the first ones), at most MAX_REPLACEMENTS per sweep."""
        if self.requeued >= MAX_REPLACEMENTS:
            self.kill_all()
            raise MergescopeError(f"Ray workers died {self.requeued + 1} times during this sweep; giving up "
                                  f"(see the Ray logs)")
        worker = self.start()
        self.requeued += 1
        self.check_started([worker])
        self.idle.append(worker)
