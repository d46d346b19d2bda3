"""What History lists — one row per thing a person did: a Compare (its answers), an α scan, a sweep, or an
answer asked on its own (the API) — and how a row reads. Compare and the α scan store a record beside
the answers in the answers cache (kind "compare" / "scan"), with what the answers do not keep: the image's
file, the Text-only state and the donor's label, so a restored row asks again what was asked."""

from __future__ import annotations

from pathlib import Path

from merging.errors import MergescopeError
from merging.io.images import read_image
from merging.plan import curves
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import image_digest

from .explorer import Explorer
from .panel import COMPONENT_GROUPS

RECORDS = ("compare", "scan", "sweep")  # kinds History lists as they are; answers only when asked alone


def listed(entry: dict) -> bool:
    """Whether History lists a cache entry: a Compare, a scan, a sweep, or an answer asked on its own —
    not the answers a Compare, a scan or a sweep asked (their record is the row), nor cached probabilities."""
    kind, result = entry["config"].get("kind"), entry["result"]
    if kind in RECORDS:
        return True
    return kind == "answer" and not result.get("batched") and result.get("source", "ask") == "ask"


def asked(kind: str, question: str, path, image, text_only: bool, donor_name, plan: MergePlan, **more) -> dict:
    """A record's configuration: what was asked (question, plan, donor label, the image's digest and the file
    it came from, Text-only) and `more` (e.g. max_new_tokens, plan B)."""
    return {"kind": kind, "question": question, "plan": plan.to_dict(), "donor": donor_name,
            "image": None if text_only else image_digest(image),
            "image_path": None if text_only or path is None else str(path), "text_only": bool(text_only), **more}


def record(explorer: Explorer, request, config: dict, result: dict) -> None:
    """Store a record in the answers cache (best effort, as every cache write) and, in public mode, in the
    asking visitor's History."""
    if explorer.answerer.cache is not None:
        explorer.answerer.cache.put(config, result)
    explorer.remember(request, config)


def restored_image(explorer: Explorer, config: dict) -> tuple[str | None, str]:
    """(the file to show, a note) for a row's image: the file it was asked with, else the eval example's of
    the same question — either only if its pixels are the ones asked about (same digest); (None, "") for
    a text-only question, (None, why) when the image is gone."""
    digest = config.get("image")
    if digest is None:
        return None, ""
    question = str(config.get("question", "")).strip()
    candidates = [config.get("image_path")] + [item.image_path for item in explorer.eval_items
                                               if item.question.strip() == question and item.image_path]
    for path in filter(None, candidates):
        try:
            if image_digest(read_image(path)) == digest:
                return str(path), ""
        except MergescopeError:  # deleted (an old upload), or no longer an image
            continue
    return None, " — its image is no longer on disk: upload it again"


def _components(rule, layout) -> str:
    covered = {s.role for s in layout.slots if any(s.matches(c) for c in rule.components)}
    roles = set(layout.roles())
    parts, whole = [], True
    for group, names in COMPONENT_GROUPS:
        present = [r for r in names if r in roles]
        chosen = [r for r in present if r in covered]
        whole = whole and len(chosen) == len(present)
        if chosen:
            parts.append(group if len(chosen) == len(present) else "+".join(chosen))
    return "all" if whole else " + ".join(parts)


def plan_brief(plan: dict, layout) -> str:
    """A plan in one line: per rule its components (by group), method, curve and the α range over the
    layers, e.g. "Attention · linear · loglinear α 0.05–0.4"; "base VLM" for the empty plan."""
    try:
        rules = MergePlan.from_dict(plan).rules
    except MergescopeError:
        return "(a plan this version cannot read)"
    if not rules:
        return "base VLM"
    shown = []
    for rule in rules:
        alphas = curves.layer_alphas(rule.curve, layout.num_layers)
        shown.append(f"{_components(rule, layout)} · {rule.method} · {rule.curve.get('preset', 'custom')} "
                     f"α {min(alphas):.3g}–{max(alphas):.3g}")
    return "; ".join(shown)


def describe(explorer: Explorer, entry: dict) -> list[str]:
    """A History row's (question, plan, donor, answer, kind) columns."""
    config, result = entry["config"], entry["result"]
    layout, kind = explorer.engine.pair.layout, config.get("kind")
    if kind == "sweep":
        alphas = result.get("alphas")
        span = f", α {alphas[0]:g}–{alphas[1]:g}" if alphas else ""
        covered = ", ".join(result.get("settings", []) + result.get("curves", [])) or "the base VLM only"
        plan = f"{len(config['cells'])} cells: {covered}{span}"
        done = ("complete" if result.get("complete", True) else
                f"stopped: {result.get('answered', '?')} answers, {len(config['cells'])} of "
                f"{result.get('planned', '?')} cells")
        return [f"sweep of {config['items']} items of {Path(config['eval_set']).name}", plan, config["donor"],
                f"best: {result['best']}", f"sweep · {done}"]
    plan = plan_brief(config.get("plan", {}), layout)
    if kind == "scan":
        points = result.get("points", [])
        answers = " · ".join(f"α {p['alpha']:g}: {p['answer']}" for p in points[:3] + points[3:][-1:])
        state = "complete" if result.get("complete") else f"stopped at {len(points)}/{config.get('points')}"
        return [config["question"], plan, donor_label(explorer, config), answers, f"α scan · {state}"]
    if kind == "compare":
        answers = result.get("answers", {})
        shown = f"base: {answers.get('base', '')} · merged: {answers.get('merged', '')}" + \
            (f" · plan B: {answers['pinned']}" if "pinned" in answers else "")
        return [config["question"], plan, donor_label(explorer, config), shown, "Compare"]
    return [config.get("question", ""), plan, donor_label(explorer, config), result.get("answer", ""), "answer"]


def donor_label(explorer: Explorer, config: dict) -> str:
    """The label of the donor a row was asked with: a record's own, or for an answer the donor whose
    weights' fingerprint it names ("" for the base VLM, which involves none)."""
    if config.get("kind") in ("compare", "scan"):
        return config.get("donor") or ""
    if not config.get("plan", {}).get("rules"):
        return ""
    used = config.get("models", {}).get("donor")
    return next((name for name, ckpt in explorer.answerer.donors.items() if ckpt.fingerprint() == used), "")
