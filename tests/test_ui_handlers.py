"""The UI's handlers called directly, without a browser or a model: a fake explorer stands in."""

import json
import inspect
import math
import types
from dataclasses import replace

import gradio as gr
import pytest
import torch

from merging.errors import PlanError
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import SCAN_ALPHAS
from merging.run.probe import summarize
from merging.model.known_pairs import TOY_DIR
from ui import lessons
from ui import answers_strip, asking, compare_tab, export_tab, group_curves, probe_panel, sweep_tab
from ui.explorer import bind
from ui.panel import PANEL_CONTROLS, PARAM_DEFS, Panel, plan_of, with_panel
from ui.plan_panel import table_of

L = 8


class FakeAnswerer:
    donors = {"shared": None}
    default_donor = "shared"
    cache = None

    def __init__(self):
        self.asked = []

    def config(self, plan, question, image, settings, donor=None):
        return {"plan": plan.to_dict(), "question": question}

    def stream(self, plan, question, image, settings, donor=None, source="ask"):
        self.asked.append((plan, question, donor))
        answer = "merged" if plan.rules else "base"
        yield {"answer": answer, "cached": False, "seconds": 0.1, "plan_hash": plan.hash(), "done": True}

    def distribution(self, plan, question, image=None, top_k=10, gold=None, donor=None):
        p = 0.9 if not plan.rules else 0.5
        log_probs = torch.tensor([p, 1 - p]).log()  # a two-token vocabulary: "red", "blue"
        return {"tokens": [["red", p], ["blue", 1 - p]], "p_gold": p if gold == "red" else None,
                "summary": summarize(log_probs), "cached": False}

    def alpha_scan(self, plan, question, image=None, alphas=(), gold=None, donor=None,
                   should_stop=lambda: False, **_):
        for a in alphas:
            if should_stop():  # as Answerer.alpha_scan: asked before each point
                return
            yield {"alpha": a, "answer": "red" if a < 0.5 else "blue", "p_top": 1 - a / 2,
                   "p_gold": 1 - a if gold else None, "kl_to_base": a, "cached": False}


class FakeExplorer:
    num_layers = L
    max_new_tokens = 16
    public = False
    export_dir = None

    def __init__(self):
        self.answerer = FakeAnswerer()
        self.eval_items = [types.SimpleNamespace(question="What colour is it?", answer="red")]

    def admit(self, request):
        pass

    def remember(self, request, config):
        pass


PARAMS = {p.name: p.default for p in PARAM_DEFS}
PANEL = Panel(["q_proj"], [0.5] * L, "linear", None, PARAMS)  # the linked curve


def compare(explorer, img=None, q="What colour is it?", text_only=True, pinned="", panel=PANEL):
    return list(answers_strip.on_compare(explorer, None, img, q, text_only, 8, pinned, "shared", panel))


def test_compare_streams_base_then_merged_then_a_diff():
    steps = compare(FakeExplorer())
    status, base, merged, pinned, *_, diff = steps[-1]
    assert steps[0][0] == "Answering…" and status == ""
    assert steps[-2][1] == "base" and steps[-2][2] == "merged"
    assert diff == [("base ", "-"), ("merged ", "+")]
    assert steps[1][2]["label"] == answers_strip.ANSWER_LABELS["merged"]  # fresh: not stale any more


def test_compare_needs_an_image_unless_text_only():
    (status, *rest), = compare(FakeExplorer(), text_only=False)
    assert "needs an image" in status and all(r == gr.update() for r in rest)


def test_compare_answers_plan_b_when_pinned():
    explorer = FakeExplorer()
    plan_b = MergePlan.from_dict({"rules": [{"components": ["mlp"], "curve": {"preset": "constant", "value": 1}}]})
    steps = compare(explorer, pinned=plan_b.to_yaml())
    assert [p.hash() for p, *_ in explorer.answerer.asked][-1] == plan_b.hash()
    assert steps[-2][3] == "merged"


