"""Measure the shipped toy pair and regenerate the tables of its card (assets/toy/README.md).

    python -m toy.evaluate_toy --card assets/toy/README.md   # all tables (a few minutes, 2 cores)
    python -m toy.evaluate_toy --export-eval assets/toy/eval  # (re)write the shipped eval set

Items are the world's held-out stream (`world.EVAL_SEED`, never used in training), N per question
kind (default 200; the first 40 of each kind are the shipped eval set). Answers are greedy, up to 6 new
tokens, judged by `merging.evals.scoring.judge` (the project's extraction: integers by value, words by
normalised text), through the library's batched generation (`merging.run.generate.answer_batch`, left
padding); a batched answer equals `merging.run.generate.answer`'s (a test checks it).

Merges go through `MergeEngine` on the loaded pair (in place), for Setting 1 (components [all]) and
Setting 2 ([self_attn]) × three curves (constant α; linear 0→α; loglinear 0→α, as in sweep.py's grid)
× α ∈ {0.2, 0.4, 0.6, 0.8}, with the shared-seed LLM and with the no-seed LLM as donors. The
answer-prior guess is the accuracy of always answering the most frequent training answer of a kind.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers.utils import logging as hf_logging

from merging.engine.merge_engine import MergeEngine
from merging.evals.eval_sets import EvalItem
from merging.evals.scoring import judge
from merging.model.pair import load_pair
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings, answer_batch

from . import TOY_DIR, world

MAX_NEW_TOKENS = 6
SETTINGS = {"Setting 1": ["all"], "Setting 2": ["self_attn"]}
CURVES = {"constant": lambda a: {"preset": "constant", "value": a},
          "linear": lambda a: {"preset": "linear", "start": 0.0, "end": a},
          "loglinear": lambda a: {"preset": "loglinear", "start": 0.0, "end": a}}
ALPHAS = (0.2, 0.4, 0.6, 0.8)
TABLE_START, TABLE_END = "<!-- tables:start -->", "<!-- tables:end -->"


# -- batched greedy answers ----------------------------------------------------------------------
def generate_batch(model, processor, items: list[world.Item], max_new_tokens: int = MAX_NEW_TOKENS,
                   chunk: int = 200) -> list[str]:
    """Greedy answers to `items` through the library's batched generation (`generate.answer_batch`,
    `chunk` prompts per call), for any model and processor — the VLM, or a text LLM in training.
    Raises MergescopeError for an image question to a text-only model."""
    owner = SimpleNamespace(vlm=model, processor=processor, is_multimodal=hasattr(processor, "image_processor"))
    requests = [(item.question, item.image() if item.scene is not None else None) for item in items]
    return answer_batch(owner, requests, GenerationSettings(max_new_tokens=max_new_tokens), chunk)


def as_eval_item(item: world.Item) -> EvalItem:
    return EvalItem(item.id, item.question, item.answer, item.answer_type)


def accuracy(model, processor, items: list[world.Item]) -> dict[str, float]:
    """Accuracy per kind (exact match after the project's answer extraction)."""
    answers = generate_batch(model, processor, items)
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, response in zip(items, answers):
        hits[item.kind].append(judge(response, as_eval_item(item)).correct)
    return {kind: round(sum(h) / len(h), 4) for kind, h in hits.items()}


def eval_items(n: int, kinds=world.KINDS) -> list[world.Item]:
    return [it for kind in kinds for it in world.items(kind, n, seed=world.EVAL_SEED)]


def accuracy_table(model, processor, n: int, kinds=world.KINDS) -> dict[str, float]:
    return accuracy(model, processor, eval_items(n, kinds))


def prior_table(n: int, kinds=world.KINDS) -> dict[str, float]:
    """Accuracy of always answering the most frequent training answer of each kind."""
    table = {}
    for kind in kinds:
        guess = world.answer_prior(kind)
        items = world.items(kind, n, seed=world.EVAL_SEED)
        table[kind] = round(sum(judge(guess, as_eval_item(it)).correct for it in items) / n, 4)
    return table


# -- the card's tables ---------------------------------------------------------------------------
def merge_grid(vlm_dir, donor_dir, items: list[world.Item], progress=print) -> list[dict]:
    """Accuracy per kind of every grid cell (Setting × curve × α) merged in place with `donor_dir`."""
    pair = load_pair(vlm_dir, donor_dir)
    engine = MergeEngine(pair)
    rows = []
    for setting, components in SETTINGS.items():
        for curve, make in CURVES.items():
            for alpha in ALPHAS:
                engine.apply(MergePlan.from_dict({"rules": [{"components": components, "curve": make(alpha)}]}))
                start = time.perf_counter()
                acc = accuracy(pair.vlm, pair.processor, items)
                rows.append({"setting": setting, "curve": curve, "alpha": alpha, **acc})
                progress(f"  {Path(donor_dir).name}: {setting} {curve} α={alpha}: "
                         f"{json.dumps(acc)} ({time.perf_counter() - start:.1f} s)")
    engine.restore()
    return rows


def measure(toy_dir: Path, n: int, progress=print) -> dict:
    """Everything the card reports, as one JSON-able dict."""
    start = time.perf_counter()
    items = eval_items(n)
    text_items = eval_items(n, world.TEXT)
    results = {"n_per_kind": n, "kinds": list(world.KINDS), "skills": world.SKILLS,
               "prior": prior_table(n), "prior_answers": {k: world.answer_prior(k) for k in world.KINDS}}
    vlm = load_pair(toy_dir / "vlm", toy_dir / "llm")
    results["vlm"] = accuracy(vlm.vlm, vlm.processor, items)
    progress(f"VLM: {results['vlm']}")
    for name in ("llm", "llm_noseed"):
        llm = load_pair(toy_dir / name, toy_dir / name)  # a plain causal LM in the VLM's role
        results[name] = accuracy(llm.vlm, llm.processor, text_items)
        progress(f"{name}: {results[name]}")
    for name in ("llm", "llm_noseed"):
        results[f"grid_{name}"] = merge_grid(toy_dir / "vlm", toy_dir / name, items, progress)
    results["seconds"] = round(time.perf_counter() - start, 1)
    log = toy_dir / "train_log.json"
    if log.exists():
        results["train_log"] = json.loads(log.read_text())
    return results


def render_training(log: dict) -> list[str]:
    recipe = log["recipe"]
    lrs = {"seed": recipe["lr"], "vision": recipe["vision_lr"], "vlm": recipe.get("vlm_lr", recipe["finetune_lr"]),
           "llm": recipe["finetune_lr"], "noseed_pretrain": recipe["lr"], "llm_noseed": recipe["finetune_lr"]}
    data = {"seed": recipe["seed_mix"], "vision": "per-cell colour, shape, colour×shape and cell classification",
            "vlm": recipe["vlm_mix"], "llm": recipe["llm_mix"], "noseed_pretrain": recipe["seed_mix"],
            "llm_noseed": recipe["llm_mix"]}
    lines = ["### Training (from train_log.json)", "",
             "| stage | steps × batch | lr (peak) | data (kind: weight) | seconds | final loss |", "|---|---|---|---|---|---|"]
    for name, stage in log["stages"].items():
        mix = data[name] if isinstance(data[name], str) else ", ".join(f"{k}: {v:g}" for k, v in data[name].items())
        lines.append(f"| {name} | {stage['steps']} × {recipe['batch']} | {lrs[name]:g} | {mix} | {stage['seconds']:.0f} | "
                     f"{stage['final_loss']:.4f} |")
    vision = log["stages"].get("vision", {})
    lines += ["", f"Total {log['total_seconds'] / 60:.1f} min with {log['torch_threads']} torch thread(s). Vision "
              f"pre-training head accuracy per cell on 512 fresh scenes: colour {vision.get('cell_colour', 0):.3f}, "
              f"shape {vision.get('cell_shape', 0):.3f}, cell {vision.get('cell_position', 0):.3f} (heads dropped "
              f"afterwards).", ""]
    return lines


def _mean(row: dict, kinds) -> float:
    return sum(row[k] for k in kinds) / len(kinds)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def render_tables(results: dict) -> str:
    kinds = results["kinds"]
    per = [k for k in kinds if world.SKILLS[k] == "perception"]
    text = [k for k in kinds if world.SKILLS[k] == "text"]
    head = "| model | " + " | ".join(kinds) + " | perception mean | text mean |"
    sep = "|---" * (len(kinds) + 3) + "|"

    def row(name: str, acc: dict) -> str:
        cells = [_pct(acc[k]) if k in acc else "–" for k in kinds]
        pm = _pct(_mean(acc, per)) if all(k in acc for k in per) else "–"
        tm = _pct(_mean(acc, text)) if all(k in acc for k in text) else "–"
        return f"| {name} | " + " | ".join(cells) + f" | {pm} | {tm} |"

    prior_answers = ", ".join(f"{k}: “{a}”" for k, a in results["prior_answers"].items())
    lines = render_training(results["train_log"]) if "train_log" in results else []
    lines += [f"Accuracy in % on {results['n_per_kind']} held-out items per question kind (greedy, exact match "
             f"after the project's answer extraction). Perception = {', '.join(per)}; text = {', '.join(text)}; "
             f"count_plus needs both.", "", "### Single models", "", head, sep,
             row("answer-prior guess (no input)", results["prior"]), row("VLM", results["vlm"]),
             row("LLM (shared seed)", results["llm"]), row("LLM (no seed)", results["llm_noseed"]), "",
             f"Answer-prior guesses (most frequent training answer per kind): {prior_answers}.", ""]
    summary = []
    for name, title in (("llm", "shared-seed LLM"), ("llm_noseed", "no-seed LLM")):
        grid = results[f"grid_{name}"]
        lines += [f"### VLM + {title}, merged in place (linear; α = the LLM's weight)", "",
                  "| setting | curve | α | " + " | ".join(kinds) + " | perception mean | text mean |",
                  "|---" * (len(kinds) + 5) + "|"]
        lines.append(row("base VLM", results["vlm"]).replace("| base VLM |", "| base VLM | – | 0 |"))
        for r in grid:
            lines.append(row(f"{r['setting']} | {r['curve']} | {r['alpha']}", r))
        lines.append("")
        summary.append((title, sum(_mean(r, per) for r in grid) / len(grid), sum(_mean(r, text) for r in grid) / len(grid),
                        sum(r["count_plus"] for r in grid) / len(grid)))
    lines += ["### Shared seed vs no seed, averaged over the 24 grid cells", "",
              "| donor | perception mean | text mean | count_plus |", "|---|---|---|---|"]
    lines += [f"| {t} | {_pct(p)} | {_pct(x)} | {_pct(c)} |" for t, p, x, c in summary]
    lines += ["", f"(Measured in {results['seconds']:.0f} s, one torch thread, by `python -m toy.evaluate_toy "
              f"--n {results['n_per_kind']} --card assets/toy/README.md --json assets/toy/eval_results.json`.)"]
    return "\n".join(lines)


def write_card(card: Path, tables: str) -> None:
    """Replace the text between the table markers of `card` (or append the block)."""
    block = f"{TABLE_START}\n{tables}\n{TABLE_END}"
    text = card.read_text() if card.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        before, rest = text.split(TABLE_START, 1)
        text = before + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    card.write_text(text)


def export_eval(out: Path, n: int = 40) -> Path:
    """The shipped eval set: the first n held-out items of every kind, as eval JSONL + PNGs; kinds take
    turns, so the first examples the app shows cover every kind."""
    per_kind = [world.items(kind, n, seed=world.EVAL_SEED) for kind in world.KINDS]
    return world.export_jsonl([it for turn in zip(*per_kind) for it in turn], out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-dir", default=str(TOY_DIR), help="folder with vlm/, llm/, llm_noseed/")
    parser.add_argument("--n", type=int, default=200, help="held-out items per question kind")
    parser.add_argument("--card", help="write the tables into this card (between the table markers)")
    parser.add_argument("--json", help="also write all measured numbers to this JSON file")
    parser.add_argument("--export-eval", help="write the shipped eval set (JSONL + PNGs) to this folder and exit")
    parser.add_argument("--export-n", type=int, default=40, help="items per kind in the exported eval set")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.export_eval:
        print(export_eval(Path(args.export_eval), args.export_n))
        return
    results = measure(Path(args.toy_dir), args.n)
    tables = render_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.card:
        write_card(Path(args.card), tables)
    print(tables)


if __name__ == "__main__":
    main()
