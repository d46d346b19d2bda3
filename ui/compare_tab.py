"""The Compare tab: draw a plan, ask a question, see base / merged / plan B side by side.

The class view comes first and fits a 1024×768 projector: the lesson, then the curve with Compare and the
answers strip under it (ui/answers_strip.py) beside the question, its image and gold answer; the merge
settings, examples, α scan and skill scores follow below. The module-level handlers it wires each handler takes the
explorer explicitly and plain values, so tests call them without a browser."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from merging.errors import MergescopeError
from merging.limits import check_size
from merging.methods import REGISTRY
from merging.plan import curves

from .answers_strip import ANSWER_LABELS, build_answers_strip, on_compare, on_distributions, on_divergence
from .asking import gold_for, method_refusal
from .curve_editor import curve_editor
from .examples import build_examples
from .explorer import CHEAP, GPU, Explorer, bind
from .group_curves import build_group_curves, wire_group_curves
from .guard import uploaded_image
from .layers_panel import build_layers_panel
from .lessons import build_lessons, on_lesson
from .panel import PARAM_DEFS, Panel, attention_roles, component_choices, plan_of, with_panel
from .plan_panel import parse_table, table_of
from .probe_panel import build_scan_panel
from .skills_panel import build_skills_panel

DRAWN_PRESETS = [name for name in curves.PRESETS if name != "custom"]  # custom is what the editor draws
# the page starts on the blog's best configuration: Setting 2 (self-attention) + a log-scale ramp to 0.4
START_CURVE = {"preset": "loglinear", "start": 0.05, "end": 0.4}
STALE = "stale — plan changed"
CSS = """
#compare-css { display: none !important; }
#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.answer textarea { font-size: 1.6em !important; line-height: 1.25 !important; font-weight: 600; }
.stale textarea, .stale .wrap { opacity: 0.45; }
.bad-cell { outline: 3px solid #d62728; border-radius: 6px; }
#class-view #curve .curve-editor svg { height: 140px; }
#compare-row { gap: 8px; }
.answers-strip { flex-wrap: nowrap !important; gap: 8px !important; }
.answers-strip > .answer-card { min-width: 0 !important; flex: 1 1 0 !important; }
.answer-card .meta { font-size: 0.8em; opacity: 0.8; }
.answer-card .meta p { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; margin: 0; }
#lesson-text { font-size: 1.05em; }
#lessons input { padding-right: 1.6em; text-overflow: ellipsis; }  /* a long lesson name stops short of the arrow */
#kl p, #divergence p { margin: 0; }
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
    max_new_tokens: gr.Slider | None = None  # what History's restore sets back

    @property
    def plan_inputs(self) -> list:
        """The panel's controls in PANEL_CONTROLS order: what a `with_panel` handler's `panel` is folded
        from (the groups are a State: the API's positional arguments stay as they were)."""
        return [self.components, self.curve, self.method, self.groups, *self.param_boxes]


# -- cheap handlers: the merge panel -------------------------------------------------------------

def method_note(explorer: Explorer, method_name: str, donor_name=None) -> str:
    """What a method needs from files, and whether it is loaded (one line)."""
    method = REGISTRY[method_name]
    if (reason := method_refusal(explorer, method_name, donor_name)) is not None:
        return f"`{method.formula}` — ⚠️ unavailable here: {reason}"
    loaded = ["base: loaded"] * method.needs_base + ["Gram files: loaded"] * method.needs_grams
    return f"`{method.formula}`" + (f" — {'; '.join(loaded)}" if loaded else "")


def method_choices(explorer: Explorer, donor_name=None) -> list[tuple[str, str]]:
    """(label, method) for the method menu: a method that cannot run on what is loaded says so in its
    label ("regmean — unavailable: needs Gram files"); it stays selectable, and Compare refuses it in one line."""
    return [(name if method_refusal(explorer, name, donor_name) is None else
             f"{name} — unavailable: needs {'a base model' if REGISTRY[name].needs_base else 'Gram files'}", name)
            for name in REGISTRY]


def param_updates(method_name: str, values: dict | None = None) -> list[dict]:
    """One update per parameter box (PARAM_DEFS order): this method's boxes shown with `values` (default:
    its defaults) and its own help — a name such as γ or density means different things to different
    methods —, the others hidden."""
    names, values = {p.name: p for p in REGISTRY[method_name].params}, values or {}
    return [gr.update(visible=True, value=values.get(p.name, names[p.name].default), info=names[p.name].doc)
            if p.name in names else gr.update(visible=False, value=None) for p in PARAM_DEFS]


def on_method(explorer: Explorer, method_name, donor_name=None):
    updates = param_updates(method_name)
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


def mark_stale(merged_answer, pinned_answer, merged_meta, panel: Panel):
    """Grey the merged answer once the current plan is not the one it answered (its badge names that
    plan's hash); the base VLM's and plan B's stay what they were. A control set to what the plan already
    was — the page's start-up filling the method's boxes, late on a busy machine — greys nothing."""
    try:
        answered = f"plan `{plan_of(panel).hash()}`" in (merged_meta or "")
    except MergescopeError:  # a plan the panel cannot make is not the one answered
        answered = False
    return gr.update() if answered else _stale("merged", merged_answer), gr.update()


def mark_stale_donor(merged_answer, pinned_answer):
    """A donor switch changes every merge: grey the merged answer and plan B's."""
    return _stale("merged", merged_answer), _stale("pinned", pinned_answer)


def start_panel(explorer: Explorer) -> Panel:
    """The panel as a fresh page shows it (what an example clicked first is compared under): the
    self-attention roles, START_CURVE, linear, every parameter box at its default."""
    return Panel(attention_roles(explorer), curves.layer_alphas(START_CURVE, explorer.num_layers), "linear", None,
                 {p.name: p.default for p in PARAM_DEFS})


# -- layout and wiring ---------------------------------------------------------------------------

def _merge_column(explorer: Explorer, start_alphas: list[float]) -> dict:
    """The merge settings below the class view: donor, components, method and parameters (left), the
    presets, plan B, separate curves and the exact values (right)."""
    L = explorer.num_layers
    c = {}
    donors = list(explorer.answerer.donors)
    with gr.Column(scale=1, min_width=320):
        c["donor"] = gr.Radio(donors, value=explorer.answerer.default_donor, label="Donor LLM",
                              visible=len(donors) > 1, elem_id="donor",
                              info="merging only works from a shared initialisation: try both")
        c["components"] = gr.CheckboxGroup(component_choices(explorer), value=attention_roles(explorer),
                                           label="Components to merge", elem_id="components")
        with gr.Row():
            c["setting1"] = gr.Button("Setting 1: all language-model tensors", size="sm", elem_id="setting-1")
            c["setting2"] = gr.Button("Setting 2: self-attention only", size="sm", elem_id="setting-2")
        c["method"] = gr.Dropdown(method_choices(explorer), value="linear", label=f"Method ({len(REGISTRY)})",
                                  elem_id="method")
        c["method_formula"] = gr.Markdown(f"`{REGISTRY['linear'].formula}`")
        with gr.Row():
            c["param_boxes"] = [gr.Number(p.default, label=f"{p.name}", info=p.doc, visible=False,
                                          elem_id=f"param-{p.name}") for p in PARAM_DEFS]
    with gr.Column(scale=1, min_width=320):
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
    c["question"] = gr.Textbox(label="Question", elem_id="question", lines=2, max_lines=3)
    c["gold"] = gr.Markdown("", elem_id="gold")
    # a path, opened by read_image: size from the header before any pixel is decoded
    c["image"] = uploaded_image(label="Image", elem_id="image", height=190)
    c["text_only"] = gr.Checkbox(False, label="Text-only question (no image)", elem_id="text-only")
    c["max_new_tokens"] = gr.Slider(1, explorer.max_new_tokens, explorer.answer_settings.max_new_tokens, step=1,
                                    label="Max new tokens", elem_id="max-new-tokens")
    return c


def build_compare_tab(explorer: Explorer) -> CompareTab:
    start_alphas = start_panel(explorer).alphas
    pinned_plan = gr.State("")
    gr.HTML(f"<style>{CSS}</style>", padding=False, elem_id="compare-css")  # Gradio 6 takes page CSS only at launch()
    lesson, lesson_text = build_lessons(explorer)
    with gr.Row(elem_id="class-view"):  # never one column: at 800 px the question stays beside the answers
        with gr.Column(scale=3, min_width=420):
            curve = curve_editor(explorer.num_layers, start_alphas)
            a = build_answers_strip()
        with gr.Column(scale=2, min_width=240):
            a.update(_ask_column(explorer))
    with gr.Row(elem_classes=["one-column-narrow"]):
        a["diff"] = gr.HighlightedText(label="Base → merged, word by word", elem_id="diff",
                                       color_map={"-": "red", "+": "green"})
        a["divergence_plot"] = gr.Plot(label="The merged answer, token by token", elem_id="divergence-plot",
                                       visible=False)
    with gr.Row(elem_classes=["one-column-narrow"]):
        m = _merge_column(explorer, start_alphas)
    m["curve"] = curve
    if explorer.eval_items:
        build_examples(explorer.eval_items, a["image"], a["question"], a["text_only"])
    cards = a["cards"]
    tab = CompareTab(a["status"], m["donor"], m["components"], m["method"], m["param_boxes"], m["curve"],
                     m["table"], a["question"], a["image"], a["text_only"], pinned_plan, m["method_formula"],
                     gr.State(None), m["separate"], m["group_ticks"], tuple(m["group_curves"]), a["max_new_tokens"])
    build_scan_panel(explorer, tab, tab.text_only, tab.image)
    a["skills_after"] = build_skills_panel(explorer, tab)
    _wire_panel(explorer, tab, m, a, cards)
    lesson.input(bind(on_lesson, explorer), lesson,
                 [tab.donor, tab.components, tab.method, m["separate"], tab.curve, tab.question, tab.image,
                  tab.text_only, pinned_plan, cards["pinned"]["column"], lesson_text], **CHEAP)
    _wire_compare(explorer, tab, a, cards)
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
    yaml_of, stale_of = with_panel(on_plan_inputs), with_panel(mark_stale)
    stale_inputs = [*answers, cards["merged"]["meta"], *tab.plan_inputs]
    for trigger in (tab.components.change, tab.curve.change, tab.method.change, *(b.change for b in tab.param_boxes)):
        trigger(yaml_of, tab.plan_inputs, m["plan_yaml"], **CHEAP)
        trigger(stale_of, stale_inputs, answers, **CHEAP)
    for event in wire_group_curves(m, tab.groups, [tab.curve, tab.components], apply_preset, preset_inputs, status):
        event.then(yaml_of, tab.plan_inputs, m["plan_yaml"], **CHEAP).then(stale_of, stale_inputs, answers, **CHEAP)
    tab.donor.change(mark_stale_donor, answers, answers, **CHEAP)
    m["pin"].click(with_panel(on_pin), tab.plan_inputs, [tab.pinned_plan, cards["pinned"]["column"], status],
                   **CHEAP)
    m["unpin"].click(on_unpin, None, [tab.pinned_plan, cards["pinned"]["column"], cards["pinned"]["box"], status],
                     **CHEAP).then(lambda: gr.update(visible=False), None, cards["pinned"]["probs"], **CHEAP)
    tab.question.change(lambda q: f"Gold answer: **{g}**" if (g := gold_for(explorer, q)) else "",
                        tab.question, a["gold"], **CHEAP)


# a drawn stroke (or any other change of the curve) presses Compare when the switch is on, so the
# release runs exactly the chain a click runs; the same for the skill scores after Compare
CLICK_WHEN_ON = "(on) => {{ if (on) document.querySelector('#{}')?.click(); return []; }}"


def _wire_compare(explorer: Explorer, tab: CompareTab, a: dict, cards: dict) -> None:
    inputs = [tab.image, tab.question, tab.text_only, a["max_new_tokens"], tab.pinned_plan, tab.donor,
              *tab.plan_inputs]
    outputs = [tab.status, *(cards[n]["box"] for n in cards), *(cards[n]["meta"] for n in cards), a["diff"]]
    # a burst of clicks: the newest waits while one runs and replaces any older waiting one
    event = a["compare"].click(bind(with_panel(on_compare), explorer), inputs, outputs, api_name="on_compare",
                               trigger_mode="always_last", **GPU)
    probe_inputs = [tab.image, tab.question, tab.text_only, tab.pinned_plan, tab.donor, *tab.plan_inputs]
    divergence_inputs = [tab.image, tab.question, tab.text_only, tab.donor, cards["base"]["box"],
                         cards["merged"]["box"], *tab.plan_inputs]
    event.then(bind(with_panel(on_distributions), explorer), probe_inputs,
               [*(cards[n]["probs"] for n in cards), a["kl"]], **GPU) \
        .then(bind(with_panel(on_divergence), explorer), divergence_inputs, [a["divergence"], a["divergence_plot"]],
              **GPU) \
        .then(None, a["skills_after"], None, js=CLICK_WHEN_ON.format("score-skills"))
    tab.curve.change(None, a["on_release"], None, js=CLICK_WHEN_ON.format("compare"))
