"""Examples that teach: the lessons' questions first, each with its gold answer; image questions with a
thumbnail (never a blank one), text-only questions in their own list that ticks "Text-only" itself."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem
from merging.io.images import read_image

from .lessons import LESSONS

MAX_EXAMPLES = 40


def blank(path) -> bool:
    """An image of one flat colour (e.g. an empty toy scene) makes a blank thumbnail."""
    try:
        return all(low == high for low, high in read_image(path).getextrema())
    except MergescopeError:
        return True


def teaching_order(items: list[EvalItem]) -> tuple[list[EvalItem], list[EvalItem]]:
    """(image items, text-only items): the lessons' items first, blank images left out."""
    lesson_ids = [lesson["item"] for lesson in LESSONS.values()]
    ordered = sorted(items[:MAX_EXAMPLES * 4], key=lambda i: (lesson_ids.index(i.id) if i.id in lesson_ids
                                                              else len(lesson_ids)))
    with_image = [i for i in ordered if i.image_path is not None and not blank(i.image_path)]
    text_only = [i for i in ordered if i.image_path is None]
    return with_image[:MAX_EXAMPLES], text_only[:MAX_EXAMPLES]


def build_examples(items: list[EvalItem], image, question, text_only) -> None:
    gold = gr.Textbox(label="Gold answer", visible=False, elem_id="example-gold")
    with_image, text = teaching_order(items)
    with gr.Row(elem_classes=["one-column-narrow"]):
        with gr.Column():
            if with_image:
                gr.Examples([[str(i.image_path), i.question, False, i.answer] for i in with_image],
                            [image, question, text_only, gold], label="Image questions", examples_per_page=5)
        with gr.Column():
            if text:
                gr.Examples([[i.question, True, i.answer] for i in text], [question, text_only, gold],
                            label="Text-only questions", examples_per_page=5)
