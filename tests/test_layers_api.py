"""`/layers`, `/lens`, `/xy` (issue #22): results for good input, a one-line gr.Error for bad input of any
type — never an opaque server exception — with the resident weights at a known plan afterwards."""

from __future__ import annotations

import gradio as gr
import pytest

from merging import MergePlan
from tests.test_api_args import check_weights_hold_a_known_plan
from ui import layers_panel
from ui.explorer import bind
from ui.layers_api import XY_SETTINGS, api_layers, api_lens, api_xy

PLAN = "rules: [{components: [all], curve: {preset: constant, value: 0.5}}]"
Q = "What colour is the shape at the top left?"


def test_good_input_gives_the_documented_shapes(api_explorer, api_original):
    rows = bind(api_layers, api_explorer)(PLAN, Q, None, 4)
    assert len(rows) == 2 * 3 * 2 and rows[0]["layers"] == [0, 3]
    assert set(rows[0]) == {"layers", "group", "mode", "p_top", "p_gold", "kl_to_base", "answer"}
    lens = bind(api_lens, api_explorer)(PLAN, Q, None)
    assert [r["layer"] for r in lens["base"]] == [r["layer"] for r in lens["merged"]] == list(range(8))
    top = api_explorer.answerer.distribution(MergePlan.from_text(PLAN), Q, None, top_k=1)["tokens"][0]
    assert lens["merged"][-1]["token"] == top[0] and lens["merged"][-1]["p_top"] == pytest.approx(top[1], rel=1e-5)
    cells = bind(api_xy, api_explorer)(PLAN, Q, None, "alpha", "[0.5, 1]", "group", ["mlp", "all"])
    assert [(c["x"], c["y"]) for c in cells] == [(0.5, "mlp"), (1.0, "mlp"), (0.5, "all"), (1.0, "all")]
    assert cells[2]["answer"] == api_explorer.answerer.ask(MergePlan.from_text(PLAN), Q, None,
                                                       XY_SETTINGS)["answer"]


BAD = [
    (api_layers, (PLAN, Q, None, 0), "block"),
    (api_layers, (PLAN, Q, None, 9), "block"),
    (api_layers, (PLAN, Q, None, [1]), "block"),
    (api_layers, (["rules"], Q, None, 1), "plan"),
    (api_layers, (PLAN, ["What?"], None, 1), "question"),
    (api_layers, (PLAN, Q, "/etc/hostname", 1), "image"),
    (api_layers, ("rules: [{components: [all], curve: {preset: nope}}]", Q, None, 1), "preset"),
    (api_lens, (PLAN, "", None), "question"),
    (api_lens, (42, Q, None), "plan"),
    (api_lens, (PLAN, Q, {"url": "data:image/png;base64,"}), "image"),
    (api_xy, (PLAN, Q, None, "alpha", [0.5, 2], "group", ["mlp"]), r"\[0, 1\]"),
    (api_xy, (PLAN, Q, None, "alpha", "[0.5", "group", ["mlp"]), "not JSON"),
    (api_xy, (PLAN, Q, None, "alpha", 0.5, "group", ["mlp"]), "list"),
    (api_xy, (PLAN, Q, None, "alpha", [0.5], "group", ["embeddings"]), "unknown group"),
    (api_xy, (PLAN, Q, None, ["alpha"], [0.5], "group", ["mlp"]), "x_axis"),
    (api_xy, (PLAN, Q, None, "colour", [0.5], "group", ["mlp"]), "unknown axis"),
    (api_xy, (PLAN, Q, None, "alpha", [0.5], "alpha", [1]), "both"),
    (api_xy, (PLAN, Q, None, "alpha", [i / 10 for i in range(10)], "step", [0, 1]), "limit is 16"),
    (api_xy, (PLAN, Q, None, "step", [8], "group", ["mlp"]), "step layer"),
    (api_xy, (PLAN, Q, None, "method", ["ties"], "group", ["mlp"]), "base"),
    (api_xy, (PLAN, Q, None, "alpha", "[" * 300 + "]" * 300, "group", ["mlp"]), "not a number"),
]


@pytest.mark.parametrize("fn, args, words", BAD, ids=[f"{fn.__name__}-{i}" for i, (fn, _, _) in enumerate(BAD)])
def test_bad_input_gets_one_line_and_changes_nothing(api_explorer, api_original, fn, args, words):
    with pytest.raises(gr.Error, match=words) as caught:
        bind(fn, api_explorer)(*args)
    message = caught.value.message
    assert message and "\n" not in message and len(message) <= 300 and "Traceback" not in message
    check_weights_hold_a_known_plan(api_explorer.engine, api_original)


def test_a_public_demo_refuses_more_layer_cells_than_its_cap(api_explorer, api_original, monkeypatch):
    assert api_explorer.public
    monkeypatch.setattr(layers_panel, "PUBLIC_MAX_LAYER_CELLS", 24)  # 4 blocks × 3 groups × 2 modes
    with pytest.raises(gr.Error, match="at most 24 layer cells at a time: use blocks of at least 2 layers"):
        bind(api_layers, api_explorer)(PLAN, Q, None, 1)  # 8 blocks of 1 layer: 48 cells
    check_weights_hold_a_known_plan(api_explorer.engine, api_original)
    assert len(bind(api_layers, api_explorer)(PLAN, Q, None, 2)) == 24
