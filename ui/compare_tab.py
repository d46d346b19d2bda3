"""The Compare tab: draw a plan, ask a question, see base / merged / plan B side by side.

Layout first (`build_compare_tab`), then the module-level handlers it wires; each handler takes the
explorer explicitly and plain values, so tests call them without a browser."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from merging.errors import MergescopeError
from merging.limits import bounded_int, check_size
from merging.methods import REGISTRY
from merging.plan import curves
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings
from merging.run.probe import kl_divergence

from .asking import compare_inputs, gold_for
from .curve_editor import curve_editor
from .examples import build_examples
from .explorer import CHEAP, GPU, Explorer, bind
from .figures import probability_figure
from .group_curves import build_group_curves, wire_group_curves
from .guard import uploaded_image
from .layers_panel import build_layers_panel
from .lessons import build_lessons, on_lesson
from .panel import PARAM_DEFS, Panel, attention_roles, component_choices, plan_of, with_panel
from .plan_panel import badge, parse_table, table_of, token_diff
from .probe_panel import build_scan_panel

DRAWN_PRESETS = [name for name in curves.PRESETS if name != "custom"]  # custom is what the editor draws
STALE = "stale — plan changed"
ANSWER_LABELS = {"base": "Base VLM", "merged": "Merged (current plan)", "pinned": "Plan B (pinned)"}
CSS = """
#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.answer textarea { font-size: 2em !important; line-height: 1.3 !important; }
.stale textarea, .stale .wrap { opacity: 0.45; }
.bad-cell { outline: 3px solid #d62728; border-radius: 6px; }
@media (max-width: 1000px) { .one-column-narrow { flex-direction: column !important; }
  .one-column-narrow > * { width: 100% !important; min-width: 0 !important; } }
"""


@dataclass
class CompareTab:
    """The Compare tab's components the other tabs read or set."""

    status: gr.Markdown
    donor: gr.Radio
    components: gr.CheckboxGroup
    method: gr.Dropdown
    param_boxes: list
    curve: gr.HTML
    table: gr.Dataframe
    question: gr.Textbox
    image: gr.Image
    text_only: gr.Checkbox
    pinned_plan: gr.State
    method_formula: gr.Markdown
    groups: gr.State  # separate curves: {group: α per layer}, or None while the curve is linked
    separate: gr.Checkbox | None = None        # the separate-curves switch, its group ticks and one editor
    group_ticks: gr.CheckboxGroup | None = None  # per group (CURVE_GROUPS order): what Search's "Open in Compare" sets
    group_curves: tuple = ()

    @property
    def plan_inputs(self) -> list:
        """The panel's controls in PANEL_CONTROLS order: what a `with_panel` handler's `panel` is folded
        from (the groups are a State: the API's positional arguments stay as they were)."""
        return [self.components, self.curve, self.method, self.groups, *self.param_boxes]


# -- cheap handlers: the merge panel -------------------------------------------------------------

def method_note(explorer: Explorer, method_name: str, donor_name=None) -> str:
    """What a method needs from files, and whether it is loaded."""
    method, notes = REGISTRY[method_name], []
    if method.needs_base:
        notes.append("base: loaded" if explorer.engine.pair.base is not None
                     else "⚠️ needs a base model: none loaded (start with `--base`), Compare will refuse it")
    if method.needs_grams:
        donor = explorer.answerer.donors.get(donor_name or explorer.answerer.default_donor)
        loaded = all(explorer.engine.gram_fingerprints(donor).values())
        notes.append("Gram files: loaded" if loaded else "⚠️ unavailable: no Gram files attached for this pair "
                     "(`python -m merging grams`, then `--grams`), Compare will refuse it")
    return f"`{method.formula}`" + (f" — {'; '.join(notes)}" if notes else "")


def on_method(explorer: Explorer, method_name, donor_name=None):
    names = {p.name: p for p in REGISTRY[method_name].params}
    updates = [gr.update(visible=p.name in names, value=names[p.name].default if p.name in names else None)
               for p in PARAM_DEFS]
    return [method_note(explorer, method_name, donor_name), *updates]


def preset_alphas(num_layers: int, name, value, start, end, layer, anchor_text) -> list[float]:
    """α per layer from a preset and its fields; MergescopeError (one line) for a bad field."""
    check_size(str(anchor_text), "anchors", 4096)  # a few numbers, not a megabyte of them
    try:
        spec = {"preset": name, "value": value, "start": start, "end": end, "layer": int(layer or 0),
                "values": [float(x) for x in str(anchor_text).replace(",", " ").split()]}
    except ValueError as exc:
        raise MergescopeError(f"anchors: {exc}") from None
    kinds = curves.PRESETS[name].kinds
    return curves.layer_alphas(curves.normalize_curve({"preset": name, **{k: spec[k] for k in kinds}}, name),
                               num_layers)


def on_preset_apply(explorer: Explorer, name, value, start, end, layer, anchor_text):
    try:
        alphas = preset_alphas(explorer.num_layers, name, value, start, end, layer, anchor_text)
    except MergescopeError as exc:
        return gr.update(), f"⚠️ {exc}"
    return alphas, f"Applied {name}: {curves.PRESETS[name].formula}"


def show_curve(explorer: Explorer, alphas):
    """The table (no longer marked bad) and an enabled Compare button for a curve the editor holds."""
    if not isinstance(alphas, list) or len(alphas) != explorer.num_layers:  # a crafted call
        return gr.update(), gr.update()
    return gr.update(value=table_of(alphas), elem_classes=[]), gr.update(interactive=True, value="Compare")


def on_table(explorer: Explorer, frame):
    """A table edit: the new curve, or the bad cell marked red and Compare blocked until it is fixed
    (the curve keeps its last good values)."""
    try:
        alphas = parse_table(frame, explorer.num_layers)
    except MergescopeError as exc:
        return (gr.update(), gr.update(elem_classes=["bad-cell"]),
                gr.update(interactive=False, value="Fix the table to compare"),
                f"⚠️ {exc} — the curve keeps its last good values; fix the cell to compare")
    return alphas, gr.update(elem_classes=[]), gr.update(interactive=True, value="Compare"), ""


def on_plan_inputs(panel: Panel):
    """The plan's YAML (or the reason there is none) for the accordion."""
    try:
        return plan_of(panel).to_yaml()
    except MergescopeError as exc:
        return f"# {exc}"


def on_pin(panel: Panel):
    try:
        plan = plan_of(panel)
    except MergescopeError as exc:
        return gr.update(), gr.update(), f"⚠️ {exc}"
    return plan.to_yaml(), gr.update(visible=True), f"Pinned plan `{plan.hash()}` as plan B."


def on_unpin():
    return "", gr.update(visible=False), gr.update(value="", label=ANSWER_LABELS["pinned"]), "Plan B unpinned."


def _stale(name: str, answer) -> dict:
    if not answer:
        return gr.update()
    return gr.update(label=f"{ANSWER_LABELS[name]} · {STALE}", elem_classes=["answer", "stale"])


def mark_stale(merged_answer, pinned_answer):
    """Grey the merged answer once the plan changed; the base VLM's and plan B's stay what they were."""
    return _stale("merged", merged_answer), gr.update()


def mark_stale_donor(merged_answer, pinned_answer):
    """A donor switch changes every merge: grey the merged answer and plan B's."""
    return _stale("merged", merged_answer), _stale("pinned", pinned_answer)


def fresh(name: str, value: str) -> dict:
    return gr.update(value=value, label=ANSWER_LABELS[name], elem_classes=["answer"])


# -- model handlers ------------------------------------------------------------------------------

def on_compare(explorer: Explorer, request: gr.Request, img, q, text_only_q, tokens, pinned, donor_name,
               panel: Panel):
    """Streams (status, base, merged, plan B, their three badges, diff) as the answers grow."""
    keep = gr.update()
    try:
        q, img, plan, plan_b = compare_inputs(explorer, request, img, q, text_only_q, pinned, panel)
        settings = GenerationSettings(max_new_tokens=bounded_int(tokens, "max new tokens", 1,
                                                                 explorer.max_new_tokens))
    except MergescopeError as exc:
        yield (f"⚠️ {exc}", *[keep] * 7)
        return
    shown = {"base": fresh("base", ""), "merged": fresh("merged", ""), "pinned": fresh("pinned", "")}
    metas = {"base": "", "merged": "", "pinned": ""}
    yield ("Answering…", *shown.values(), *metas.values(), [])
    answers = {}
    runs = [("base", MergePlan()), ("merged", plan)] + ([("pinned", plan_b)] if plan_b is not None else [])
    try:
        for name, p in runs:
            explorer.remember(request, explorer.answerer.config(p, q, img, settings, donor_name))
            for update in explorer.answerer.stream(p, q, img, settings, donor=donor_name):
                answers[name] = shown[name] = update["answer"]
                metas[name] = badge(update) + (f" · donor: {donor_name}" if p.rules else " · no donor")
                yield ("Answering…", *shown.values(), *metas.values(), keep)
    except MergescopeError as exc:
        yield (f"⚠️ {exc}", *[keep] * 7)
        return
    yield ("", *[keep] * 6, token_diff(answers["base"], answers["merged"]))


def distributions(explorer: Explorer, plans: dict, q: str, img, donor_name, top_k: int = 10) -> tuple[dict, float]:
    """{name: distribution} for each plan, and KL(base ‖ merged) in nats."""
    gold = gold_for(explorer, q)
    out = {name: explorer.answerer.distribution(plan, q, img, top_k=top_k, gold=gold, donor=donor_name)
           for name, plan in plans.items()}
    return out, kl_divergence(out["base"]["summary"], out["merged"]["summary"])


def on_distributions(explorer: Explorer, request: gr.Request, img, q, text_only_q, pinned, donor_name,
                     panel: Panel):
    """After Compare: the next-token bars of base, merged and plan B, and KL(base ‖ merged)."""
    keep = gr.update()
    try:
        q, img, plan, plan_b = compare_inputs(explorer, None, img, q, text_only_q, pinned, panel)
        plans = {"base": MergePlan(), "merged": plan, **({"pinned": plan_b} if plan_b is not None else {})}
        dists, kl = distributions(explorer, plans, q, img, donor_name)
    except MergescopeError:
        return keep, keep, keep, ""  # Compare's status already says why
    gold = gold_for(explorer, q)
    figs = [probability_figure(dists[n]["tokens"], f"{ANSWER_LABELS[n]}: next token", gold)
            if n in dists else gr.update(visible=False) for n in ("base", "merged", "pinned")]
    return (*figs, f"**KL(base ‖ merged) = {kl:.3f} nats** — how far the merge moved the first token's distribution")


# -- layout and wiring ---------------------------------------------------------------------------

def _merge_column(explorer: Explorer, start_alphas: list[float]) -> dict:
    L = explorer.num_layers
    c = {}
    donors = list(explorer.answerer.donors)
    c["donor"] = gr.Radio(donors, value=explorer.answerer.default_donor, label="Donor LLM",
                          visible=len(donors) > 1, elem_id="donor",
                          info="merging only works from a shared initialisation: try both")
    c["components"] = gr.CheckboxGroup(component_choices(explorer), value=attention_roles(explorer),
                                       label="Components to merge", elem_id="components")
    with gr.Row():
        c["setting1"] = gr.Button("Setting 1: all language-model tensors", size="sm", elem_id="setting-1")
        c["setting2"] = gr.Button("Setting 2: self-attention only", size="sm", elem_id="setting-2")
    c["method"] = gr.Dropdown(list(REGISTRY), value="linear", label=f"Method ({len(REGISTRY)})", elem_id="method")
    c["method_formula"] = gr.Markdown(f"`{REGISTRY['linear'].formula}`")
    with gr.Row():
        c["param_boxes"] = [gr.Number(p.default, label=f"{p.name}", info=p.doc, visible=False,
                                      elem_id=f"param-{p.name}") for p in PARAM_DEFS]
    gr.Markdown("**α per layer** — drag across the bars, or apply a preset. 0 keeps the VLM, 1 takes the LLM.")
    c["curve"] = curve_editor(L, start_alphas)
    with gr.Row():
        c["preset"] = gr.Dropdown(DRAWN_PRESETS, value="loglinear", label="Preset", elem_id="preset")
        c["preset_fields"] = [gr.Number(0.4, label="value", minimum=0, maximum=1),
                              gr.Number(0.05, label="start", minimum=0, maximum=1),
                              gr.Number(0.4, label="end", minimum=0, maximum=1),
                              gr.Number(L // 2, label="layer", precision=0, minimum=0, maximum=L),
                              gr.Textbox("0, 0.3, 0.6", label="anchors")]
    c["preset_formula"] = gr.Markdown(curves.PRESETS["loglinear"].formula, elem_id="preset-formula")
    with gr.Row():
        c["apply_preset"] = gr.Button("Apply preset", elem_id="apply-preset")
        c["pin"] = gr.Button("Pin as plan B", elem_id="pin")
        c["unpin"] = gr.Button("Unpin plan B", elem_id="unpin")
    c.update(build_group_curves(L, start_alphas))
    with gr.Accordion("Exact values and plan YAML", open=False, elem_id="exact-values"):
        c["table"] = gr.Dataframe(table_of(start_alphas), headers=["layer", "α"], interactive=True,
                                  elem_id="alpha-table", row_count=L)
        c["plan_yaml"] = gr.Code("", language="yaml", label="Current plan", elem_id="plan-yaml",
                                 interactive=False)
    return c


def _ask_column(explorer: Explorer) -> dict:
    c = {}
    # a path, opened by read_image: size from the header before any pixel is decoded
    c["image"] = uploaded_image(label="Image", elem_id="image", height=300)
    c["question"] = gr.Textbox(label="Question", elem_id="question", lines=2)
    c["gold"] = gr.Markdown("", elem_id="gold")
    with gr.Row():
        c["text_only"] = gr.Checkbox(False, label="Text-only question (no image)", elem_id="text-only")
        c["max_new_tokens"] = gr.Slider(1, explorer.max_new_tokens, 32, step=1, label="Max new tokens")
    with gr.Row(equal_height=True):
        c["compare"] = gr.Button("Compare", variant="primary", elem_id="compare", scale=1)
        c["status"] = gr.Markdown("", elem_id="status")
    with gr.Row(elem_classes=["one-column-narrow"], elem_id="answers"):
        c["cards"] = {"base": _answer_card("base", "base"), "merged": _answer_card("merged", "merged"),
                      "pinned": _answer_card("pinned", "pinned", visible=False)}
    c["kl"] = gr.Markdown("", elem_id="kl")
    c["diff"] = gr.HighlightedText(label="Base → merged, word by word", elem_id="diff",
                                   color_map={"-": "red", "+": "green"})
    return c


def _answer_card(name: str, elem: str, visible: bool = True) -> dict:
    with gr.Column(min_width=200, visible=visible) as column:
        box = gr.Textbox(label=ANSWER_LABELS[name], elem_id=f"answer-{elem}", interactive=False,
                         elem_classes=["answer"], lines=2)
        meta = gr.Markdown("", elem_id=f"meta-{elem}")
        probs = gr.Plot(label="next token", elem_id=f"probs-{ {'pinned': 'b'}.get(name, name) }", show_label=False)
    return {"column": column, "box": box, "meta": meta, "probs": probs}


def build_compare_tab(explorer: Explorer) -> CompareTab:
    L = explorer.num_layers
    # start on the blog's best configuration: Setting 2 (self-attention) + a log-scale ramp to 0.4
    start_alphas = curves.layer_alphas({"preset": "loglinear", "start": 0.05, "end": 0.4}, L)
    pinned_plan = gr.State("")
    gr.HTML(f"<style>{CSS}</style>", padding=False)  # Gradio 6 takes page CSS only at launch()
    lesson, lesson_text = build_lessons(explorer)
    with gr.Row(elem_classes=["one-column-narrow"]):
        with gr.Column(scale=5, min_width=320):
            m = _merge_column(explorer, start_alphas)
        with gr.Column(scale=5, min_width=320):
            a = _ask_column(explorer)
    if explorer.eval_items:
        build_examples(explorer.eval_items, a["image"], a["question"], a["text_only"])
    cards, kl, diff = a["cards"], a["kl"], a["diff"]
    tab = CompareTab(a["status"], m["donor"], m["components"], m["method"], m["param_boxes"], m["curve"],
                     m["table"], a["question"], a["image"], a["text_only"], pinned_plan, m["method_formula"],
                     gr.State(None), m["separate"], m["group_ticks"], tuple(m["group_curves"]))
    build_scan_panel(explorer, tab, tab.text_only, tab.image)
    _wire_panel(explorer, tab, m, a, cards)
    lesson.input(bind(on_lesson, explorer), lesson,
                 [tab.donor, tab.components, tab.method, m["separate"], tab.curve, tab.question, tab.image,
                  tab.text_only, pinned_plan, cards["pinned"]["column"], lesson_text], **CHEAP)
    _wire_compare(explorer, tab, a, cards, kl, diff)
    build_layers_panel(explorer, tab)
    return tab


def _wire_panel(explorer: Explorer, tab: CompareTab, m: dict, a: dict, cards: dict) -> None:
    status, compare = tab.status, a["compare"]
    m["setting1"].click(lambda: [v for _, v in component_choices(explorer)], None, tab.components, **CHEAP)
    m["setting2"].click(lambda: attention_roles(explorer), None, tab.components, **CHEAP)
    tab.method.change(bind(on_method, explorer), [tab.method, tab.donor], [m["method_formula"], *tab.param_boxes],
                      **CHEAP)
    m["preset"].change(lambda n: curves.PRESETS[n].formula, m["preset"], m["preset_formula"], **CHEAP)
    apply_preset, preset_inputs = bind(on_preset_apply, explorer), [m["preset"], *m["preset_fields"]]
    m["apply_preset"].click(apply_preset, preset_inputs, [tab.curve, status], **CHEAP)
    tab.curve.change(bind(show_curve, explorer), tab.curve, [tab.table, compare], **CHEAP)
    tab.table.input(bind(on_table, explorer), tab.table, [tab.curve, tab.table, compare, status], **CHEAP)
    answers = [cards["merged"]["box"], cards["pinned"]["box"]]
    yaml_of = with_panel(on_plan_inputs)
    for trigger in (tab.components.change, tab.curve.change, tab.method.change, *(b.change for b in tab.param_boxes)):
        trigger(yaml_of, tab.plan_inputs, m["plan_yaml"], **CHEAP)
        trigger(mark_stale, answers, answers, **CHEAP)
    for event in wire_group_curves(m, tab.groups, [tab.curve, tab.components], apply_preset, preset_inputs, status):
        event.then(yaml_of, tab.plan_inputs, m["plan_yaml"], **CHEAP).then(mark_stale, answers, answers, **CHEAP)
    tab.donor.change(mark_stale_donor, answers, answers, **CHEAP)
    m["pin"].click(with_panel(on_pin), tab.plan_inputs, [tab.pinned_plan, cards["pinned"]["column"], status],
                   **CHEAP)
    m["unpin"].click(on_unpin, None, [tab.pinned_plan, cards["pinned"]["column"], cards["pinned"]["box"], status],
                     **CHEAP)
    tab.question.change(lambda q: f"Gold answer: **{g}**" if (g := gold_for(explorer, q)) else "",
                        tab.question, a["gold"], **CHEAP)


def _wire_compare(explorer: Explorer, tab: CompareTab, a: dict, cards: dict, kl, diff) -> None:
    inputs = [tab.image, tab.question, tab.text_only, a["max_new_tokens"], tab.pinned_plan, tab.donor,
              *tab.plan_inputs]
    outputs = [tab.status, *(cards[n]["box"] for n in cards), *(cards[n]["meta"] for n in cards), diff]
    event = a["compare"].click(bind(with_panel(on_compare), explorer), inputs, outputs, api_name="on_compare",
                               **GPU)
    probe_inputs = [tab.image, tab.question, tab.text_only, tab.pinned_plan, tab.donor, *tab.plan_inputs]
    event.then(bind(with_panel(on_distributions), explorer), probe_inputs,
               [*(cards[n]["probs"] for n in cards), kl], **GPU)