def test_a_bad_table_cell_blocks_compare_until_fixed():
    frame = table_of([0.1] * L).astype({"α": object})
    frame.iloc[2, 1] = "1.7"
    curve, table, button, status = compare_tab.on_table(FakeExplorer(), frame)
    assert curve == gr.update()  # the curve keeps its last good values
    assert table["elem_classes"] == ["bad-cell"] and button["interactive"] is False
    assert "layer 2" in status and "outside [0, 1]" in status
    frame.iloc[2, 1] = "0.3"
    curve, table, button, status = compare_tab.on_table(FakeExplorer(), frame)
    assert curve[2] == 0.3 and table["elem_classes"] == [] and button["interactive"] is True and status == ""


def test_a_plan_change_marks_only_existing_merged_answers_stale():
    answered = Panel(["q_proj", "k_proj"], [0.5] * L, "linear")
    meta = f"0.10 s · done · plan `{plan_of(answered).hash()}` · donor: LLM"
    changed = Panel(["q_proj", "k_proj"], [0.6] * L, "linear")
    merged, pinned = compare_tab.mark_stale("red", "blue", meta, changed)
    assert compare_tab.STALE in merged["label"] and "stale" in merged["elem_classes"] and pinned == gr.update()
    assert compare_tab.mark_stale("", "", meta, changed)[0] == gr.update()  # nothing shown yet: nothing to grey
    # a control set to what it held (the page's start-up, late): the answer is still the plan's
    assert compare_tab.mark_stale("red", "blue", meta, answered) == (gr.update(), gr.update())
    merged, pinned = compare_tab.mark_stale_donor("red", "blue")
    assert compare_tab.STALE in pinned["label"]


def test_unpin_hides_plan_b():
    pinned, column, box, status = compare_tab.on_unpin()
    assert pinned == "" and column["visible"] is False and "unpinned" in status


def test_preset_with_bad_anchors_is_one_line():
    curve, status = compare_tab.on_preset_apply(FakeExplorer(), "anchors", 0.4, 0, 1, 0, "0, x")
    assert curve == gr.update() and status.startswith("⚠️") and "\n" not in status
    curve, status = compare_tab.on_preset_apply(FakeExplorer(), "constant", 0.6, 0, 1, 0, "")
    assert curve == [0.6] * L and "Applied constant" in status


def test_distributions_fill_the_bars_and_kl():
    base, merged, b, kl = answers_strip.on_distributions(FakeExplorer(), None, None, "What colour is it?", True, "",
                                                       "shared", PANEL)
    assert base.data[0].x[-1] == pytest.approx(0.9) and merged.data[0].x[-1] == pytest.approx(0.5)
    assert b["visible"] is False  # no plan B pinned
    kl_nats = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(base ‖ merged) over {red, blue}
    assert f"{kl_nats:.3f} nats" in kl


def test_gold_comes_from_the_example():
    assert asking.gold_for(FakeExplorer(), " What colour is it? ") == "red"
    assert asking.gold_for(FakeExplorer(), "Something typed in?") is None


def test_export_is_off_without_a_folder():
    assert "export is off" in export_tab.on_export(FakeExplorer(), "plan", "shared", PANEL)[1]


def test_with_panel_folds_the_controls_into_one_panel():
    """What Gradio sends (one value per control, PANEL_CONTROLS order) reaches the handler as a Panel,
    and Gradio sees one named parameter per control (the API's positional arguments)."""
    bound = bind(with_panel(answers_strip.on_compare), FakeExplorer())
    names = list(inspect.signature(bound).parameters)
    assert names == ["request", "img", "q", "text_only_q", "tokens", "pinned", "donor_name", *PANEL_CONTROLS]
    explorer = FakeExplorer()
    steps = list(bind(with_panel(answers_strip.on_compare), explorer)(
        None, None, "What colour is it?", True, 8, "", "shared", ["q_proj"], [0.5] * L, "linear", None,
        *PARAMS.values()))
    assert steps[-2][2] == "merged" and explorer.answerer.asked[1][0].hash() == plan_of(PANEL).hash()
    assert with_panel(compare_tab.on_plan_inputs)(["q_proj"], [0.5] * L, "linear", None, *PARAMS.values()) \
        == plan_of(PANEL).to_yaml()


