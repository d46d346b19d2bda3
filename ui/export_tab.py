"""The Export tab: the current plan as YAML, as mergekit YAML, or the merged model as a checkpoint."""

from __future__ import annotations

from functools import partial

import gradio as gr

from merging.io.checkpoint import write_text_file
from merging.errors import MergescopeError
from merging.export.writer import export_checkpoint
from merging.limits import brief
from merging.export.mergekit_config import mergekit_yaml
from merging.export.mergekit_import import plan_from_mergekit

from .explorer import CHEAP, GPU, Explorer, bind
from .history_tab import restore
from .panel import PARAM_DEFS, Panel, plan_of, with_panel


def write_export(explorer: Explorer, kind: str, donor_name, panel: Panel) -> tuple[str, str]:
    """Write the plan (`plan`, `mergekit`) or the merged model (`checkpoint`); the path and a message."""
    plan = plan_of(panel)
    explorer.export_dir.mkdir(parents=True, exist_ok=True)
    if kind == "checkpoint":
        out = explorer.export_dir / f"merged-{plan.hash()}"
        # a partial of a module function, not a closure: on ZeroGPU the job is pickled to the GPU worker
        report = explorer.answerer.run(partial(export_checkpoint, plan=plan, out=out, overwrite=True), donor_name)
        return str(out / "mergescope_plan.yaml"), f"Wrote {out} ({report['shards']} shards)"
    path = explorer.export_dir / f"{kind}-{plan.hash()}.yaml"
    # a fresh file renamed into place: a link planted in the export folder is replaced, never followed
    text = plan.to_yaml() if kind == "plan" else mergekit_yaml(plan, explorer.answerer.pair_with(donor_name))
    write_text_file(path, text)
    return str(path), f"Saved {path}"


def on_export(explorer: Explorer, kind: str, donor_name, panel: Panel):
    if explorer.export_dir is None:
        return gr.update(), "⚠️ export is off (start the app with --export-dir)"
    try:
        return write_export(explorer, kind, donor_name, panel)
    except MergescopeError as exc:
        return gr.update(), f"⚠️ {exc}"
    except OSError as exc:  # a full disk, a read-only folder: say so, and where
        where = brief(str(exc.filename or ""))
        return gr.update(), (f"⚠️ export failed: {exc.strerror or exc} ({where}); free space there "
                             f"or start the app with another --export-dir")


def on_import_mergekit(explorer: Explorer, text: str) -> list:
    """The Compare editor's values (components, method, curve, table, question, status, donor, params in
    PARAM_DEFS order) showing the plan a mergekit YAML describes, then the whole plan as YAML; a one-line
    refusal changes nothing."""
    try:
        imported = plan_from_mergekit(text or "")
        imported.plan.targets(explorer.engine.pair.layout, has_base=explorer.engine.pair.base is not None)
    except MergescopeError as exc:
        return [gr.update()] * 5 + [f"⚠️ {exc}"] + [gr.update()] * (1 + len(PARAM_DEFS)) + [gr.update()]
    shown = restore(explorer, {"plan": imported.plan.to_dict()})
    components, method, curve, table, _, _, donor = shown[:7]
    params = shown[-len(PARAM_DEFS):]  # restore's image, Text-only and max new tokens stay as they are
    status = (f"Imported mergekit YAML as plan `{imported.plan.hash()}` ({len(imported.plan.rules)} rule(s)"
              + ("; the editor shows the first" if len(imported.plan.rules) > 1 else "") + ")")
    return [components, method, curve, table, gr.update(), status, donor, *params, imported.plan.to_yaml()]


def build_export_tab(explorer: Explorer, compare) -> None:
    gr.Markdown("Save the current plan (the YAML the CLI's `--plan` takes), its mergekit YAML where "
                "mergekit can express it, or the merged model as a checkpoint `from_pretrained` loads. "
                "Files go to the export folder the app was started with.")
    with gr.Row():
        buttons = {"plan": gr.Button("Save plan YAML", elem_id="export-plan"),
                   "mergekit": gr.Button("Save mergekit YAML", elem_id="export-mergekit"),
                   "checkpoint": gr.Button("Write merged checkpoint", elem_id="export-model")}
    status = gr.Markdown("", elem_id="export-status")
    export_file = gr.File(label="Saved file", elem_id="export-file")
    inputs = [compare.donor, *compare.plan_inputs]
    for kind, button in buttons.items():
        handler = bind(with_panel(on_export), explorer, kind)
        handler.__name__ = f"export_{kind}"
        button.click(handler, inputs, [export_file, status], **(GPU if kind == "checkpoint" else CHEAP))
    gr.Markdown("**Import mergekit YAML**: paste a mergekit configuration; its plan loads into the editor "
                "(what a plan cannot express is refused, naming the key).")
    source = gr.Code("", language="yaml", label="mergekit YAML", elem_id="import-mergekit-yaml")
    load = gr.Button("Import mergekit YAML", elem_id="import-mergekit")
    imported = gr.Code("", language="yaml", label="Imported plan", interactive=False, elem_id="imported-plan")
    load.click(bind(on_import_mergekit, explorer), source,
               [compare.components, compare.method, compare.curve, compare.table, compare.question, compare.status,
                compare.donor, *compare.param_boxes, imported], **CHEAP)
