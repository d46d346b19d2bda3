"""The UI's handlers called directly, without a browser, on the shipped toy pair (tests/conftest.py's
`toy_explorer`: built as app.py builds it). Each outcome is checked against what the real answerer gives
for the same plan, question and image."""

import inspect
import json
import types
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

from cache import AnswerCache
from conftest import toy_explorer
from merging import MergeEngine, load_pair
from merging.errors import PlanError
from merging.evals.eval_sets import load_eval_set
from merging.experiments.sweep import parse_grid, wilson_interval
from merging.io.images import read_image
from merging.model.known_pairs import NO_SHARED_SEED, SHARED_SEED, TOY_DIR, TOY_EVAL, TOY_LLM, TOY_SEED, TOY_VLM
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import SCAN_ALPHAS, Answerer
from merging.run.collect_grams import run_grams
from merging.run.generate import GenerationSettings
from merging.run.probe import kl_divergence
from ui import lessons
from ui import answers_strip, asking, compare_tab, export_tab, group_curves, probe_panel, sweep_tab
from ui.explorer import Explorer, bind
from ui.panel import PANEL_CONTROLS, PARAM_DEFS, Panel, attention_roles, component_choices, plan_of, with_panel
from ui.plan_panel import table_of, token_diff
from ui.records import listed

L = 8  # the toy VLM's decoder layers
PARAMS = {p.name: p.default for p in PARAM_DEFS}
TEXT_Q = "How many times does fox appear in: fox fox fish fox fox dog? Add 2."  # text-only; gold "6"
COLOUR_Q = "What colour is the shape at the top left?"  # the first colour example's; gold "red"
TOKENS = 8  # what `compare` asks for
SETTINGS = GenerationSettings(max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    """The toy explorer the module shares (its cache fills as the tests ask)."""
    return toy_explorer(tmp_path_factory.mktemp("handlers"))


@pytest.fixture
def fresh(tmp_path):
    """Another toy explorer, whose cache starts empty: answers computed live, records counted."""
    return toy_explorer(tmp_path)


@pytest.fixture(scope="module")
def no_base(tmp_path_factory):
    """The toy VLM and donor without a base model (and no Gram files): TIES and RegMean cannot run."""
    engine = MergeEngine(load_pair(TOY_VLM, TOY_LLM))
    return Explorer(Answerer(engine, AnswerCache(tmp_path_factory.mktemp("no_base") / "cache")))


@pytest.fixture(scope="module")
def with_grams(tmp_path_factory):
    """The toy pair with its base and Gram files of both models (two eval items): everything can run."""
    root = tmp_path_factory.mktemp("grams")
    for name, model in (("vlm", TOY_VLM), ("donor", TOY_LLM)):
        run_grams(model, TOY_EVAL, root / f"{name}.safetensors", max_samples=2)
    engine = MergeEngine(load_pair(TOY_VLM, TOY_LLM, TOY_SEED),
                         grams={n: str(root / f"{n}.safetensors") for n in ("vlm", "donor")})
    return Explorer(Answerer(engine, AnswerCache(root / "cache")))


@pytest.fixture(scope="module")
def panel(explorer):
    """The linked curve: self-attention at α 0.5 (it turns the text question's "3" into "0")."""
    return Panel(attention_roles(explorer), [0.5] * L, "linear", None, PARAMS)


@pytest.fixture(scope="module")
def colour(explorer):
    """The first colour example: its image file and the image itself."""
    item = next(i for i in explorer.eval_items if i.id == lessons.COLOUR_ID)
    assert (item.question, item.answer) == (COLOUR_Q, "red")
    return str(item.image_path), read_image(item.image_path)


def compare(explorer, panel, img=None, q=TEXT_Q, text_only=True, pinned="", donor=SHARED_SEED):
    return list(answers_strip.on_compare(explorer, None, img, q, text_only, TOKENS, pinned, donor, panel))


def request_of(session: str):
    """What Gradio hands a handler, as far as Stop reads it: the page's session hash."""
    return types.SimpleNamespace(session_hash=session)


def answer(explorer, plan, q=TEXT_Q, image=None, donor=SHARED_SEED):
    """The real answerer's answer, at Compare's settings."""
    return explorer.answerer.ask(plan, q, image, SETTINGS, donor=donor)["answer"]


def test_compare_streams_base_then_merged_then_a_diff(fresh, panel):
    steps = compare(fresh, panel)
    base, merged = answer(fresh, MergePlan()), answer(fresh, plan_of(panel))
    assert base != merged  # the merge changes the answer: the diff has something to show
    assert steps[0][0] == "Answering…" and steps[-1][0] == ""
    assert steps[-2][1:3] == (base, merged)
    first_merged = next(i for i, s in enumerate(steps) if isinstance(s[2], str))
    assert first_merged > 1 and steps[first_merged][1] == base  # the base answer is whole before merged begins
    assert all(isinstance(s[1], str) for s in steps[1:-1])
    _, _, _, _, base_meta, merged_meta, pinned_meta, _ = steps[-2]
    assert f"done · plan `{MergePlan().hash()}` · no donor" in base_meta
    assert f"done · plan `{plan_of(panel).hash()}` · donor: {SHARED_SEED}" in merged_meta and pinned_meta == ""
    diff = steps[-1][-1]
    assert diff == token_diff(base, merged) and {tag for _, tag in diff} == {"-", "+"}
    assert steps[1][2]["label"] == answers_strip.ANSWER_LABELS["merged"]  # fresh: not stale any more


def test_compare_needs_an_image_unless_text_only(explorer, panel):
    (status, *rest), = compare(explorer, panel, text_only=False)
    assert "needs an image" in status and all(r == gr.update() for r in rest)


def test_compare_answers_plan_b_when_pinned(explorer, panel):
    plan_b = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 1}}]})
    steps = compare(explorer, panel, pinned=plan_b.to_yaml())
    _, base, merged, pinned, _, merged_meta, pinned_meta, _ = steps[-2]
    assert pinned == answer(explorer, plan_b) and len({base, merged, pinned}) == 3  # "3", "0", "6"
    assert f"plan `{plan_b.hash()}`" in pinned_meta and f"plan `{plan_of(panel).hash()}`" in merged_meta