def test_sweep_refuses_a_bad_grid_in_one_line():
    (status, *_), = list(sweep_tab.on_sweep(FakeExplorer(), "components: [", "", 1, "shared", progress=None))
    assert status.startswith("⚠️") and "\n" not in status


def test_bind_keeps_name_signature_and_generators():
    bound = bind(answers_strip.on_compare, FakeExplorer())
    assert bound.__name__ == "on_compare" and inspect.isgeneratorfunction(bound)
    first = next(iter(inspect.signature(bound).parameters.values()))
    assert first.name == "request" and first.annotation is gr.Request
    assert not inspect.isgeneratorfunction(bind(compare_tab.on_table, FakeExplorer()))


def test_the_scan_fills_in_eleven_points_as_it_goes():
    steps = list(probe_panel.on_scan(FakeExplorer(), None, None, "What colour is it?", True, "shared", PANEL))
    assert len(steps) == 11 and steps[-1][1] == "α scan: 11/11 points"
    fig = steps[-1][0]
    assert list(fig.data[0].x) == list(SCAN_ALPHAS) and fig.data[1].name == "p(gold)"
    assert fig.data[0].text[0] == "red" and fig.data[0].text[-1] == "blue"  # answers along the line


def test_scan_and_distribution_apis(tmp_path):
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]})
    points = probe_panel.api_scan(FakeExplorer(), plan.to_yaml(), "What colour is it?", None, "[0, 0.5, 1]")
    assert [p["alpha"] for p in points] == [0, 0.5, 1] and set(points[0]) == {"alpha", "answer", "p_top", "p_gold",
                                                                                 "kl_to_base"}
    result = probe_panel.api_distribution(FakeExplorer(), "rules: []", "What colour is it?", None, 5)
    assert result == {"tokens": [["red", 0.9], ["blue", pytest.approx(0.1)]], "p_gold": 0.9}
    with pytest.raises(gr.Error, match="JSON list"):
        probe_panel.api_scan(FakeExplorer(), "rules: []", "Hi?", None, "[2]")
    outside = tmp_path / "x.png"
    outside.write_bytes(b"x")
    with pytest.raises(gr.Error, match="other paths are refused"):  # never a file of the server's choosing
        probe_panel.api_distribution(FakeExplorer(), "rules: []", "Hi?", str(outside), 5)


def test_method_notes_say_what_is_loaded():
    explorer = FakeExplorer()
    explorer.answerer.donors = {"shared": "ckpt"}
    explorer.engine = types.SimpleNamespace(pair=types.SimpleNamespace(base=None),
                                            gram_fingerprints=lambda donor: {"vlm": None, "donor": None})
    assert "unavailable here: ties needs a base model and none is loaded" in compare_tab.method_note(explorer, "ties")
    assert "unavailable here: regmean needs Gram files" in compare_tab.method_note(explorer, "regmean")
    labels = dict((v, k) for k, v in compare_tab.method_choices(explorer))
    assert labels["regmean"] == "regmean — unavailable: needs Gram files" and labels["linear"] == "linear"
    assert labels["ties"] == "ties — unavailable: needs a base model"
    explorer.engine = types.SimpleNamespace(pair=types.SimpleNamespace(base="ckpt"),
                                            gram_fingerprints=lambda donor: {"vlm": "a", "donor": "b"})
    assert "base: loaded" in compare_tab.method_note(explorer, "ties")
    assert "Gram files: loaded" in compare_tab.method_note(explorer, "regmean")
    assert "—" not in compare_tab.method_note(explorer, "linear")


