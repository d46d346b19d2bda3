"""The scripting API: answer (and probe) a question under a plan given as YAML."""

from __future__ import annotations

import gradio as gr

from merging.errors import MergescopeError
from merging.generate import GenerationSettings, check_question
from merging.limits import as_text, bounded_int
from merging.plan import MergePlan

from .explorer import GPU, Explorer, bind


def api_answer(explorer: Explorer, plan_yaml_text: str, question_text: str, max_tokens: int = 32,
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


def register_api(explorer: Explorer) -> None:
    from .probe_panel import register_probe_api
    gr.api(bind(api_answer, explorer), api_name="answer", **GPU)
    register_probe_api(explorer)