def test_a_bad_table_cell_blocks_compare_until_fixed(explorer):
    frame = table_of([0.1] * L).astype({"α": object})
    frame.iloc[2, 1] = "1.7"
    curve, table, button, status = compare_tab.on_table(explorer, frame)
    assert curve == gr.update()  # the curve keeps its last good values
    assert table["elem_classes"] == ["bad-cell"] and button["interactive"] is False
    assert "layer 2" in status and "outside [0, 1]" in status
    frame.iloc[2, 1] = "0.3"
    curve, table, button, status = compare_tab.on_table(explorer, frame)
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


def test_preset_with_bad_anchors_is_one_line(explorer):
    curve, status = compare_tab.on_preset_apply(explorer, "anchors", 0.4, 0, 1, 0, "0, x")
    assert curve == gr.update() and status.startswith("⚠️") and "\n" not in status
    curve, status = compare_tab.on_preset_apply(explorer, "constant", 0.6, 0, 1, 0, "")
    assert curve == [0.6] * L and "Applied constant" in status


def test_distributions_fill_the_bars_and_kl(explorer, panel, colour):
    path, image = colour
    base_fig, merged_fig, b, kl = answers_strip.on_distributions(explorer, None, path, COLOUR_Q, False, "",
                                                               SHARED_SEED, panel)
    dists = [explorer.answerer.distribution(plan, COLOUR_Q, image, gold="red", donor=SHARED_SEED)
             for plan in (MergePlan(), plan_of(panel))]
    for fig, dist in zip((base_fig, merged_fig), dists):
        bars = dist["tokens"][:answers_strip.BARS_SHOWN]
        assert list(fig.data[0].x)[::-1] == pytest.approx([p for _, p in bars])  # the likeliest on top
        assert fig.data[0].y[-1] == "red" and fig.data[0].marker.color[-1] == "#2ca02c"  # the gold, in green
    assert dists[0]["tokens"][0][1] > dists[1]["tokens"][0][1] + 0.01  # the merge spreads the first token
    assert b["visible"] is False  # no plan B pinned
    nats = kl_divergence(dists[0]["summary"], dists[1]["summary"])  # KL(base ‖ merged), not the reverse
    assert f"{nats:.3f} nats" in kl and f"{kl_divergence(dists[1]['summary'], dists[0]['summary']):.3f}" not in kl


