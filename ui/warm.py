"""Warm the answers cache with what a visitor clicks first: `python -m ui.warm --examples --lessons`.

For each shipped example (as a fresh page compares it: `compare_tab.start_panel`) and each lesson (as its
set-up leaves the panel: `lessons.lesson_setup`), this runs the handlers the page's buttons call —
*Compare* (`on_compare`: base, merged and plan B's answers), the bars after it (`on_distributions`) and
*Scan α* (`on_scan`) — so the cache holds exactly the entries those clicks look up, keyed as always by the
models' fingerprints and the runtime (a changed model or dtype misses and recomputes). The Docker image
runs it at build time for the toy pair; for a real pair run it once with the Space's model options and
cache folder.

Why here and not in `mergescope cache`: the examples, lessons and the page's start plan are the UI's
own definitions (ui/examples.py, ui/lessons.py, ui/compare_tab.py), and the keys must be the ones the
handlers compute, so the warm-up calls the handlers themselves; merging/cli sits below ui/ and may not
import it (tests/test_layering.py), and moving the handlers' data down would split one screen's
definitions over two layers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from typing import Callable

from transformers.utils import logging as hf_logging

from merging.errors import MergescopeError
from merging.run.stack import add_model_args

from .compare_tab import on_compare, on_distributions, start_panel
from .examples import teaching_order
from .explorer import Explorer, build_explorer
from .lessons import LESSONS, lesson_setup
from .panel import Panel, plan_of
from .probe_panel import on_scan


@dataclass(frozen=True)
class Click:
    """What the page holds when Compare is pressed after clicking an example or a lesson."""
    name: str
    question: str
    image: str | None   # the image file the example or lesson puts in the Image box
    text_only: bool
    donor: str
    panel: Panel
    pinned: str = ""    # plan B's YAML ("": none)


def example_clicks(explorer: Explorer, limit: int | None = None) -> list[Click]:
    """Each example of the page (image questions, then text-only ones; at most `limit` of each) on a fresh
    page: the start panel, the default donor, no plan B."""
    with_image, text_only = teaching_order(explorer.eval_items)
    panel, donor = start_panel(explorer), explorer.answerer.default_donor
    return ([Click(i.id, i.question, str(i.image_path), False, donor, panel) for i in with_image[:limit]]
            + [Click(i.id, i.question, None, True, donor, panel) for i in text_only[:limit]])


def lesson_clicks(explorer: Explorer) -> list[Click]:
    """Each lesson as its set-up leaves the page (`on_lesson`): its donor, components, curve, plan B."""
    clicks, start = [], start_panel(explorer)
    for name in LESSONS:
        s = lesson_setup(explorer, name)
        if not s["question"]:  # the lesson's item is not in this eval set
            continue
        donor = s["donor"] if s["donor"] in explorer.answerer.donors else explorer.answerer.default_donor
        pinned = plan_of(replace(start, components=s["components"], alphas=s["pin"])).to_yaml() if s["pin"] else ""
        clicks.append(Click(name, s["question"], s["image"], s["text_only"], donor,
                            replace(start, components=s["components"], alphas=s["curve"]), pinned))
    return clicks


def press(explorer: Explorer, click: Click, scan: bool = True) -> list[str]:
    """Compare, the bars and (with `scan`) the α scan for `click`, as the page runs them; the one-line
    refusals their status lines showed (none when everything was answered)."""
    errors = []
    tokens = explorer.answer_settings.max_new_tokens  # what a fresh page asks
    for update in on_compare(explorer, None, click.image, click.question, click.text_only, tokens,
                             click.pinned, click.donor, click.panel):
        if str(update[0]).startswith("⚠️"):
            errors.append(f"{click.name}: {update[0]}")
    on_distributions(explorer, None, click.image, click.question, click.text_only, click.pinned, click.donor,
                     click.panel)
    if scan:
        for _, status in on_scan(explorer, None, click.image, click.question, click.text_only, click.donor,
                                 click.panel):
            if str(status).startswith("⚠️"):
                errors.append(f"{click.name} (α scan): {status}")
    return errors


def warm(explorer: Explorer, clicks: list[Click], scan: bool = True,
         progress: Callable[[int, int], None] | None = None) -> dict:
    """`press` every click; {"clicks", "entries_before", "entries", "errors"} (entries: the cache's)."""
    cache = explorer.answerer.cache
    before = cache.stats()["entries"]
    errors = []
    for done, click in enumerate(clicks, 1):
        errors += press(explorer, click, scan)
        if progress is not None:
            progress(done, len(clicks))
    return {"clicks": len(clicks), "entries_before": before, "entries": cache.stats()["entries"], "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.warm", description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--cache-dir", default="runs/cache", help="the answers cache the app will use")
    parser.add_argument("--eval-set", help="the app's --eval-set (default: the pair's own)")
    parser.add_argument("--examples", action="store_true", help="the shipped examples, as a fresh page asks them")
    parser.add_argument("--lessons", action="store_true", help="the lessons, as their set-up asks them")
    parser.add_argument("--limit", type=int, help="at most N image and N text-only examples (default: all shown)")
    parser.add_argument("--no-scan", action="store_true", help="skip the α scans (11 points each)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    if not (args.examples or args.lessons):
        parser.error("say what to warm: --examples, --lessons or both")
    try:
        explorer = build_explorer(args)
    except MergescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clicks = (example_clicks(explorer, args.limit) if args.examples else []) + \
        (lesson_clicks(explorer) if args.lessons else [])
    report = warm(explorer, clicks, scan=not args.no_scan,
                  progress=None if args.json else lambda d, n: print(f"warm: {d}/{n}", file=sys.stderr))
    print(json.dumps(report) if args.json else
          f"warmed {report['clicks']} clicks: cache {report['entries_before']} → {report['entries']} entries"
          + "".join(f"\n{e}" for e in report["errors"]))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
