"""History that tells, and careless inputs that never show a red "Error": the handlers on the real toy
explorer (the `server` fixture's), then a real browser."""

import os
import types
from pathlib import Path

from merging.model.known_pairs import NO_SHARED_SEED
from tests.conftest import NEEDS_CHROMIUM, fill_number, wait_status
from ui import compare_tab, history_tab, probe_panel, sweep_tab
from ui.lessons import COLOUR_ID
from ui.panel import PARAM_DEFS, Panel, attention_roles

SHOTS = Path(os.environ.get("MERGESCOPE_SHOTS", "/tmp/shots28b"))
# a sweep of 320 answers (5 cells × 64 items): more than History's 200-row limit of the old, limit-first listing
BIG_GRID = "components:\n  Setting 1: [all]\ncurves:\n  constant α: {preset: constant}\n" \
           "alphas: [0.2, 0.4, 0.6, 0.8]\nmax_new_tokens: 2\n"


def _compare(explorer, panel, image, question, text_only, tokens, donor) -> list:
    return list(compare_tab.on_compare(explorer, None, image, question, text_only, tokens, "", donor, panel))


def _answers(steps) -> list:
    """(base, merged) as the last streamed values of the two answer boxes."""
    shown = {}
    for step in steps:
        for name, value in zip(("base", "merged"), step[1:3]):
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            if isinstance(value, str):
                shown[name] = value
    return [shown["base"], shown["merged"]]


def test_history_keeps_compare_lists_one_row_per_scan_and_restores_what_was_asked(server):
    _, explorer = server
    item = next(i for i in explorer.eval_items if i.id == COLOUR_ID)
    params = {p.name: p.default for p in PARAM_DEFS}
    panel = Panel(attention_roles(explorer), [0.6] * explorer.num_layers, "linear", None, params)
    original = _answers(_compare(explorer, panel, str(item.image_path), item.question, False, 6, NO_SHARED_SEED))
    text_q = next(i for i in explorer.eval_items if i.image_path is None).question
    _compare(explorer, panel, None, text_q, True, 4, NO_SHARED_SEED)
    list(probe_panel.on_scan(explorer, None, None, text_q, True, NO_SHARED_SEED, panel))  # 11 points
    *_, last = sweep_tab.on_sweep(explorer, BIG_GRID, explorer.eval_spec, 64, NO_SHARED_SEED, progress=None)
    assert last[0].startswith("Sweep: 5/5 cells")
    answers, said = sweep_tab.on_cell(explorer, last[5], types.SimpleNamespace(index=[2, 0]))  # a cell's line
    assert len(answers) == 64 and said.startswith("Answers of Setting 1 · constant α · α 0.4: ")
    assert set(answers.columns) == {"item", "question", "gold", "answer", "read as", "right"} and answers["gold"].all()
    table, configs = history_tab.on_refresh(explorer)
    kinds = list(table["kind"])
    assert kinds.count("Compare") == 2 and kinds.count("α scan · complete") == 1 and kinds.count("sweep · complete") == 1
    assert len(table) == 4  # no row per scan point, per sweep answer, or per answer a Compare asked
    row = table[(table["kind"] == "Compare") & (table["question"] == item.question)].iloc[0]
    assert row["donor"] == NO_SHARED_SEED and row["plan"] == "Attention · linear · custom α 0.6–0.6"
    assert row["answer"] == f"base: {original[0]} · merged: {original[1]}"
    sweep = table[table["kind"].str.startswith("sweep")].iloc[0]
    assert sweep["plan"] == "5 cells: Setting 1, constant α, α 0.2–0.8" and sweep["donor"] == NO_SHARED_SEED

    restored = history_tab.restore(explorer, configs[list(table.index[table["question"] == item.question])[0]])
    comps, method, alphas, _, question, note, donor, image, text_only, tokens, *boxes = restored
    assert (image, text_only, tokens["value"], donor["value"]) == (str(item.image_path), False, 6, NO_SHARED_SEED)
    again = Panel(comps, alphas, method, None, {p.name: b["value"] for p, b in zip(PARAM_DEFS, boxes)})
    steps = _compare(explorer, again, image, question, text_only, tokens["value"], donor["value"])
    assert _answers(steps) == original and "cached ✓" in steps[-2][5]  # the very configuration asked before
    text_row = configs[list(table["question"]).index(text_q)]
    assert history_tab.restore(explorer, text_row)[7:9] == [None, True]  # a text-only question stays text-only


def test_a_stopped_sweep_is_marked_stopped(server):
    _, explorer = server
    request = type("Request", (), {"session_hash": "history-stop"})()
    steps = sweep_tab.on_sweep(explorer, BIG_GRID, explorer.eval_spec, 3, NO_SHARED_SEED, progress=None,
                               request=request)
    next(steps)  # the base cell: then Stop, between cells
    sweep_tab.STOPS.stop(request)
    list(steps)
    table, _ = history_tab.on_refresh(explorer)
    assert table["kind"].iloc[0].startswith("sweep · stopped: ") and "of 5 cells" in table["kind"].iloc[0]


def _no_error_shown(page) -> None:
    page.wait_for_timeout(300)  # a toast appears within a frame of the reply; nothing is waited for here
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator("[data-testid=toast-body]").count() == 0


@NEEDS_CHROMIUM
def test_careless_inputs_after_an_example_and_a_lesson_give_one_line_each(page, tmp_path):
    page.get_by_text("What colour is the shape at the top left?").first.click()  # an image example
    page.wait_for_function("() => document.querySelector('#question textarea').value.length > 0")
    page.locator("#lessons input").click()
    page.get_by_role("option", name="Early layers keep perception").click()
    wait_status(page, "#lesson-text", "Plan B")
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not an image")
    page.locator("#image button[aria-label='Remove Image']").first.click()
    page.locator("#image input[type=file]").set_input_files(str(fake))
    page.locator("#compare").click()
    assert "\n" not in wait_status(page, "#status", "⚠️").strip()
    _no_error_shown(page)
    value = page.get_by_label("value", exact=True).first  # the preset's value: 2 is no α
    value.fill("2")
    value.press("Tab")
    page.locator("#preset input").click()
    page.get_by_role("option", name="constant", exact=True).click()
    page.locator("#apply-preset").click()
    wait_status(page, "#status", "outside [0, 1]")
    _no_error_shown(page)
    page.locator("#method input").click()  # a method parameter outside its range: TIES keeps a density in (0, 1]
    page.get_by_role("option", name="ties", exact=True).click()
    fill_number(page, "#param-density", "5")
    page.locator("#text-only input").check()
    page.locator("#compare").click()
    wait_status(page, "#status", "density")
    _no_error_shown(page)
    page.get_by_role("tab", name="Sweep").click()
    fill_number(page, "#sweep-items", "-3")
    page.locator("#run-sweep").click()
    wait_status(page, "#sweep-status", "⚠️")
    _no_error_shown(page)


@NEEDS_CHROMIUM
def test_history_tab_screenshots(page, server):
    """The History tab after the handler test's Compare, scan and sweep, at a laptop's and a projector's size."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("tab", name="History").click()
    page.locator("#refresh-history").click()
    page.wait_for_selector("#history [data-testid=cell-0-0]")
    for width, height in ((1400, 900), (1024, 768)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS / f"history-{width}x{height}.png"))
    assert "Compare" in page.locator("#history").inner_text()