def test_gold_comes_from_the_example(explorer):
    assert asking.gold_for(explorer, f" {COLOUR_Q} ") == "red"
    assert asking.gold_for(explorer, TEXT_Q) == "6"
    assert asking.gold_for(explorer, "Something typed in?") is None


def test_export_is_off_without_a_folder(explorer, panel):
    assert "export is off" in export_tab.on_export(replace(explorer, export_dir=None), "plan", SHARED_SEED,
                                                   panel)[1]
    path, status = export_tab.on_export(explorer, "plan", SHARED_SEED, panel)  # toy_explorer's folder: on
    assert status.startswith("Saved") and MergePlan.from_text(Path(path).read_text()).hash() == plan_of(panel).hash()


def test_with_panel_folds_the_controls_into_one_panel(explorer, panel):
    """What Gradio sends (one value per control, PANEL_CONTROLS order) reaches the handler as a Panel,
    and Gradio sees one named parameter per control (the API's positional arguments)."""
    bound = bind(with_panel(answers_strip.on_compare), explorer)
    names = list(inspect.signature(bound).parameters)
    assert names == ["request", "img", "q", "text_only_q", "tokens", "pinned", "donor_name", *PANEL_CONTROLS]
    steps = list(bound(None, None, TEXT_Q, True, TOKENS, "", SHARED_SEED, panel.components, [0.5] * L, "linear",
                       None, *PARAMS.values()))
    assert steps[-2][2] == answer(explorer, plan_of(panel)) and f"plan `{plan_of(panel).hash()}`" in steps[-2][5]
    assert with_panel(compare_tab.on_plan_inputs)(panel.components, [0.5] * L, "linear", None, *PARAMS.values()) \
        == plan_of(panel).to_yaml()


def test_sweep_refuses_a_bad_grid_in_one_line(explorer):
    (status, *_), = list(sweep_tab.on_sweep(explorer, "components: [", "", 1, SHARED_SEED, progress=None))
    assert status.startswith("⚠️") and "\n" not in status


def test_bind_keeps_name_signature_and_generators(explorer):
    bound = bind(answers_strip.on_compare, explorer)
    assert bound.__name__ == "on_compare" and inspect.isgeneratorfunction(bound)
    first = next(iter(inspect.signature(bound).parameters.values()))
    assert first.name == "request" and first.annotation is gr.Request
    assert not inspect.isgeneratorfunction(bind(compare_tab.on_table, explorer))


def test_the_scan_fills_in_eleven_points_as_it_goes(explorer, panel, colour):
    path, image = colour
    steps = list(probe_panel.on_scan(explorer, None, path, COLOUR_Q, False, SHARED_SEED, panel))
    points = list(explorer.answerer.alpha_scan(plan_of(panel), COLOUR_Q, image, gold="red", donor=SHARED_SEED))
    assert [status for _, status in steps] == [f"α scan: {n}/11 points" for n in range(1, 12)]
    assert [len(fig.data[0].x) for fig, _ in steps] == list(range(1, 12))
    fig = steps[-1][0]
    assert list(fig.data[0].x) == list(SCAN_ALPHAS) == [p["alpha"] for p in points]
    assert list(fig.data[0].text) == [p["answer"] for p in points]  # answers along the line
    assert list(fig.data[0].y) == pytest.approx([p["p_top"] for p in points])
    assert fig.data[1].name == "p(gold)" and list(fig.data[1].y) == pytest.approx([p["p_gold"] for p in points])
    # α 0 is the base VLM, α 1 the plan at full strength (self-attention at 1): the answers move
    assert fig.data[0].text[0] == answer(explorer, MergePlan(), COLOUR_Q, image) == "red"
    full = plan_of(replace(panel, alphas=[1.0] * L))
    assert fig.data[0].text[-1] == answer(explorer, full, COLOUR_Q, image) != "red"


