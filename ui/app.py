"""The explorer: draw an α curve, tick components, compare the merged model's answer with the base VLM's.

Every model event (compare, sweep, the API) shares one queue slot (`concurrency_id="gpu"`, limit 1):
the weights hold one plan at a time. Cheap events (presets, table edits, plots) never wait behind
them. Errors in what a user typed come back as a one-line message in the status box, never as a
traceback.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from cache import config_key
from merging import curves
from merging.distance import role_distances
from merging.engine import MergeEngine
from merging.errors import MergescopeError, PlanError
from merging.evaluate import EvalItem, load_eval_set
from merging.export import export_checkpoint
from merging.generate import GenerationSettings, check_question
from merging.limits import MAX_LIST, as_text, bounded_int, brief, check_size, read_image
from merging.mergekit_config import mergekit_yaml
from merging.layout import ATTENTION_ROLES, MLP_ROLES, NORM_ROLES
from merging.methods import REGISTRY, ParamDef
from merging.plan import MergePlan
from merging.answerer import Answerer
from merging.sweep import parse_grid, run_sweep

from .curve_editor import curve_editor
from .figures import alpha_figure, distance_figure, sweep_heatmap, sweep_lines
from .guard import History, RateLimiter, client_id, explain_bad_inputs, uploaded_image

PUBLIC_MAX_NEW_TOKENS, PUBLIC_MAX_SWEEP_ANSWERS = 64, 64
PUBLIC_DELETE_CACHE = (300, 1800)  # Gradio's temp files (uploads): checked every 5 min, deleted after 30 min
HISTORY_LIMIT = 200                # rows the History tab lists (private mode; public: HISTORY_PER_CLIENT)
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}   # model work: one at a time
CHEAP = {"concurrency_limit": None, "queue": False}      # UI bookkeeping: never queued behind it
COMPONENT_GROUPS = [("Attention", ATTENTION_ROLES), ("MLP", MLP_ROLES), ("Norms", NORM_ROLES),
                    ("Embeddings", ("embed_tokens",)), ("Final norm", ("norm",)), ("LM head", ("lm_head",))]
DRAWN_PRESETS = [name for name in curves.PRESETS if name != "custom"]  # custom is what the editor draws
DEFAULT_GRID = """settings:
  Setting 1: [all]
  Setting 2: [self_attn]
methods:
  constant α: {preset: constant}
  log ramp: {preset: loglinear, start: 0.0}
alphas: [0.4, 0.6]
max_new_tokens: 8
"""


@dataclass
class Explorer:
    """What the UI needs: the engine behind an answerer, examples, and where files may be written.

    `public` (a demo anyone can reach): the eval set is fixed, answers and sweeps are capped, export is
    off, each client address gets at most `rate_limit` model requests a minute (all of them together
    `global_rate_limit`), and History shows a visitor only what they asked. `proxy_hops`: how many
    trusted reverse proxies stand in front (1 on Spaces), to read the address (ui/guard.py).
    """

    answerer: Answerer
    eval_items: list[EvalItem] = field(default_factory=list)
    eval_spec: str = ""
    export_dir: Path | None = None
    public: bool = False
    rate_limit: int = 12
    global_rate_limit: int | None = None   # default: 10 × rate_limit
    proxy_hops: int = 0
    _distances: dict[str, list[dict]] = field(default_factory=dict)  # per donor
    _limiter: RateLimiter | None = None
    history: History = field(default_factory=History)

    def __post_init__(self):
        if self.public:
            self.export_dir = None
            self._limiter = RateLimiter(self.rate_limit, global_limit=self.global_rate_limit)

    def client(self, request: gr.Request | None) -> str:
        """Who is asking: the client's address (never the client-chosen session hash)."""
        return client_id(request, self.proxy_hops)

    def admit(self, request: gr.Request | None) -> None:
        """Count a model request against the client's and the global rate limit (public mode only);
        raises MergescopeError (one line) when over either."""
        if self._limiter is not None:
            self._limiter.check(self.client(request))

    def remember(self, request: gr.Request | None, config: dict) -> None:
        """Note that this client asked about `config` (its History in public mode)."""
        self.history.add(self.client(request), config_key(config))

    @property
    def max_new_tokens(self) -> int:
        return PUBLIC_MAX_NEW_TOKENS if self.public else 512

    @property
    def engine(self) -> MergeEngine:
        return self.answerer.engine

    @property
    def num_layers(self) -> int:
        return self.engine.pair.layout.num_layers

    def distances(self, donor: str | None = None) -> list[dict]:
        name = self.answerer.donor_name(donor)
        if name not in self._distances:
            self._distances[name] = role_distances(self.answerer.pair_with(name))
        return self._distances[name]


