"""The layer views of issue #22 on the toy pair: Compare's "Which layers moved this answer?" (sensitivity
heatmap, logit lens), the XY grid tab, the Sweep tab's flips and Inspect's eval-set layer map — the
handlers first (cheap, deterministic stops), then each view in the browser."""

from __future__ import annotations

import gradio as gr
import pytest

from merging.experiments.sweep import parse_grid, run_sweep
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings
from merging.run.sensitivity import layer_sensitivity
from tests.conftest import NEEDS_CHROMIUM, fill_number, wait_status
from ui import layers_panel, xy_tab
from ui.flips import flips_html
from ui.lessons import BLUE_ID, lesson_setup
from ui.panel import Panel, attention_roles, plan_of

COLOUR_Q = "What colour is the shape at the top left?"  # the toy eval set's first colour item (an example)
FLIP_GRID = "components:\n  Setting 1: [all]\ncurves:\n  constant α: {preset: constant}\nalphas: [1.0]\nmax_new_tokens: 4\n"


def _asked(explorer, item_id="colour-00000"):
    item = next(i for i in explorer.eval_items if i.id == item_id)
    return str(item.image_path), item.question, item


def _panel(explorer, alpha=1.0):
    return Panel(attention_roles(explorer), [alpha] * explorer.num_layers, "linear")


def test_layers_handler_rows_are_the_library_rows_and_stop_ends_it(server):
    explorer = server[1]
    image, question, item = _asked(explorer)
    steps = layers_panel.on_layers(explorer, None, image, question, False, 4, "p(gold)", None, _panel(explorer))
    figure, status, shown = next(steps)
    assert status == "Layers: 1/12 cells" and figure == gr.update()  # 2 blocks × 3 groups × 2 modes; drawn per block
    assert layers_panel.STOPS.stop(None)  # between two cells: the next is never asked
    *_, (final_figure, final_status, _) = steps
    assert final_status == "Layers: stopped at 1/12 cells" and final_figure.data[0].z[0][0] is not None
    expected = next(layer_sensitivity(explorer.answerer, plan_of(_panel(explorer)), question, item.image(), 4,
                                      item.answer))
    assert {k: v for k, v in shown["rows"][0].items() if k != "cached"} == \
        {k: v for k, v in expected.items() if k != "cached"} and expected["cached"]  # the cell's entry, cached


def test_lens_handler_ends_on_the_models_own_next_token(server):
    explorer = server[1]
    image, question, item = _asked(explorer)
    figure, status = layers_panel.on_lens(explorer, None, image, question, False, None, _panel(explorer))
    merged = next(t for t in figure.data if t.name == "merged: p(top token)")
    dist = explorer.answerer.distribution(plan_of(_panel(explorer)), question, item.image(), top_k=1)
    assert merged.y[-1] == pytest.approx(dist["tokens"][0][1], abs=1e-5) and len(merged.y) == explorer.num_layers
    assert f"merged says {dist['tokens'][0][0]!r}" in status


def test_xy_handler_stops_between_cells_and_a_click_opens_the_cells_plan(server):
    explorer = server[1]
    image, question, item = _asked(explorer)
    steps = xy_tab.on_xy(explorer, None, image, question, False, "alpha", "[0.5, 1]", "group", '["attention", "mlp"]',
                         None, _panel(explorer))
    _, status, cells = next(steps)
    assert status == "XY: 1/4 cells" and xy_tab.STOPS.stop(None)
    *_, (_, final, _) = steps
    assert final.startswith("XY: stopped at 1/4 cells")
    reply = explorer.answerer.ask(MergePlan.from_dict(cells[0]["plan"]), question, item.image(),
                                  GenerationSettings(max_new_tokens=8))
    assert cells[0]["answer"] == reply["answer"]
    opened = xy_tab.on_cell(explorer, cells, gr.SelectData(None, {"index": [0, 1], "value": ""}))
    assert opened[-1].startswith("Opened XY cell attention × 0.5") and opened[-3] == [0.5] * explorer.num_layers
    assert all(v == gr.update() for v in xy_tab.on_cell(explorer, cells, gr.SelectData(None, {"index": [0, 0], "value": ""})))