def test_scan_and_distribution_apis(explorer, tmp_path):
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]})
    points = probe_panel.api_scan(explorer, plan.to_yaml(), COLOUR_Q, None, "[0, 0.5, 1]")
    expected = list(explorer.answerer.alpha_scan(plan, COLOUR_Q, None, alphas=[0, 0.5, 1], gold="red"))
    assert [set(p) for p in points] == [{"alpha", "answer", "p_top", "p_gold", "kl_to_base"}] * 3
    assert points == [pytest.approx({k: v for k, v in p.items() if k != "cached"}) for p in expected]
    assert points[0]["kl_to_base"] == 0 and points[-1]["kl_to_base"] > 0  # α 0: the base VLM itself
    result = probe_panel.api_distribution(explorer, "rules: []", COLOUR_Q, None, 5)
    dist = explorer.answerer.distribution(MergePlan(), COLOUR_Q, None, top_k=5, gold="red")
    assert len(result["tokens"]) == 5 and [t for t, _ in result["tokens"]] == [t for t, _ in dist["tokens"]]
    assert [p for _, p in result["tokens"]] == pytest.approx([p for _, p in dist["tokens"]])
    assert result["p_gold"] == pytest.approx(dist["p_gold"]) and set(result) == {"tokens", "p_gold"}
    with pytest.raises(gr.Error, match="JSON list"):
        probe_panel.api_scan(explorer, "rules: []", "Hi?", None, "[2]")
    outside = tmp_path / "x.png"
    outside.write_bytes(b"x")
    with pytest.raises(gr.Error, match="other paths are refused"):  # never a file of the server's choosing
        probe_panel.api_distribution(explorer, "rules: []", "Hi?", str(outside), 5)


def test_method_notes_say_what_is_loaded(explorer, no_base, with_grams):
    assert "unavailable here: ties needs a base model and none is loaded" in compare_tab.method_note(no_base, "ties")
    assert "unavailable here: regmean needs Gram files" in compare_tab.method_note(no_base, "regmean")
    labels = dict((v, k) for k, v in compare_tab.method_choices(no_base))
    assert labels["regmean"] == "regmean — unavailable: needs Gram files" and labels["linear"] == "linear"
    assert labels["ties"] == "ties — unavailable: needs a base model"
    assert "base: loaded" in compare_tab.method_note(explorer, "ties")  # the toy pair ships its seed as base
    assert "unavailable here: regmean needs Gram files" in compare_tab.method_note(explorer, "regmean")
    assert "Gram files: loaded" in compare_tab.method_note(with_grams, "regmean")
    assert dict((v, k) for k, v in compare_tab.method_choices(with_grams))["regmean"] == "regmean"
    assert "—" not in compare_tab.method_note(no_base, "linear")


def test_inspect_names_the_donor_and_redraws_only_once_drawn(explorer):
    from ui import inspect_tab
    rel, cos = inspect_tab.on_inspect(explorer, SHARED_SEED)
    assert rel.layout.title.text.startswith(f"{SHARED_SEED}:")
    assert (rel.data[0].zmin, rel.data[0].zmax) == (0.0, 1.5) and (cos.data[0].zmin, cos.data[0].zmax) == (-1, 1)
    rows = [r for r in explorer.distances(SHARED_SEED) if r["layer"] is not None]
    assert sorted(v for line in rel.data[0].z for v in line) == pytest.approx(sorted(r["rel_l2"] for r in rows))
    assert inspect_tab.on_donor_switch(explorer, NO_SHARED_SEED, None) == (gr.update(), gr.update())
    other, _ = inspect_tab.on_donor_switch(explorer, NO_SHARED_SEED, {"plot": 1})
    assert other.layout.title.text.startswith(f"{NO_SHARED_SEED}:")

    def mean(fig):
        return sum(v for line in fig.data[0].z for v in line) / sum(len(line) for line in fig.data[0].z)
    assert mean(other) > mean(rel) + 0.2  # a donor from another init is farther from the VLM than the shared seed's


def test_separate_curves_make_one_rule_per_group(explorer, panel):
    groups = group_curves.on_groups(True, ["Attention", "MLP"], [0.1] * L, [0.9] * L, [0.0] * L, [0.0] * L)
    assert set(groups) == {"Attention", "MLP"}
    assert group_curves.on_groups(False, ["Attention"], *[[0.1] * L] * 4) is None  # linked: one curve
    steps = compare(explorer, panel)  # linked
    assert steps[-2][2] == answer(explorer, plan_of(panel)) and len(plan_of(panel).rules) == 1
    separate = replace(panel, groups=groups)
    merged_plan = plan_of(separate)
    assert [(r.components, r.curve["values"]) for r in merged_plan.rules] == [(("self_attn",), [0.1] * L),
                                                                               (("mlp",), [0.9] * L)]
    steps = compare(explorer, separate)
    assert f"plan `{merged_plan.hash()}`" in steps[-2][5] and steps[-2][2] == answer(explorer, merged_plan)
    with pytest.raises(PlanError, match="groups must be among"):
        plan_of(replace(panel, groups={"Everything": [0.1] * L}))
    with pytest.raises(PlanError, match="list of numbers"):
        plan_of(replace(panel, groups={"MLP": "0.1"}))


