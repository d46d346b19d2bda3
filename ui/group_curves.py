"""Separate curves: one α editor per group of CURVE_GROUPS (Attention, MLP, Norms, Embeddings/Head),
hidden while the curve is linked. Their values reach the panel as its `groups` (a State)."""

from __future__ import annotations

import gradio as gr

from .curve_editor import curve_editor
from .explorer import CHEAP
from .panel import CURVE_GROUPS


def build_group_curves(num_layers: int, start_alphas: list[float]) -> dict:
    """The switch, the group ticks, and per group an editor and its "Apply the preset here" button."""
    c = {"separate": gr.Checkbox(False, label="Separate curves per group (Attention, MLP, Norms, Embeddings/Head)",
                                 elem_id="separate-curves")}
    with gr.Column(visible=False) as c["group_column"]:
        c["group_ticks"] = gr.CheckboxGroup(list(CURVE_GROUPS), value=list(CURVE_GROUPS), label="Groups to merge",
                                            elem_id="curve-groups")
        c["group_curves"], c["group_apply"] = [], []
        for group in CURVE_GROUPS:
            slug = group.split("/")[0].lower()
            with gr.Row(equal_height=True):
                gr.Markdown(f"**{group}**")
                c["group_apply"].append(gr.Button("Apply the preset here", size="sm", elem_id=f"apply-{slug}"))
            c["group_curves"].append(curve_editor(num_layers, start_alphas, elem_id=f"curve-{slug}"))
    return c


def on_groups(separate, ticked, *group_alphas):
    """The groups State: {group: α per layer} for the ticked groups, or None while linked."""
    if not separate:
        return None
    return {g: a for g, a in zip(CURVE_GROUPS, group_alphas) if g in (ticked or [])}


def on_separate(separate):
    """Show the group editors and hide the linked one (and its component ticks), or the reverse."""
    return gr.update(visible=bool(separate)), gr.update(visible=not separate), gr.update(visible=not separate)


def wire_group_curves(c: dict, groups: gr.State, linked: list, apply_preset, preset_inputs: list,
                      status) -> list:
    """Wire the switch and editors: each change sets `groups`; returns the events that did, for the
    caller to chain its plan-changed handlers on. `linked`: the linked editor and the component ticks
    (hidden while separate); `apply_preset`: the preset handler, called with `preset_inputs`."""
    c["separate"].change(on_separate, c["separate"], [c["group_column"], *linked], **CHEAP)
    inputs = [c["separate"], c["group_ticks"], *c["group_curves"]]
    events = [trigger(on_groups, inputs, groups, **CHEAP)
              for trigger in (c["separate"].change, c["group_ticks"].change, *(e.change for e in c["group_curves"]))]
    for editor, button in zip(c["group_curves"], c["group_apply"]):
        button.click(apply_preset, preset_inputs, [editor, status], **CHEAP)
    return events
