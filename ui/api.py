"""The scripting API: answer (and probe) a question under a plan given as YAML."""

from __future__ import annotations

import gradio as gr

from merging.run.generate import GenerationSettings

from .api_args import endpoint, int_arg, plan_arg, question_arg
from .explorer import GPU, Explorer, bind
from .probe_panel import register_probe_api


@endpoint
def api_answer(explorer: Explorer, plan_yaml_text: str | dict, question_text: str, max_tokens: int = 32,
               request: gr.Request = None) -> dict:
    """The answer under a plan: {"answer", "cached", "seconds", "plan_hash"}. Arguments as `ui.api_args` reads them."""
    explorer.admit(request)
    plan, question = plan_arg(plan_yaml_text), question_arg(question_text)
    # the public cap clips a large request (as before); only nonsense is refused
    tokens = min(int_arg(max_tokens, "max_new_tokens", 1, 4096), explorer.max_new_tokens)
    settings = GenerationSettings(max_new_tokens=tokens)
    explorer.remember(request, explorer.answerer.config(plan, question, None, settings))
    return explorer.answerer.ask(plan, question, None, settings)


def register_api(explorer: Explorer) -> None:
    gr.api(bind(api_answer, explorer), api_name="answer", **GPU)
    register_probe_api(explorer)