def test_inspect_names_the_donor_and_redraws_only_once_drawn():
    from ui import inspect_tab
    explorer = FakeExplorer()
    explorer.distances = lambda donor: [{"layer": 0, "role": "q_proj", "rel_l2": 0.1, "cosine": 0.9}]
    rel, cos = inspect_tab.on_inspect(explorer, "no seed")
    assert rel.layout.title.text.startswith("no seed:")
    assert (rel.data[0].zmin, rel.data[0].zmax) == (0.0, 1.5) and (cos.data[0].zmin, cos.data[0].zmax) == (-1, 1)
    assert inspect_tab.on_donor_switch(explorer, "no seed", None) == (gr.update(), gr.update())
    assert inspect_tab.on_donor_switch(explorer, "no seed", {"plot": 1})[0].layout.title.text.startswith("no seed")


def test_separate_curves_make_one_rule_per_group():
    groups = group_curves.on_groups(True, ["Attention", "MLP"], [0.1] * L, [0.9] * L, [0.0] * L, [0.0] * L)
    assert set(groups) == {"Attention", "MLP"}
    assert group_curves.on_groups(False, ["Attention"], *[[0.1] * L] * 4) is None  # linked: one curve
    steps = compare(FakeExplorer())  # linked
    assert steps[-2][2] == "merged" and len(plan_of(PANEL).rules) == 1
    explorer = FakeExplorer()
    compare(explorer, panel=replace(PANEL, groups=groups))
    merged_plan = explorer.answerer.asked[1][0]
    assert [(r.components, r.curve["values"]) for r in merged_plan.rules] == [(("self_attn",), [0.1] * L),
                                                                               (("mlp",), [0.9] * L)]
    with pytest.raises(PlanError, match="groups must be among"):
        plan_of(replace(PANEL, groups={"Everything": [0.1] * L}))
    with pytest.raises(PlanError, match="list of numbers"):
        plan_of(replace(PANEL, groups={"MLP": "0.1"}))


def test_a_lesson_sets_donor_components_curve_question_and_plan_b():
    explorer = FakeExplorer()
    explorer.answerer.donors = {"shared": None, lessons.NO_SHARED_SEED: None}
    roles = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    explorer.engine = types.SimpleNamespace(pair=types.SimpleNamespace(layout=types.SimpleNamespace(
        roles=lambda: roles)))
    explorer.eval_items = [types.SimpleNamespace(id=lessons.COLOUR_ID, question="What colour?", image_path="c.png"),
                           types.SimpleNamespace(id=lessons.TEXT_PLUS_ID, question="Add 2.", image_path=None)]
    assert len(lessons.LESSONS) >= 3
    donor, comps, method, separate, curve, question, image, text_only, pinned, card, text = \
        lessons.on_lesson(explorer, "Shared seed vs no seed")
    assert donor == lessons.NO_SHARED_SEED and comps == roles and curve == [0.4] * L and image == "c.png"
    assert question == "What colour?" and text_only is False and pinned == "" and "collapses" in text
    *_, question, image, text_only, pinned, card, text = lessons.on_lesson(explorer, "Early layers keep perception")
    assert MergePlan.from_text(pinned).rules and card["visible"] is True
    *_, question, image, text_only, pinned, card, text = lessons.on_lesson(explorer, "A skill moves across")
    assert (question, image, text_only) == ("Add 2.", None, True)


def test_examples_put_the_lessons_first_and_leave_out_blank_images():
    from merging.evals.eval_sets import load_eval_set
    from toy import TOY_EVAL
    from ui import examples, lessons
    items = load_eval_set(TOY_EVAL)
    with_image, text = examples.teaching_order(items)
    assert with_image[0].id == lessons.COLOUR_ID and text[0].id == lessons.TEXT_PLUS_ID
    assert all(i.image_path is None for i in text) and all(i.image_path for i in with_image)
    assert examples.blank(next(i.image_path for i in items if i.id == "count-00000"))  # an empty scene
    assert not any(examples.blank(i.image_path) for i in with_image)


