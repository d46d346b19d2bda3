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
from dataclasses import asdict, dataclass
from typing import Any, Callable

from cache import AnswerCache

from .errors import MergescopeError
from .evaluate import EvalItem
from .generate import GenerationSettings
from .plan import MergePlan
from .sweep import Cell, cell_row

WORKER_NAME = "mergescope-worker-{}"


@dataclass(frozen=True)
class PairSpec:
    """What a worker loads: the models (folders or hub ids), dtype, device, Gram files, and whether a
    donor lacking some of the VLM's tensors is merged where it can be (`load_pair`'s allow_partial)."""

    vlm: str
    llm: str
    base: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    grams: dict[str, str] | None = None
    allow_partial: bool = False


class SweepWorker:
    """A resident pair answering whole cells (run as a Ray actor; plain Python otherwise)."""

    def __init__(self, spec: dict):
        from .answerer import Answerer
        from .engine import MergeEngine
        from .pair import load_pair
        spec = PairSpec(**spec)
        device = "cuda" if spec.device == "auto-gpu" else spec.device  # Ray sets CUDA_VISIBLE_DEVICES
        pair = load_pair(spec.vlm, spec.llm, spec.base, dtype=spec.dtype, device=device,
                         allow_partial=spec.allow_partial)
        self.answerer = Answerer(MergeEngine(pair, grams=spec.grams))  # no cache: the driver keeps it

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


def run_sweep_ray(spec: PairSpec, cells: list[Cell], items: list[EvalItem], settings: GenerationSettings,
                  cache: AnswerCache, *, workers: int | None = None, address: str | None = None,
                  batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                  on_dispatch: Callable[[str, int], None] | None = None,
                  donor_label: str = "donor") -> dict[str, Any]:
    """The sweep of `run_sweep`, on Ray workers: {"rows": [...] (as run_sweep's), "workers", "requeued"}.

    `workers` actors (default: one per GPU of the cluster, else 2) each hold the pair on one GPU
    (spec.device "auto-gpu", or "cuda") or on the CPU; `address` joins a running cluster instead of
    starting a local one. `on_dispatch(worker_name, cell_index)` is told when a cell is sent out;
    `donor_label` names the donor in the rows (as the single-process sweep's answerer does).
    Raises MergescopeError when Ray is not installed or no worker could be started.
    """
    try:
        import ray
    except ImportError:
        raise MergescopeError("--workers/--ray need Ray: pip install 'mergescope[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else max(2, workers or 2), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_gpu = spec.device in ("auto-gpu", "cuda") or spec.device.startswith("cuda:")
    count = workers or (gpus if on_gpu and gpus else 2)
    actor_class = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=1, max_restarts=0)(SweepWorker)
    spec_dict = asdict(spec)
    names = iter(range(1 << 30))

    def start() -> tuple[str, Any]:
        name = WORKER_NAME.format(next(names))
        return name, actor_class.options(name=name).remote(spec_dict)

    idle = deque(start() for _ in range(count))
    queue, pending = deque(range(len(cells))), {}
    results: dict[int, dict[int, dict]] = {c: {} for c in range(len(cells))}
    settings_dict = _settings_dict(settings)
    done, total, requeued = 0, len(cells) * len(items), 0
    while queue or pending:
        while queue and idle:
            c = queue.popleft()
            name, actor = idle.popleft()
            plan = cells[c].plan.to_dict()
            try:
                configs = ray.get(actor.configs.remote(plan, items, settings_dict))
            except ray.exceptions.RayActorError:
                queue.appendleft(c)
                idle.append(start())
                requeued += 1
                continue
            missing = []
            for i, config in enumerate(configs):
                hit = cache.get(config)
                if hit is None:
                    missing.append(i)
                else:
                    results[c][i] = {"answer": hit["answer"], "cached": True}
            done += len(items) - len(missing)
            if not missing:
                idle.append((name, actor))
                continue
            ref = actor.answer.remote(plan, [items[i] for i in missing], settings_dict, batch_size)
            pending[ref] = (c, name, actor, missing, configs)
            if on_dispatch:
                on_dispatch(name, c)
        if not pending:
            continue
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        c, name, actor, missing, configs = pending.pop(ref)
        try:
            answers = ray.get(ref)
        except ray.exceptions.RayActorError:  # the worker died: its cell goes back to the queue
            results[c] = {i: r for i, r in results[c].items() if r["cached"]}
            done -= len(items) - len(missing)
            queue.appendleft(c)
            idle.append(start())
            requeued += 1
            continue
        for i, result in zip(missing, answers):
            cache.put(configs[i], {"answer": result["answer"], "seconds": result["seconds"]})
            results[c][i] = {"answer": result["answer"], "cached": False}
        done += len(missing)
        if progress:
            progress(done, total)
        idle.append((name, actor))
    for _, actor in idle:
        ray.kill(actor)
    rows = [cell_row(cell, items, results[c], donor_label) for c, cell in enumerate(cells)]
    return {"rows": rows, "workers": count, "requeued": requeued}
