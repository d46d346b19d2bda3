"""Search the curve space on the resident engine: an Optuna study whose trials are merge plans.

    mergescope search --space examples/toy_space.yaml --eval-set assets/toy/eval/toy_eval.jsonl \
        --trials 100 --out runs/search

A trial is one plan drawn from the space (merging.experiments.search_space), applied in place (milliseconds) and
scored on the dev split by a fitness: `accuracy` (batched greedy answers judged by merging.evals.scoring) or
`gold_logprob` (the mean teacher-forced log-probability of each item's gold answer, nats: one forward
pass per item, no generation). Every answer and log-probability goes through the answers cache, so a
repeated plan, a resumed study or a later sweep pays nothing for what was computed before.

Why the engine matters here: mergekit-evolve merges (or reloads) a checkpoint per candidate; a
resident engine switches the tensors a plan changes, so evaluation is the only real cost, and the
pruner (successive halving, Optuna's SuccessiveHalvingPruner) spends the items where they count:
a trial is scored on growing, stratified prefixes of the dev split (rungs) and stopped when it falls
behind at a rung. Pruning applies to one objective (Optuna cannot prune multi-objective trials).

The study lives in `OUT/study.db` (Optuna's RDB storage on SQLite), so `resume=True` continues a
killed search: trials left RUNNING by the kill are marked failed and their parameters queued again
(their answers come back from the cache). The driver asks and tells (Optuna's ask-and-tell interface);
evaluations run in this process or on Ray actors (merging.experiments.search_ray) through the same loop.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import optuna

from merging.run.answerer import Answerer
from merging.errors import MergescopeError, PlanError
from merging.evals.eval_sets import EvalItem, sample_items
from merging.run.generate import GenerationSettings
from merging.plan.merge_plan import MergePlan
from merging.evals.scoring import judge_both
from merging.experiments.search_space import SearchSpace

FITNESSES = ("accuracy", "gold_logprob")
SAMPLERS = ("tpe", "cmaes", "nsga2", "random")
STUDY_NAME = "mergescope-search"
STUDY_FILE = "study.db"


@dataclass(frozen=True)
class SearchOptions:
    """How a study runs: fitness, sampler (None: TPE for one objective, NSGA-II for two), seed, budget
    (finished trials, pruned and failed included), successive-halving rungs (first rung `min_items`
    dev items, each next one `reduction_factor` times larger, the last the whole dev split), the test
    fraction of the seeded stratified split, and the answers' batch size (None: by model size)."""
    fitness: str = "accuracy"
    sampler: str | None = None
    seed: int = 0
    trials: int = 50
    pruning: bool = True
    min_items: int = 16
    reduction_factor: int = 2
    test_fraction: float = 0.5
    batch_size: int | None = None

    def check(self, objectives: int) -> None:
        """MergescopeError (one line) for an option that cannot run with `objectives` objectives."""
        if self.fitness not in FITNESSES:
            raise MergescopeError(f"--objective {self.fitness!r}: choose one of {list(FITNESSES)}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise MergescopeError(f"--sampler {self.sampler!r}: choose one of {list(SAMPLERS)}")
        if self.sampler == "cmaes" and objectives > 1:
            raise MergescopeError("--sampler cmaes optimises one objective; use nsga2 or tpe for two")
        if not 1 <= self.trials <= 100_000:
            raise MergescopeError(f"--trials {self.trials}: must be between 1 and 100000")
        if not 0.0 < self.test_fraction < 1.0:
            raise MergescopeError(f"--test-fraction {self.test_fraction}: must be strictly between 0 and 1")
        if self.min_items < 1 or not 2 <= self.reduction_factor <= 16:
            raise MergescopeError("min_items must be ≥ 1 and reduction_factor between 2 and 16")


# -- items -----------------------------------------------------------------------------------------
def split_items(items: list[EvalItem], test_fraction: float, seed: int) -> tuple[list[EvalItem], list[EvalItem]]:
    """(dev, test): a seeded test sample stratified by category (`evaluate.sample_items`), the rest dev.
    MergescopeError if either side would be empty."""
    n_test = round(len(items) * test_fraction)
    if not 0 < n_test < len(items):
        raise MergescopeError(f"--test-fraction {test_fraction} of {len(items)} items leaves an empty split")
    test = sample_items(items, n_test, seed)
    chosen = {id(item) for item in test}
    return [item for item in items if id(item) not in chosen], test


def rung_order(items: list[EvalItem], seed: int) -> list[EvalItem]:
    """`items` reordered so that every prefix is stratified: shuffled within each category (seeded),
    then taken round-robin across categories. The rungs of successive halving are prefixes of it."""
    rng = random.Random(seed)
    groups: dict[str | None, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(item.category, []).append(item)
    for group in groups.values():
        rng.shuffle(group)
    order, depth = [], max(len(g) for g in groups.values())
    for k in range(depth):
        order += [g[k] for _, g in sorted(groups.items(), key=lambda kv: str(kv[0])) if k < len(g)]
    return order


def rung_sizes(n_items: int, min_items: int, factor: int) -> list[int]:
    """Items scored by the end of each rung: min_items, ×factor, ..., capped by and ending at n_items."""
    sizes, size = [], min(min_items, n_items)
    while size < n_items:
        sizes.append(size)
        size *= factor
    return sizes + [n_items]


# -- fitness ---------------------------------------------------------------------------------------
def _nothing(engine) -> None:
    """A job that needs only its plan applied; a module function, so it pickles (ZeroGPU sends each job to
    a GPU worker process), which a lambda does not."""


def item_scores(answerer: Answerer, plan: MergePlan, items: list[EvalItem], fitness: str,
                settings: GenerationSettings, batch_size: int | None = None) -> dict[str, Any]:
    """{"scores": one float per item (accuracy: 1.0 right / 0.0 wrong by the strict judge; gold_logprob:
    nats ≤ 0), "official" (accuracy only: the benchmark's published rule chain, `scoring.judge_both`),
    "apply_seconds", "eval_seconds", "answers" (accuracy only, else None)} for `plan` on `items`,
    through the answerer's cache. The apply is timed on its own (the answerer's own apply is then a
    no-op: nothing differs)."""
    begin = time.perf_counter()
    answerer.run(_nothing, plan=plan)  # the worker applies `plan` before the job
    applied = time.perf_counter()
    if fitness == "accuracy":
        requests = [(item.question, item.image) for item in items]
        results = dict(answerer.ask_many(plan, requests, settings, batch_size=batch_size))
        answers = [results[i]["answer"] for i in range(len(items))]
        # an item that could not be asked (its result has "error") is wrong by both scores
        verdicts = [None if "error" in results[i] else judge_both(answers[i], item) for i, item in enumerate(items)]
        scores = [float(v is not None and v["strict"].correct) for v in verdicts]
        official = [float(v is not None and v["official"].correct) for v in verdicts]
    else:
        answers = official = None
        scores = answerer.gold_logprobs(plan, [(item.question, item.image, item.answer) for item in items])
    return {"scores": scores, "official": official, "apply_seconds": applied - begin,
            "eval_seconds": time.perf_counter() - applied, "answers": answers}


def objective_values(space: SearchSpace, items: list[EvalItem], scores: list[float]) -> list[float]:
    """The mean score over each objective's items (its categories; None: every item). An objective with
    no item among `items` (a rung too small to reach its categories) takes the lowest score seen, never
    NaN, which samplers cannot rank."""
    values = []
    for _, categories in space.objectives:
        mine = [s for item, s in zip(items, scores) if categories is None or item.category in categories]
        values.append(sum(mine) / len(mine) if mine else (min(scores, default=0.0) if scores else 0.0))
    return values


def check_objectives(space: SearchSpace, items: list[EvalItem], where: str) -> None:
    """MergescopeError naming an objective category no item of `items` has (a typo in the space file)."""
    present = {item.category for item in items}
    for name, categories in space.objectives:
        missing = [c for c in categories or () if c not in present]
        if missing:
            raise MergescopeError(f"{where}: objective {name!r} names categories {missing} that no item has; "
                                  f"the eval set has {sorted(map(str, present))}")


# -- the study -------------------------------------------------------------------------------------
class Evaluator(Protocol):
    """Where trials are scored: this process (`LocalEvaluator`) or Ray actors (`search_ray.RayEvaluator`)."""
    capacity: int

    def submit(self, job: int, plan: MergePlan, items: list[EvalItem]) -> None: ...
    def next_result(self) -> tuple[int, dict[str, Any]]: ...
    def close(self) -> None: ...


class LocalEvaluator:
    """Scores one job at a time on the resident engine of this process, when asked for its result."""
    capacity = 1

    def __init__(self, answerer: Answerer, fitness: str, settings: GenerationSettings, batch_size: int | None):
        self.answerer, self.fitness, self.settings, self.batch_size = answerer, fitness, settings, batch_size
        self._queue: list[tuple[int, MergePlan, list[EvalItem]]] = []

    def submit(self, job: int, plan: MergePlan, items: list[EvalItem]) -> None:
        self._queue.append((job, plan, items))

    def next_result(self) -> tuple[int, dict[str, Any]]:
        job, plan, items = self._queue.pop(0)
        return job, item_scores(self.answerer, plan, items, self.fitness, self.settings, self.batch_size)

    def close(self) -> None:
        self._queue.clear()


@dataclass
class _Run:
    """A trial being scored: its plan and the scores of the dev items so far (a prefix of the rung order)."""
    trial: optuna.trial.Trial
    plan: MergePlan
    scores: list[float] = field(default_factory=list)
    apply_seconds: float = 0.0
    eval_seconds: float = 0.0


def make_sampler(options: SearchOptions, objectives: int, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by `options.sampler` (default: TPE, NSGA-II for two objectives), seeded
    with `options.seed + offset` (a resumed study passes the trials it holds)."""
    name, seed = options.sampler or ("tpe" if objectives == 1 else "nsga2"), options.seed + offset
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":  # CMA-ES searches the float/int parameters; a categorical falls back to random
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def check_study_path(out: Path, resume: bool) -> None:
    """MergescopeError if `out` holds a study and `resume` is False, or holds none and it is True."""
    path = out / STUDY_FILE
    if path.exists() and not resume:
        raise MergescopeError(f"{path} exists: pass --resume to continue that search, or choose another --out")
    if resume and not path.exists():
        raise MergescopeError(f"--resume: no study in {out} ({STUDY_FILE} is missing)")


def open_study(out: Path, space_text: str, space: SearchSpace, options: SearchOptions, eval_set: str,
               resume: bool) -> optuna.Study:
    """The study in `out/study.db`: new (MergescopeError if one exists and not `resume`) or resumed
    (MergescopeError if it was made with another space, fitness, seed or eval set). On resume, trials
    a killed run left RUNNING are marked failed and their parameters queued again."""
    check_study_path(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    path = out / STUDY_FILE
    identity = {"space": hashlib.sha256(space_text.encode()).hexdigest()[:16], "fitness": options.fitness,
                "seed": options.seed, "eval_set": eval_set, "test_fraction": options.test_fraction,
                "objectives": space.objective_names}
    storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                directions=["maximize"] * len(space.objectives),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(
                                    min_resource=options.min_items, reduction_factor=options.reduction_factor))
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        changed = sorted(k for k in identity if stored.get(k) != identity[k])
        raise MergescopeError(f"{path}: the study was made with another {', '.join(changed)}; "
                              "use another --out for a new search")
    # A resumed study must not draw its first trials again: the sampler's seed moves on by the trials stored.
    study.sampler = make_sampler(options, len(space.objectives), offset=len(study.trials))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)  # not counted: it runs again
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
    return study


INTERRUPTED = "interrupted"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against the budget: complete, pruned, or failed (not those a kill interrupted)."""
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get(INTERRUPTED)]


def run_study(study: optuna.Study, space: SearchSpace, dev: list[EvalItem], evaluator: Evaluator,
              options: SearchOptions, progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False) -> int:
    """Run trials until the study holds `options.trials` finished ones (or `should_stop()` says True,
    asked before each new trial; trials under way are finished). Returns how many trials this call
    finished. Each trial is scored on rungs of `rung_order(dev)`; with one objective and pruning, it
    reports each rung's value and is pruned where successive halving says so. Trials record
    `items`, `apply_seconds`, `eval_seconds` and `plan` (canonical JSON) as user attributes."""
    order = rung_order(dev, options.seed)
    single = len(space.objectives) == 1
    sizes = rung_sizes(len(order), options.min_items, options.reduction_factor) if single and options.pruning \
        else [len(order)]
    finished = len(finished_trials(study))
    runs: dict[int, _Run] = {}
    done_here, job = 0, 0
    while True:
        while len(runs) < evaluator.capacity and finished + len(runs) < options.trials and not should_stop():
            trial = study.ask()
            try:
                plan = space.suggest(trial)
            except PlanError as exc:  # a combination of values the plan refuses: the trial fails, the study goes on
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                finished, done_here = finished + 1, done_here + 1
                continue
            trial.set_user_attr("plan", plan.canonical_json())
            runs[job] = _Run(trial, plan)
            evaluator.submit(job, plan, order[:sizes[0]])
            job += 1
        if not runs:
            return done_here
        key, result = evaluator.next_result()
        run = runs.pop(key)
        run.scores += result["scores"]
        run.apply_seconds += result["apply_seconds"]
        run.eval_seconds += result["eval_seconds"]
        scored = order[:len(run.scores)]
        values = objective_values(space, scored, run.scores)
        state = None
        if len(run.scores) < len(order):
            run.trial.report(values[0], step=len(run.scores))
            if run.trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
            else:
                runs[job] = run
                evaluator.submit(job, run.plan, order[len(run.scores):sizes[sizes.index(len(run.scores)) + 1]])
                job += 1
                continue
        for name, value in (("items", len(run.scores)), ("apply_seconds", run.apply_seconds),
                            ("eval_seconds", run.eval_seconds), ("values_at_end", values)):
            run.trial.set_user_attr(name, value)
        study.tell(run.trial, values if state is None else None, state=state)
        finished, done_here = finished + 1, done_here + 1
        if progress:
            progress(finished, options.trials)