def _row(cell, answered=4, complete=True):
    return {"setting": "S", "method": "constant α", "alpha": cell, "donor": "shared", "plan_hash": f"h{cell}",
            "items": 4, "accuracy": 0.5, "accuracy_low": 0.15,
            "accuracy_high": 0.85, "answered": answered, "complete": complete, "computed": answered, "cached": 0,
            "by_category": {"colour": {"accuracy": 0.5, "items": 4, "low": 0.15, "high": 0.85}}}


def test_stop_ends_a_sweep_between_batches_and_keeps_the_partial_results(monkeypatch):
    request = types.SimpleNamespace(session_hash="s1")
    monkeypatch.setattr(sweep_tab, "sweep_plan", lambda *a: ([0.2, 0.4, 0.6], ["i"] * 4, None))

    def run_sweep(answerer, cells, items, settings, donor=None, progress=None, should_stop=lambda: False):
        if cells[0] == 0.4:  # Stop pressed during the second cell: it ends half-way
            assert sweep_tab.STOPS.stop(request).startswith("Stopping")
            return [_row(0.4, answered=2, complete=False)] if should_stop() else [_row(0.4)]
        return [_row(cells[0])]
    monkeypatch.setattr(sweep_tab, "run_sweep", run_sweep)
    steps = list(sweep_tab.on_sweep(FakeExplorer(), "grid", "", 4, "shared", progress=None, request=request))
    status, heatmap, lines, table, categories, _ = steps[-1]  # the last: rows and eval set, for the lists
    assert len(steps) == 2 and status.startswith("Sweep stopped at 6 / 12 answers (2 of 3 cells)")
    assert list(table["complete"]) == [True, False] and list(table["95 % interval"]) == ["15–85 %"] * 2
    assert "Wilson 95 %: 15–85 %" in heatmap.data[0].customdata[0][0]
    assert categories["colour"][0] == "50 % (15–85)"
    assert not sweep_tab.STOPS  # nothing left behind


def test_history_filters_before_it_limits(tmp_path, monkeypatch):
    """A sweep's answers (more than History's row limit) never push out an answer asked from Compare."""
    from cache import AnswerCache
    from ui import history_tab
    store = AnswerCache(tmp_path / "cache")
    asked = {"kind": "answer", "question": "What colour?", "plan": {"rules": []}}
    store.put(asked, {"answer": "red", "batched": False})
    for i in range(12):  # a sweep's answers, stored after it: newer
        store.put({"kind": "answer", "question": f"item {i}", "plan": {"rules": []}}, {"answer": "x", "batched": True})
    monkeypatch.setattr(history_tab, "HISTORY_LIMIT", 5)
    explorer = types.SimpleNamespace(answerer=types.SimpleNamespace(cache=store), public=False,
                                     engine=types.SimpleNamespace(pair=types.SimpleNamespace(layout=None)))
    table, configs = history_tab.on_refresh(explorer)
    assert list(table["question"]) == ["What colour?"] and configs == [asked]
    assert len(store.entries(limit=5)) == 5 and len(store.entries(limit=5, keep=history_tab.listed)) == 1


def test_stop_scan_ends_the_scan_before_the_next_point():
    request = types.SimpleNamespace(session_hash="scan-1")
    steps = []
    for step in probe_panel.on_scan(FakeExplorer(), request, None, "What colour is it?", True, "shared", PANEL):
        steps.append(step)
        if len(steps) == 2:  # Stop scan pressed while the second point shows
            assert probe_panel.STOPS.stop(request).startswith("Stopping")
    assert steps[-1][1] == "α scan stopped at 2/11 points" and len(steps) == 3
    assert not probe_panel.STOPS and probe_panel.STOPS.stop(request) == ""  # nothing left behind


def test_lesson_numbers_are_the_toy_pairs_measured_tables():
    results = json.loads((TOY_DIR / "eval_results.json").read_text())
    ramp = next(r for r in results["grid_llm"] if (r["setting"], r["curve"], r["alpha"]) == ("Setting 1", "linear", 0.6))
    expected = f"{round(ramp['colour'] * 100)} %"
    assert lessons.measured("colour", "linear", 0.6) == expected
    assert expected in lessons.LESSONS["Early layers keep perception"]["text"]
    assert f"{round(results['vlm']['text_plus'] * 100)} %" in lessons.LESSONS["A skill moves across"]["text"]