def test_a_lesson_sets_donor_components_curve_question_and_plan_b(explorer):
    items = {i.id: i for i in explorer.eval_items}
    colour, text_plus = items[lessons.COLOUR_ID], items[lessons.TEXT_PLUS_ID]
    roles = [role for _, role in component_choices(explorer)]
    assert len(lessons.LESSONS) >= 3 and lessons.NO_SHARED_SEED in explorer.answerer.donors
    donor, comps, method, separate, curve, question, image, text_only, pinned, card, text = \
        lessons.on_lesson(explorer, "Shared seed vs no seed")
    assert donor == lessons.NO_SHARED_SEED and comps == roles and curve == [0.4] * L
    assert image == str(colour.image_path) and Path(image).is_file()
    assert question == colour.question and text_only is False and pinned == "" and "collapses" in text
    *_, question, image, text_only, pinned, card, text = lessons.on_lesson(explorer, "Early layers keep perception")
    assert MergePlan.from_text(pinned).rules and card["visible"] is True
    *_, question, image, text_only, pinned, card, text = lessons.on_lesson(explorer, "A skill moves across")
    assert (question, image, text_only) == (text_plus.question, None, True)


def test_examples_put_the_lessons_first_and_leave_out_blank_images():
    from toy import TOY_EVAL
    from ui import examples, lessons
    items = load_eval_set(TOY_EVAL)
    with_image, text = examples.teaching_order(items)
    assert with_image[0].id == lessons.COLOUR_ID and text[0].id == lessons.TEXT_PLUS_ID
    assert all(i.image_path is None for i in text) and all(i.image_path for i in with_image)
    assert examples.blank(next(i.image_path for i in items if i.id == "count-00000"))  # an empty scene
    assert not any(examples.blank(i.image_path) for i in with_image)


STOP_GRID = """components:
  Setting 1: [all]
curves:
  constant α: {preset: constant}
alphas: [0.4, 0.6]
max_new_tokens: 8
"""  # three cells: the base VLM, α 0.4, α 0.6


def test_stop_ends_a_sweep_between_batches_and_keeps_the_partial_results(fresh):
    request = request_of("s1")
    spec, items = str(TOY_EVAL), sweep_tab.sweep_plan(fresh, STOP_GRID, str(TOY_EVAL), 4)[1]
    cells, settings = parse_grid(STOP_GRID)
    # two of the second cell's four answers are cached: the sweep yields them one by one, then batches the rest
    requests = [(i.question, i.image) for i in items[:2]]
    list(fresh.answerer.ask_many(cells[1].plan, requests, settings, donor=SHARED_SEED))
    entries = fresh.answerer.cache.stats()["entries"]

    def progress(value, desc=None, unit=None):
        if value[0] == 6:  # the second cached answer of the second cell: Stop pressed before its next batch
            assert sweep_tab.STOPS.stop(request).startswith("Stopping")
    steps = list(sweep_tab.on_sweep(fresh, STOP_GRID, spec, 4, SHARED_SEED, progress=progress, request=request))
    status, heatmap, lines, table, categories, shown = steps[-1]  # the last: rows and eval set, for the lists
    assert len(steps) == 2 and status.startswith("Sweep stopped at 6 / 12 answers (2 of 3 cells)")
    rows = shown["rows"]
    assert [r["alpha"] for r in rows] == [None, 0.4] and [r["answered"] for r in rows] == [4, 2]
    assert [a["id"] for a in rows[1]["answers"]] == [i.id for i in items[:2]]
    assert list(table["complete"]) == [True, False]
    for row, shown_interval in zip(rows, table["95 % interval"]):
        correct = sum(a["correct"] for a in row["answers"])
        low, high = wilson_interval(correct, row["answered"])
        assert row["accuracy"] == correct / row["answered"]
        assert shown_interval == f"{100 * low:.0f}–{100 * high:.0f} %"
    low, high = wilson_interval(sum(a["correct"] for a in rows[1]["answers"]), 2)
    assert f"Wilson 95 %: {100 * low:.0f}–{100 * high:.0f} %" in heatmap.data[0].customdata[0][0]
    assert "(stopped: partial)" in heatmap.data[0].customdata[0][0]
    assert set(categories.columns) == {"cell"} | {i.category for i in items}
    # the base cell's four answers and the sweep's record were stored; no answer of α 0.6 was
    assert fresh.answerer.cache.stats()["entries"] == entries + 4 + 1
    assert not sweep_tab.STOPS  # nothing left behind