def _method_params() -> list[ParamDef]:
    """One control per parameter name across all methods (defaults set per method on selection)."""
    seen: dict[str, ParamDef] = {}
    for method in REGISTRY.values():
        for p in method.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


def plan_from_ui(components: list[str], method: str, alphas: list[float], params: dict) -> MergePlan:
    """The plan the merge panel shows: one rule, the drawn curve as exact per-layer values.

    Raises PlanError (one line) for anything the panel cannot send, e.g. a crafted API call whose
    curve is not a list of numbers."""
    if not components:
        return MergePlan()
    if not isinstance(alphas, list) or len(alphas) > MAX_LIST or \
            not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
        raise PlanError(f"the α curve must be a list of numbers, one per layer; got {brief(alphas)}")
    known = {p.name for p in REGISTRY[method].params} if isinstance(method, str) and method in REGISTRY else set()
    rule = {"components": list(components) if isinstance(components, list) else components, "method": method,
            "curve": {"preset": "custom", "values": [float(a) for a in alphas]},
            "params": {k: v for k, v in params.items() if k in known and v is not None}}
    return MergePlan.from_dict({"rules": [rule]})


def parse_table(table: pd.DataFrame, num_layers: int) -> list[float]:
    """α values from the exact-value table, or a clear error naming the bad cell."""
    if len(table) != num_layers:
        raise MergescopeError(f"the table must have {num_layers} rows, one per layer; it has {len(table)}")
    alphas = []
    for layer, value in enumerate(table.iloc[:, 1].tolist()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MergescopeError(f"layer {layer}: {brief(value, 40)} is not a number between 0 and 1") from None
        alphas.append(curves.check_alpha(number, f"layer {layer}"))
    return alphas


def table_of(alphas: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(range(len(alphas))), "α": [round(a, 4) for a in alphas]})


def token_diff(base: str, merged: str) -> list[tuple[str, str | None]]:
    """Word-level diff for gr.HighlightedText: '-' only in the base answer, '+' only in the merged one."""
    a, b = base.split(), merged.split()
    out: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += [(w + " ", None) for w in a[i1:i2]]
        else:
            out += [(w + " ", "-") for w in a[i1:i2]] + [(w + " ", "+") for w in b[j1:j2]]
    return out


def badge(result: dict) -> str:
    state = "cached ✓" if result["cached"] else ("done" if result["done"] else "generating…")
    return f"{result['seconds']:.2f} s · {state} · plan `{result['plan_hash']}`"