def test_flips_list_exactly_the_flipped_items(server):
    explorer = server[1]
    cells, settings = parse_grid(FLIP_GRID)
    items = explorer.eval_items[:8]
    rows = run_sweep(explorer.answerer, cells, items, settings)
    shown = flips_html(rows, 1, items)
    flipped = rows[1]["right_to_wrong"] + rows[1]["wrong_to_right"]
    with_image = [i for i in items if i.id in flipped and i.image_path is not None]
    assert shown.count("<tr><td>") == len(flipped) and shown.count("data:image/png;base64") == len(with_image)
    assert f"right → wrong: {len(rows[1]['right_to_wrong'])} items" in shown
    assert "base VLM's row" in flips_html(rows, 0, items)


def test_the_layer_lesson_says_what_its_plans_answer(server):
    explorer = server[1]
    setup = lesson_setup(explorer, "Which layers carry colour?")
    _, question, item = _asked(explorer, BLUE_ID)
    first = {name: explorer.answerer.distribution(plan_of(Panel(setup["components"], setup[key], "linear")),
                                                  question, item.image(), top_k=1)["tokens"][0][0]
             for name, key in (("current", "curve"), ("plan B", "pin"))}
    assert first == {"current": "green", "plan B": "blue"} and item.answer == "blue"


def _open_colour_example(page):
    page.get_by_text(COLOUR_Q).first.click()
    page.wait_for_function("() => document.querySelector('#question textarea').value.length > 0")


@NEEDS_CHROMIUM
def test_browser_layers_heatmap_metric_and_lens(page):
    _open_colour_example(page)
    page.locator("#layers-panel").get_by_text("Which layers moved this answer?").first.click()
    fill_number(page, "#layers-block", "4")
    page.locator("#layers-run").click()
    wait_status(page, "#layers-status", "all 12 cells")  # 2 blocks of 4 layers × 3 groups × 2 modes
    page.wait_for_selector("#layers-plot .main-svg")
    assert "attention · only" in page.locator("#layers-plot").inner_text()
    page.locator("#layers-metric").get_by_text("KL(base ‖ cell)").click()
    wait_status(page, "#layers-plot", "colour: KL")
    page.locator("#lens-run").click()
    wait_status(page, "#layers-status", "Last layer: base says 'red'")
    page.wait_for_selector("#lens-plot .main-svg")


@NEEDS_CHROMIUM
def test_browser_xy_grid_and_a_click_opens_compare(page):
    _open_colour_example(page)
    page.get_by_role("tab", name="XY grid").click()
    page.locator("#xy-x-values textarea").fill("[0.5, 1]")
    page.locator("#xy-y-values textarea").fill('["attention", "mlp"]')
    page.locator("#xy-run").click()
    wait_status(page, "#xy-status", "all 4 cells")
    page.locator('#xy-table .body-cell[data-row="0"][data-col="1"]').click()
    page.get_by_role("tab", name="Compare").click()
    wait_status(page, "#status", "Opened XY cell attention × 0.5")


@NEEDS_CHROMIUM
def test_browser_sweep_flips_in_the_table_and_on_click(page, server):
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#grid .cm-content").fill(FLIP_GRID)
    fill_number(page, "#sweep-items", "8")
    page.locator("#run-sweep").click()
    wait_status(page, "#sweep-status", "Sweep: 2/2 cells")
    assert "McNemar p" in page.locator("#sweep-table").inner_text()
    page.locator('#sweep-table .body-cell[data-row="1"][data-col="0"]').click()
    wait_status(page, "#sweep-flips", "McNemar p =")


@NEEDS_CHROMIUM
def test_browser_inspect_layer_map(page):
    page.get_by_role("tab", name="Inspect").click()
    fill_number(page, "#map-items", "8")
    page.locator("#map-run").click()
    wait_status(page, "#map-status", "Layer map of 8 items (complete)")
    wait_status(page, "#map-plot", "colour · attention")  # the figure draws after the status
