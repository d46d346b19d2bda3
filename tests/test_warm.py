"""`python -m ui.warm`: after warming, the page's first clicks — an example, then Compare, its bars and
the α scan; a lesson, then Compare — are answered from the cache: they add no entry and say "cached"."""

from __future__ import annotations

import pytest

import app
from conftest import toy_explorer
from ui.compare_tab import on_compare, on_distributions, start_panel
from ui.examples import teaching_order
from ui.lessons import LESSONS, on_lesson
from ui.panel import Panel, plan_of
from ui.probe_panel import on_scan
from ui.explorer import build_explorer
from ui.warm import example_clicks, lesson_clicks, main, warm


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    explorer = toy_explorer(tmp_path_factory.mktemp("warm"))
    lesson = "Early layers keep perception"  # the one with a plan B
    clicks = example_clicks(explorer, limit=1)[:1] + [c for c in lesson_clicks(explorer) if c.name == lesson]
    report = warm(explorer, clicks)
    assert report["errors"] == [] and report["clicks"] == 2 and report["entries"] > report["entries_before"] == 0
    return explorer


def _compare_metas(explorer, image, question, text_only, pinned, donor, panel) -> list[str]:
    updates = list(on_compare(explorer, None, image, question, text_only, explorer.answer_settings.max_new_tokens, pinned, donor, panel))
    assert updates[-1][0] == "", updates[-1][0]  # no refusal
    answering = [u for u in updates if u[0] == "Answering…"][-1]
    return [m for m in answering[4:7] if m]


def test_the_first_example_clicked_is_a_cache_hit(warmed):
    explorer = warmed
    entries = explorer.answerer.cache.stats()["entries"]
    first = teaching_order(explorer.eval_items)[0][0]  # the first image example the page lists
    image, donor, panel = str(first.image_path), explorer.answerer.default_donor, start_panel(explorer)
    metas = _compare_metas(explorer, image, first.question, False, "", donor, panel)
    assert len(metas) == 2 and all("cached ✓" in m for m in metas), metas
    on_distributions(explorer, None, image, first.question, False, "", donor, panel)
    statuses = [status for _, status in on_scan(explorer, None, image, first.question, False, donor, panel)]
    assert statuses[-1] == "α scan: 11/11 points"
    assert explorer.answerer.cache.stats()["entries"] == entries  # nothing missed: nothing was stored


def test_a_lesson_then_compare_is_a_cache_hit(warmed):
    """The lesson's set-up as `on_lesson` sends it to the page, then Compare with its plan B."""
    explorer = warmed
    entries = explorer.answerer.cache.stats()["entries"]
    name = "Early layers keep perception"
    donor, components, method, _, curve, question, image, text_only, pinned, *_ = on_lesson(explorer, name)
    panel = Panel(components, curve, method, None, start_panel(explorer).params)
    metas = _compare_metas(explorer, image, question, text_only, pinned, donor, panel)
    assert len(metas) == 3 and all("cached ✓" in m for m in metas), metas  # base, merged, plan B
    assert plan_of(panel).rules and name in LESSONS
    assert explorer.answerer.cache.stats()["entries"] == entries


def test_the_command_needs_something_to_warm(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "--examples, --lessons or both" in capsys.readouterr().err


def test_the_command_warms_what_the_app_then_asks(tmp_path, capsys):
    """The command as the Dockerfile runs it, then the explorer as app.py builds it on the same cache: the
    first example's Compare is answered from the cache (the two build their explorers in one place)."""
    cache = str(tmp_path / "cache")
    assert main(["--examples", "--limit", "1", "--no-scan", "--cache-dir", cache]) == 0
    assert "warmed" in capsys.readouterr().out
    explorer = build_explorer(app.parse_args(["--cache-dir", cache]))
    first = teaching_order(explorer.eval_items)[0][0]
    metas = _compare_metas(explorer, str(first.image_path), first.question, False, "",
                           explorer.answerer.default_donor, start_panel(explorer))
    assert len(metas) == 2 and all("cached ✓" in m for m in metas), metas