def test_history_filters_before_it_limits(fresh, panel, monkeypatch):
    """A sweep's answers (more than History's row limit) never push out an answer asked from Compare."""
    from ui import history_tab
    assert compare(fresh, panel)[-1][0] == ""
    items = fresh.eval_items[:12]  # a sweep's answers, stored after it: newer
    list(fresh.answerer.ask_many(MergePlan(), [(i.question, i.image) for i in items], SETTINGS))
    monkeypatch.setattr(history_tab, "HISTORY_LIMIT", 5)
    table, configs = history_tab.on_refresh(fresh)
    assert list(table["question"]) == [TEXT_Q] and list(table["kind"]) == ["Compare"]
    assert [c["kind"] for c in configs] == ["compare"] and configs[0]["plan"] == plan_of(panel).to_dict()
    base, merged = answer(fresh, MergePlan()), answer(fresh, plan_of(panel))
    assert list(table["answer"]) == [f"base: {base} · merged: {merged}"]
    store = fresh.answerer.cache
    assert len(store.entries(limit=5)) == 5 and len(store.entries(limit=5, keep=listed)) == 1


def test_stop_scan_ends_the_scan_before_the_next_point(fresh, panel, colour):
    path, image = colour
    request = request_of("scan-1")
    steps = []
    for step in probe_panel.on_scan(fresh, request, path, COLOUR_Q, False, SHARED_SEED, panel):
        steps.append(step)
        if len(steps) == 2:  # Stop scan pressed while the second point shows
            assert probe_panel.STOPS.stop(request).startswith("Stopping")
    assert steps[-1][1] == "α scan stopped at 2/11 points" and len(steps) == 3
    assert not probe_panel.STOPS and probe_panel.STOPS.stop(request) == ""  # nothing left behind
    first_two = list(fresh.answerer.alpha_scan(plan_of(panel), COLOUR_Q, image, alphas=SCAN_ALPHAS[:2], gold="red"))
    assert list(steps[1][0].data[0].text) == [p["answer"] for p in first_two]
    record, = [e for e in fresh.answerer.cache.entries(keep=listed) if e["config"]["kind"] == "scan"]
    assert record["result"]["complete"] is False and [p["alpha"] for p in record["result"]["points"]] == [0.0, 0.1]


def test_lesson_numbers_are_the_toy_pairs_measured_tables():
    results = json.loads((TOY_DIR / "eval_results.json").read_text())
    ramp = next(r for r in results["grid_llm"] if (r["setting"], r["curve"], r["alpha"]) == ("Setting 1", "linear", 0.6))
    expected = f"{round(ramp['colour'] * 100)} %"
    assert lessons.measured("colour", "linear", 0.6) == expected
    assert expected in lessons.LESSONS["Early layers keep perception"]["text"]
    assert f"{round(results['vlm']['text_plus'] * 100)} %" in lessons.LESSONS["A skill moves across"]["text"]


def test_each_method_shows_its_own_parameter_help(explorer):
    """γ means one thing to breadcrumbs and another to RegMean: the box shows the selected method's help."""
    from merging.methods import REGISTRY
    box = [p.name for p in PARAM_DEFS].index("gamma")
    for method in ("breadcrumbs", "regmean"):
        update = compare_tab.on_method(explorer, method)[1 + box]
        own = next(p for p in REGISTRY[method].params if p.name == "gamma")
        assert update["info"] == own.doc and update["value"] == own.default and update["visible"]
    assert REGISTRY["breadcrumbs"].params[1].doc != REGISTRY["regmean"].params[0].doc