class NoGramsExplorer(FakeExplorer):
    """What a pair without Gram files or base model offers: RegMean and TIES cannot run."""
    engine = types.SimpleNamespace(pair=types.SimpleNamespace(base=None),
                                   gram_fingerprints=lambda donor: {"vlm": None, "donor": None})


def test_each_method_shows_its_own_parameter_help():
    """γ means one thing to breadcrumbs and another to RegMean: the box shows the selected method's help."""
    from merging.methods import REGISTRY
    box = [p.name for p in PARAM_DEFS].index("gamma")
    for method in ("breadcrumbs", "regmean"):
        update = compare_tab.on_method(NoGramsExplorer(), method)[1 + box]
        own = next(p for p in REGISTRY[method].params if p.name == "gamma")
        assert update["info"] == own.doc and update["value"] == own.default and update["visible"]
    assert REGISTRY["breadcrumbs"].params[1].doc != REGISTRY["regmean"].params[0].doc


def test_a_method_that_cannot_run_is_refused_in_one_line_before_any_answer():
    explorer = NoGramsExplorer()
    for method in ("regmean", "ties"):
        steps = compare(explorer, panel=replace(PANEL, method=method))
        assert len(steps) == 1 and steps[0][0].startswith(f"⚠️ cannot compare: {method} needs")
        assert "\n" not in steps[0][0] and not explorer.answerer.asked  # nothing answered, no badge at all
    pinned = plan_of(replace(PANEL, method="regmean")).to_yaml()  # plan B is checked too
    assert compare(explorer, pinned=pinned)[0][0].startswith("⚠️ cannot compare: regmean")


def test_an_answer_that_fails_midway_leaves_no_badge_on_generating():
    explorer = FakeExplorer()

    def stream(plan, question, image, settings, donor=None, source="ask"):
        yield {"answer": "", "cached": False, "seconds": 0.0, "plan_hash": plan.hash(), "done": not plan.rules}
        if plan.rules:
            raise PlanError("the merge failed")
    explorer.answerer.stream = stream
    status, _, _, _, base_meta, merged_meta, _, _ = compare(explorer)[-1]
    assert status == "⚠️ the merge failed" and "done" in base_meta and merged_meta == ""


def test_the_default_sweep_spreads_its_items_over_every_kind():
    """Not the first 8 items (one per kind, per-category cells of "0 % (0–79)"): PER_KIND of each kind,
    the same items however the eval set is sorted."""
    from collections import Counter
    from merging.evals.eval_sets import load_eval_set, spread_items
    from merging.model.known_pairs import TOY_EVAL
    items = load_eval_set(TOY_EVAL)
    explorer = FakeExplorer()
    explorer.eval_items, explorer.eval_spec = items, str(TOY_EVAL)
    n = sweep_tab.default_items(explorer)
    _, chosen, _ = sweep_tab.sweep_plan(explorer, sweep_tab.DEFAULT_GRID, str(TOY_EVAL), n)
    kinds = Counter(i.category for i in items)
    assert n == sweep_tab.PER_KIND * len(kinds) and set(Counter(i.category for i in chosen).values()) == {10}
    by_kind = sorted(items, key=lambda i: i.category)  # a file sorted by kind spreads the same way
    assert Counter(i.category for i in spread_items(by_kind, 16)).most_common()[0][1] == 2
    assert spread_items(items, 16) == items[:16]  # the toy set is interleaved: its first items
    explorer.public = True  # a public demo's default fits its answer cap
    cells = len(sweep_tab.parse_grid(sweep_tab.DEFAULT_GRID)[0])
    assert sweep_tab.default_items(explorer) * cells <= sweep_tab.PUBLIC_MAX_SWEEP_ANSWERS
