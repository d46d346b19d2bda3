"""Lessons: one-click set-ups on the toy pair, each with what to look at (numbers measured on the toy
pair's 40 held-out items per kind, max 4 new tokens; see assets/toy/README.md for the 200-item tables)."""

from __future__ import annotations

import gradio as gr

from merging.plan import curves
from merging.model.known_pairs import NO_SHARED_SEED

from .explorer import Explorer
from .panel import Panel, component_choices, plan_of

COLOUR_ID, TEXT_PLUS_ID = "colour-00000", "text_plus-00000"
LESSONS = {
    "Shared seed vs no seed": {
        "donor": NO_SHARED_SEED, "components": "all", "curve": {"preset": "constant", "value": 0.4},
        "item": COLOUR_ID,
        "text": "Every tensor at constant α 0.4 with the LLM trained from **another init**: press Compare — the "
                "merge collapses (it says \"redredred…\"; colour 3 %, arithmetic 23 % on 40 items). Switch "
                "*Donor LLM* to the shared seed and Compare again: \"red\", colour 62 %, arithmetic 100 %.",
    },
    "Early layers keep perception": {
        "donor": None, "components": "all", "curve": {"preset": "linear", "start": 0.0, "end": 0.6},
        "item": COLOUR_ID, "pin": {"preset": "constant", "value": 0.6},
        "text": "Plan B (pinned) takes the LLM at a constant α 0.6 and loses the colour (\"4\"; colour 0 % on 40 "
                "items); the current plan ramps from 0 at layer 0 to 0.6 at the top and keeps it (\"red\", 97 %). "
                "The early layers read the image: leave them at the VLM.",
    },
    "A skill moves across": {
        "donor": None, "components": "all", "curve": {"preset": "constant", "value": 0.4},
        "item": TEXT_PLUS_ID,
        "text": "Only the LLM learned \"… Add k.\": the VLM answers \"3\" (gold 6; 17 % of such questions). Raise "
                "the constant α and Compare (or run the α scan): 0.4 → \"4\", 0.6 → \"5\", 1.0 → \"6\"; at α 0.8 "
                "78 % are right, while colour falls to 0 %.",
    },
}


def lesson_setup(explorer: Explorer, name: str) -> dict:
    """What lesson `name` sets: donor, components, curve, plan B's curve, question, image, text-only, text."""
    role_choices = [role for _, role in component_choices(explorer)]
    lesson = LESSONS[name]
    item = next((i for i in explorer.eval_items if i.id == lesson["item"]), None)
    L = explorer.num_layers
    return {"donor": lesson["donor"] or explorer.answerer.default_donor,
            "components": role_choices if lesson["components"] == "all" else lesson["components"],
            "curve": curves.layer_alphas(lesson["curve"], L),
            "pin": curves.layer_alphas(lesson["pin"], L) if "pin" in lesson else None,
            "question": item.question if item else "", "image": str(item.image_path) if item and item.image_path
            else None, "text_only": bool(item) and item.image_path is None, "text": lesson["text"]}


def on_lesson(explorer: Explorer, name):
    """(donor, components, method, separate curves, curve, question, image, text-only, plan B, plan B's
    card, the lesson's text) for a lesson; plan B pinned where the lesson compares two curves."""
    if name not in LESSONS:
        return [gr.update()] * 10 + [""]
    s = lesson_setup(explorer, name)
    donor = s["donor"] if s["donor"] in explorer.answerer.donors else explorer.answerer.default_donor
    pinned = plan_of(Panel(s["components"], s["pin"], "linear")).to_yaml() if s["pin"] else ""
    return [donor, s["components"], "linear", False, s["curve"], s["question"], s["image"], s["text_only"], pinned,
            gr.update(visible=bool(pinned)), f"**{name}.** {s['text']}"]


def build_lessons(explorer: Explorer) -> tuple[gr.Dropdown, gr.Markdown]:
    with gr.Row(equal_height=True):
        picker = gr.Dropdown(list(LESSONS), value=None, label="Lessons: one click sets up a merge to look at",
                             elem_id="lessons", scale=1, visible=bool(explorer.eval_items))
        text = gr.Markdown("", elem_id="lesson-text")
    return picker, text