def test_a_method_that_cannot_run_is_refused_in_one_line_before_any_answer(no_base, with_grams, panel):
    entries = no_base.answerer.cache.stats()["entries"]
    for method in ("regmean", "ties"):
        steps = compare(no_base, replace(panel, method=method))
        assert len(steps) == 1 and steps[0][0].startswith(f"⚠️ cannot compare: {method} needs")
        assert "\n" not in steps[0][0]  # one line, no badge at all
    pinned = plan_of(replace(panel, method="regmean")).to_yaml()  # plan B is checked too
    assert compare(no_base, panel, pinned=pinned)[0][0].startswith("⚠️ cannot compare: regmean")
    assert no_base.answerer.cache.stats()["entries"] == entries  # nothing answered
    # where the files are loaded the same merges are answered
    for method in ("regmean", "ties"):
        steps = compare(with_grams, replace(panel, method=method), donor=with_grams.answerer.default_donor)
        assert steps[-1][0] == "" and f"plan `{plan_of(replace(panel, method=method)).hash()}`" in steps[-2][5]


def test_a_merge_that_fails_leaves_the_base_answer_and_no_merged_badge(fresh, panel, failing_method):
    """The merge's apply fails half-way (a stand-in for an out-of-memory error): Compare says why in one
    line, keeps the base answer's badge, and the weights are the VLM's again (the next Compare is right)."""
    method = failing_method("fails_third_tensor", 3, PlanError("the merge failed"))
    status, _, _, _, base_meta, merged_meta, _, _ = compare(fresh, replace(panel, method=method))[-1]
    assert status == "⚠️ the merge failed" and "done" in base_meta and merged_meta == ""
    steps = compare(fresh, panel)
    assert steps[-2][1:3] == (answer(fresh, MergePlan()), answer(fresh, plan_of(panel)))


class CutStream:
    """The real answerer, but a merged answer's stream fails after its first piece. The one stand-in here:
    the real failures (an apply, a refused donor) come before an answer's first piece, so none leaves a
    badge on "generating…" for Compare to clear."""

    def __init__(self, answerer):
        self._answerer = answerer

    def __getattr__(self, name):
        return getattr(self._answerer, name)

    def stream(self, plan, *args, **kwargs):
        for update in self._answerer.stream(plan, *args, **kwargs):
            yield update
            if plan.rules:
                raise PlanError("the merge failed")


def test_an_answer_that_fails_midway_leaves_no_badge_on_generating(fresh, panel):
    steps = compare(replace(fresh, answerer=CutStream(fresh.answerer)), panel)
    assert "generating…" in steps[-2][5]  # the merged answer had begun (the cache was empty: live)
    status, _, _, _, base_meta, merged_meta, _, _ = steps[-1]
    assert status == "⚠️ the merge failed" and "done" in base_meta and merged_meta == ""


def test_the_default_sweep_spreads_its_items_over_every_kind(explorer):
    """Not the first 8 items (one per kind, per-category cells of "0 % (0–79)"): PER_KIND of each kind,
    the same items however the eval set is sorted."""
    from collections import Counter
    from merging.evals.eval_sets import spread_items
    items = explorer.eval_items
    assert explorer.eval_spec == str(TOY_EVAL) and items == load_eval_set(TOY_EVAL)
    n = sweep_tab.default_items(explorer)
    _, chosen, _ = sweep_tab.sweep_plan(explorer, sweep_tab.DEFAULT_GRID, explorer.eval_spec, n)
    kinds = Counter(i.category for i in items)
    assert n == sweep_tab.PER_KIND * len(kinds) and set(Counter(i.category for i in chosen).values()) == {10}
    by_kind = sorted(items, key=lambda i: i.category)  # a file sorted by kind spreads the same way
    assert Counter(i.category for i in spread_items(by_kind, 16)).most_common()[0][1] == 2
    assert spread_items(items, 16) == items[:16]  # the toy set is interleaved: its first items
    public = replace(explorer, public=True)  # a public demo's default fits its answer cap
    cells = len(sweep_tab.parse_grid(sweep_tab.DEFAULT_GRID)[0])
    assert sweep_tab.default_items(public) * cells <= sweep_tab.PUBLIC_MAX_SWEEP_ANSWERS