def build_app(explorer: Explorer) -> gr.Blocks:
    layout = explorer.engine.pair.layout
    roles = set(layout.roles())
    choices = [(f"{group} · {role}", role) for group, names in COMPONENT_GROUPS for role in names if role in roles]
    all_roles = [value for _, value in choices]
    attention = [r for r in ATTENTION_ROLES if r in roles]
    param_defs = _method_params()
    L = explorer.num_layers
    # start on the blog's best configuration: Setting 2 (self-attention) + a log-scale ramp to 0.4
    start_alphas = curves.layer_alphas({"preset": "loglinear", "start": 0.05, "end": 0.4}, L)

    # public: Gradio deletes this app's uploads after a while (and a janitor bounds the folder, app.py)
    with gr.Blocks(title="Mergescope", delete_cache=PUBLIC_DELETE_CACHE if explorer.public else None) as app:
        gr.Markdown("# Mergescope\nMerge a VLM with the text LLM that shares its backbone, layer by layer. "
                    "α is the donor LLM's weight: 0 keeps the VLM, 1 takes the LLM.")
        status = gr.Markdown("", elem_id="status")
        pinned_plan = gr.State("")
        history_rows = gr.State([])

        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=5):
                    gr.Markdown("### Merge")
                    donors = list(explorer.answerer.donors)
                    donor = gr.Radio(donors, value=explorer.answerer.default_donor, label="Donor LLM",
                                     visible=len(donors) > 1, elem_id="donor",
                                     info="merging only works from a shared initialisation: try both")
                    components = gr.CheckboxGroup(choices, value=attention, label="Components to merge",
                                                  elem_id="components")
                    with gr.Row():
                        setting1 = gr.Button("Setting 1: all language-model tensors", size="sm", elem_id="setting-1")
                        setting2 = gr.Button("Setting 2: self-attention only", size="sm", elem_id="setting-2")
                    method = gr.Dropdown(list(REGISTRY), value="linear", label="Method", elem_id="method")
                    method_formula = gr.Markdown(f"`{REGISTRY['linear'].formula}`")
                    with gr.Row():
                        param_boxes = [gr.Number(p.default, label=f"{p.name}", info=p.doc, visible=False,
                                                 elem_id=f"param-{p.name}") for p in param_defs]
                    gr.Markdown("**α per layer** — drag across the bars, apply a preset, or edit the table.")
                    curve = curve_editor(L, start_alphas)
                    with gr.Row():
                        preset = gr.Dropdown(DRAWN_PRESETS, value="loglinear", label="Preset",
                                             elem_id="preset")
                        p_value = gr.Number(0.4, label="value", minimum=0, maximum=1)
                        p_start = gr.Number(0.05, label="start", minimum=0, maximum=1)
                        p_end = gr.Number(0.4, label="end", minimum=0, maximum=1)
                        p_layer = gr.Number(L // 2, label="layer", precision=0, minimum=0, maximum=L)
                        p_anchors = gr.Textbox("0, 0.3, 0.6", label="anchors")
                    preset_formula = gr.Markdown(curves.PRESETS["loglinear"].formula, elem_id="preset-formula")
                    apply_preset = gr.Button("Apply preset", elem_id="apply-preset")
                    table = gr.Dataframe(table_of(start_alphas), headers=["layer", "α"], interactive=True,
                                         elem_id="alpha-table", row_count=L)
                    preview = gr.Plot(alpha_figure(start_alphas), label="α per layer")
                    with gr.Row():
                        pin = gr.Button("Pin as plan B", size="sm", elem_id="pin")
                        plan_yaml = gr.Code("", language="yaml", label="Current plan", elem_id="plan-yaml",
                                            interactive=False)
                with gr.Column(scale=4):
                    gr.Markdown("### Ask")
                    # a path, opened by read_image: size from the header before any pixel is decoded
                    image = uploaded_image(label="Image", elem_id="image", height=240)
                    question = gr.Textbox(label="Question", elem_id="question", lines=2)
                    text_only = gr.Checkbox(False, label="Text-only question (no image)", elem_id="text-only")
                    max_new_tokens = gr.Slider(1, explorer.max_new_tokens, 32, step=1, label="Max new tokens")
                    if explorer.eval_items:
                        gr.Examples([[str(i.image_path) if i.image_path else None, i.question]
                                     for i in explorer.eval_items[:40]], [image, question], label="Examples",
                                    examples_per_page=4)
                    compare = gr.Button("Compare", variant="primary", elem_id="compare")
                    base_box = gr.Textbox(label="Base VLM", elem_id="answer-base", interactive=False)
                    base_meta = gr.Markdown("", elem_id="meta-base")
                    merged_box = gr.Textbox(label="Merged (current plan)", elem_id="answer-merged",
                                            interactive=False)
                    merged_meta = gr.Markdown("", elem_id="meta-merged")
                    pinned_box = gr.Textbox(label="Plan B (pinned)", elem_id="answer-pinned", interactive=False)
                    pinned_meta = gr.Markdown("", elem_id="meta-pinned")
                    diff = gr.HighlightedText(label="Base → merged, word by word", elem_id="diff",
                                              color_map={"-": "red", "+": "green"})

        with gr.Tab("Inspect"):
            gr.Markdown("Where did the donor (the one picked in *Compare*) move away from the VLM? Per layer and "
                        "role, over all its tensors. A donor from the VLM's own seed stays close; one from "
                        "another init is as far as two random networks.")
            inspect_btn = gr.Button("Compute distances", elem_id="inspect")
            rel_plot = gr.Plot(label="relative distance", elem_id="rel-plot")
            cos_plot = gr.Plot(label="cosine", elem_id="cos-plot")

        with gr.Tab("Sweep"):
            gr.Markdown("Score a grid of plans on an eval set. Cells computed before come from the cache at once.")
            grid_text = gr.Code(DEFAULT_GRID, language="yaml", label="Grid", elem_id="grid")
            with gr.Row():
                eval_spec = gr.Textbox(explorer.eval_spec, label="Eval set (PATH.jsonl, mathvista:PATH, "
                                       "mathvision:PATH)", elem_id="eval-set", interactive=not explorer.public)
                max_items = gr.Number(8, label="Items (max)", precision=0, minimum=1)
            with gr.Row():
                run = gr.Button("Run sweep", variant="primary", elem_id="run-sweep")
                stop = gr.Button("Stop", elem_id="stop-sweep")
            with gr.Row():
                sweep_plot = gr.Plot(label="Accuracy", elem_id="sweep-plot")
                sweep_line_plot = gr.Plot(label="Accuracy against α", elem_id="sweep-lines")
            sweep_table = gr.Dataframe(label="Cells", elem_id="sweep-table")

        with gr.Tab("History"):
            gr.Markdown("Configurations evaluated so far (from the cache). Click a row to restore its plan.")
            refresh = gr.Button("Refresh", elem_id="refresh-history")
            history = gr.Dataframe(headers=["when", "question", "plan", "answer"], interactive=False,
                                   elem_id="history")

        with gr.Tab("Export"):
            gr.Markdown("Save the current plan (the YAML the CLI's `--plan` takes), its mergekit YAML where "
                        "mergekit can express it, or the merged model as a checkpoint `from_pretrained` loads. "
                        "Files go to the export folder the app was started with.")
            with gr.Row():
                export_plan = gr.Button("Save plan YAML", elem_id="export-plan")
                export_mergekit = gr.Button("Save mergekit YAML", elem_id="export-mergekit")
                export_model = gr.Button("Write merged checkpoint", elem_id="export-model")
            export_file = gr.File(label="Saved file", elem_id="export-file")

        param_inputs = [method, *param_boxes]

        def read_params(method_name, *values) -> dict:
            return {p.name: v for p, v in zip(param_defs, values)}

        def current_plan(comps, method_name, alphas, *values) -> MergePlan:
            return plan_from_ui(comps, method_name, alphas, read_params(method_name, *values))

        # -- cheap events: the merge panel ---------------------------------------------------
        def show_curve(alphas, pinned):
            if not isinstance(alphas, list) or len(alphas) != L:  # a crafted call: never plot a million points
                return gr.update(), gr.update()
            pinned_alphas = _first_curve(pinned, L)
            return table_of(alphas), alpha_figure(alphas, pinned_alphas)

        def on_method(method_name):
            names = {p.name: p for p in REGISTRY[method_name].params}
            updates = [gr.update(visible=p.name in names, value=names[p.name].default if p.name in names else None)
                       for p in param_defs]
            note = " (needs `--base`)" if REGISTRY[method_name].needs_base else ""
            return [f"`{REGISTRY[method_name].formula}`{note}", *updates]

        def on_preset_apply(name, value, start, end, layer, anchor_text, pinned):
            try:
                check_size(str(anchor_text), "anchors", 4096)  # a few numbers, not a megabyte of them
                spec = {"preset": name, "value": value, "start": start, "end": end, "layer": int(layer or 0),
                        "values": [float(x) for x in str(anchor_text).replace(",", " ").split()]}
                kinds = curves.PRESETS[name].kinds
                curve_spec = curves.normalize_curve({"preset": name, **{k: spec[k] for k in kinds}}, name)
                alphas = curves.layer_alphas(curve_spec, L)
            except (MergescopeError, ValueError) as exc:
                return gr.update(), gr.update(), gr.update(), f"⚠️ {exc}"
            return (alphas, *show_curve(alphas, pinned), f"Applied {name}: {curves.PRESETS[name].formula}")

        def on_table(frame, pinned):
            try:
                alphas = parse_table(frame, L)
            except MergescopeError as exc:
                return gr.update(), gr.update(), f"⚠️ {exc}"
            return alphas, alpha_figure(alphas, _first_curve(pinned, L)), ""

        def on_plan_inputs(comps, alphas, *param_values):
            try:
                return current_plan(comps, param_values[0], alphas, *param_values[1:]).to_yaml()
            except MergescopeError as exc:
                return f"# {exc}"

        setting1.click(lambda: all_roles, None, components, **CHEAP)
        setting2.click(lambda: attention, None, components, **CHEAP)
        method.change(on_method, method, [method_formula, *param_boxes], **CHEAP)
        preset.change(lambda n: curves.PRESETS[n].formula, preset, preset_formula, **CHEAP)
        apply_preset.click(on_preset_apply, [preset, p_value, p_start, p_end, p_layer, p_anchors, pinned_plan],
                           [curve, table, preview, status], **CHEAP)
        curve.change(show_curve, [curve, pinned_plan], [table, preview], **CHEAP)
        table.input(on_table, [table, pinned_plan], [curve, preview, status], **CHEAP)
        for trigger in (components.change, curve.change, method.change, *(b.change for b in param_boxes)):
            trigger(on_plan_inputs, [components, curve, *param_inputs], plan_yaml, **CHEAP)

        def on_pin(comps, alphas, *param_values):
            try:
                plan = current_plan(comps, param_values[0], alphas, *param_values[1:])
            except MergescopeError as exc:
                return gr.update(), gr.update(), f"⚠️ {exc}"
            return plan.to_yaml(), alpha_figure(alphas, alphas), f"Pinned plan `{plan.hash()}` as plan B."

        pin.click(on_pin, [components, curve, *param_inputs], [pinned_plan, preview, status], **CHEAP)

        # -- model events -----------------------------------------------------------------------
        # `request` first: Gradio injects it only among positional parameters, never after *param_values
        # (as a keyword it stayed None, and every visitor shared one rate limit)
        def on_compare(request: gr.Request, img, q, text_only_q, tokens, pinned, donor_name, comps, alphas,
                       *param_values):
            try:
                explorer.admit(request)
                q = check_question(as_text(q, "the question"))
                if img is None and not text_only_q:
                    raise MergescopeError("this question needs an image: pick an example or upload one, "
                                          "or tick 'Text-only question'")
                plan = current_plan(comps, param_values[0], alphas, *param_values[1:])
                plan_b = MergePlan.from_text(pinned) if pinned else None
                tokens = bounded_int(tokens, "max new tokens", 1, explorer.max_new_tokens)
                settings = GenerationSettings(max_new_tokens=tokens)
                img = None if text_only_q else read_image(img)
            except MergescopeError as exc:
                yield {status: f"⚠️ {exc}"}
                return
            yield {status: "", base_box: "", merged_box: "", pinned_box: "", base_meta: "", merged_meta: "",
                   pinned_meta: "", diff: []}
            answers = {}
            runs = [("base", MergePlan(), base_box, base_meta), ("merged", plan, merged_box, merged_meta)]
            if plan_b is not None:
                runs.append(("pinned", plan_b, pinned_box, pinned_meta))
            try:
                for name, p, box, meta in runs:
                    explorer.remember(request, explorer.answerer.config(p, q, img, settings, donor_name))
                    for update in explorer.answerer.stream(p, q, img, settings, donor=donor_name):
                        answers[name] = update["answer"]
                        yield {box: update["answer"], meta: badge(update)}
            except MergescopeError as exc:
                yield {status: f"⚠️ {exc}"}
                return
            yield {diff: token_diff(answers["base"], answers["merged"])}

        compare.click(on_compare, [image, question, text_only, max_new_tokens, pinned_plan, donor, components,
                                   curve, *param_inputs],
                      [status, base_box, merged_box, pinned_box, base_meta, merged_meta, pinned_meta, diff],
                      **GPU)

        def on_inspect(donor_name):
            rows = explorer.distances(donor_name)
            return distance_figure(rows, "rel_l2"), distance_figure(rows, "cosine")

        inspect_btn.click(on_inspect, donor, [rel_plot, cos_plot], **GPU)

        def on_sweep(grid, spec, limit, donor_name, progress=gr.Progress(), request: gr.Request = None):
            try:
                explorer.admit(request)
                # public: the cell count is refused from the axes' lengths, before any cell is built
                cells, settings = parse_grid(grid, max_cells=PUBLIC_MAX_SWEEP_ANSWERS) if explorer.public \
                    else parse_grid(grid)
                limit = bounded_int(limit or 1, "items (max)", 1, 1_000_000)
                items = load_eval_set(explorer.eval_spec if explorer.public else spec)[:limit]
                if explorer.public and (len(cells) * len(items) > PUBLIC_MAX_SWEEP_ANSWERS
                                        or settings.max_new_tokens > PUBLIC_MAX_NEW_TOKENS):
                    raise MergescopeError(f"this public demo runs sweeps of at most {PUBLIC_MAX_SWEEP_ANSWERS} "
                                          f"answers of ≤ {PUBLIC_MAX_NEW_TOKENS} tokens; this grid asks for "
                                          f"{len(cells) * len(items)} of {settings.max_new_tokens}")
            except MergescopeError as exc:
                yield {status: f"⚠️ {exc}"}
                return
            rows, total = [], len(cells) * len(items)
            progress((0, total), desc="sweep", unit="answers")
            for i, cell in enumerate(cells):
                rows += run_sweep(explorer.answerer, [cell], items, settings, donor=donor_name,
                                  progress=lambda done, _: progress((i * len(items) + done, total), desc="sweep",
                                                                    unit="answers"))
                summary = pd.DataFrame([{k: r[k] for k in ("setting", "method", "alpha", "accuracy", "computed",
                                                           "cached")} for r in rows])
                yield {sweep_plot: sweep_heatmap(rows) if len(rows) > 1 else gr.update(),
                       sweep_line_plot: sweep_lines(rows), sweep_table: summary,
                       status: f"Sweep: {i + 1}/{len(cells)} cells"}

        sweep_event = run.click(on_sweep, [grid_text, eval_spec, max_items, donor],
                                [status, sweep_plot, sweep_line_plot, sweep_table], **GPU)
        stop.click(None, None, None, cancels=[sweep_event], **CHEAP)

        # -- history and export ---------------------------------------------------------------
        def on_refresh(request: gr.Request = None):
            cache = explorer.answerer.cache
            if cache is None:
                entries = []
            elif explorer.public:  # a visitor sees only their own questions, never everyone's
                entries = [e for e in map(cache.entry, explorer.history.keys(explorer.client(request))) if e]
            else:
                entries = cache.entries(limit=HISTORY_LIMIT)
            rows = [[time.strftime("%H:%M:%S", time.localtime(e["created_at"])), e["config"].get("question", ""),
                     _plan_summary(e["config"].get("plan", {})), e["result"].get("answer", "")] for e in entries]
            return pd.DataFrame(rows, columns=["when", "question", "plan", "answer"]), [e["config"] for e in entries]

        def on_history_select(configs, evt: gr.SelectData):
            if not isinstance(evt.index, (list, tuple)) or not isinstance(evt.index[0], int) \
                    or not 0 <= evt.index[0] < len(configs):  # a stale table, or a crafted call
                gone = "⚠️ that row is gone: press Refresh"
                return [gr.update()] * 6 + [gone] + [gr.update()] * (1 + len(param_defs))
            config = configs[evt.index[0]]
            plan = MergePlan.from_dict(config["plan"])
            comps, method_name, params, alphas = _editor_state(plan, layout, all_roles)
            param_updates = [gr.update(value=params.get(p.name, p.default),
                                       visible=p.name in {d.name for d in REGISTRY[method_name].params})
                             for p in param_defs]
            note = f"Restored plan `{plan.hash()}`" + (" (first rule shown)" if len(plan.rules) > 1 else "")
            used = config.get("models", {}).get("donor")
            label = next((name for name, ckpt in explorer.answerer.donors.items() if ckpt.fingerprint() == used), None)
            return [comps, method_name, alphas, table_of(alphas), alpha_figure(alphas), config.get("question", ""),
                    note, gr.update(value=label) if plan.rules and label else gr.update(), *param_updates]

        refresh.click(on_refresh, None, [history, history_rows], **CHEAP)
        history.select(on_history_select, history_rows,
                       [components, method, curve, table, preview, question, status, donor, *param_boxes], **CHEAP)

        def exporter(kind: str):
            def run(donor_name, comps, alphas, *param_values):
                if explorer.export_dir is None:
                    return gr.update(), "⚠️ export is off (start the app with --export-dir)"
                try:
                    plan = current_plan(comps, param_values[0], alphas, *param_values[1:])
                    explorer.export_dir.mkdir(parents=True, exist_ok=True)
                    if kind == "checkpoint":
                        out = explorer.export_dir / f"merged-{plan.hash()}"
                        with explorer.answerer.holding(donor_name) as engine:
                            report = export_checkpoint(engine, plan, out, overwrite=True)
                        return str(out / "mergescope_plan.yaml"), f"Wrote {out} ({report['shards']} shards)"
                    path = explorer.export_dir / f"{kind}-{plan.hash()}.yaml"
                    path.write_text(plan.to_yaml() if kind == "plan"
                                    else mergekit_yaml(plan, explorer.answerer.pair_with(donor_name)))
                except MergescopeError as exc:
                    return gr.update(), f"⚠️ {exc}"
                except OSError as exc:  # a full disk, a read-only folder: say so, and where
                    where = brief(str(exc.filename or ""))
                    return gr.update(), (f"⚠️ export failed: {exc.strerror or exc} ({where}); free space there "
                                         f"or start the app with another --export-dir")
                return str(path), f"Saved {path}"
            return run

        export_inputs = [donor, components, curve, *param_inputs]
        export_plan.click(exporter("plan"), export_inputs, [export_file, status], **CHEAP)
        export_mergekit.click(exporter("mergekit"), export_inputs, [export_file, status], **CHEAP)
        export_model.click(exporter("checkpoint"), export_inputs, [export_file, status], **GPU)

        # -- API: answer a question under a plan given as YAML (for scripts and load tests) ----
        def api_answer(plan_yaml_text: str, question_text: str, max_tokens: int = 32,
                       request: gr.Request = None) -> dict:
            try:
                explorer.admit(request)
                plan = MergePlan.from_text(plan_yaml_text or "")
                question = check_question(as_text(question_text, "the question"))
                # the public cap clips a large request (as before); only nonsense is refused
                tokens = min(bounded_int(max_tokens, "max_new_tokens", 1, 4096), explorer.max_new_tokens)
                settings = GenerationSettings(max_new_tokens=tokens)
                explorer.remember(request, explorer.answerer.config(plan, question, None, settings))
                return explorer.answerer.ask(plan, question, None, settings)
            except MergescopeError as exc:  # a clear message for the caller, never a traceback
                raise gr.Error(str(exc)) from None

        gr.api(api_answer, api_name="answer", **GPU)
        app.load(on_method, method, [method_formula, *param_boxes], **CHEAP)
    explain_bad_inputs(app)  # a value the page would never send: one line, not Gradio's generic error
    return app


def _first_curve(plan_yaml: str, num_layers: int) -> list[float] | None:
    if not plan_yaml:
        return None
    plan = MergePlan.from_text(plan_yaml)
    return curves.layer_alphas(plan.rules[0].curve, num_layers) if plan.rules else None


def _plan_summary(plan: dict) -> str:
    rules = plan.get("rules", [])
    if not rules:
        return "base VLM"
    return "; ".join(f"{'+'.join(r['components'])} {r['method']} {r['curve'].get('preset')}" for r in rules)


def _editor_state(plan: MergePlan, layout, role_order: list[str]):
    """(components, method, params, α per layer) that show `plan`'s first rule in the editor; groups
    such as `self_attn` or `all` become the roles they cover."""
    if not plan.rules:
        return [], "linear", {}, [0.0] * layout.num_layers
    rule = plan.rules[0]
    covered = {s.role for s in layout.slots if any(s.matches(c) for c in rule.components)}
    return ([r for r in role_order if r in covered], rule.method, dict(rule.params),
            curves.layer_alphas(rule.curve, layout.num_layers))

