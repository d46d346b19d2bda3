"""Stop buttons for long model jobs (sweeps, searches): one switch per browser session.

A job registers a switch when it starts and reads it between its steps; the Stop button (a cheap,
unqueued event) sets it. Keyed by Gradio's session hash: Stop only ever stops the clicking page's job.
"""

from __future__ import annotations

import threading

import gradio as gr


class Stops:
    """The switches of one kind of job; `message` is what Stop answers while a job runs."""

    def __init__(self, message: str):
        self.message = message
        self._switches: dict[str, threading.Event] = {}

    def __bool__(self) -> bool:
        """Whether any job of this kind runs now."""
        return bool(self._switches)

    def start(self, request: gr.Request | None) -> threading.Event:
        """A fresh switch for the requesting session's job (replacing an older one)."""
        switch = threading.Event()
        self._switches[_session(request)] = switch
        return switch

    def end(self, request: gr.Request | None, switch: threading.Event) -> None:
        """Forget `switch` once its job is over (unless a newer job of the session replaced it)."""
        if self._switches.get(_session(request)) is switch:
            del self._switches[_session(request)]

    def stop(self, request: gr.Request = None) -> str:
        """Set the session's switch: `message`, or "" when no job of the session runs."""
        switch = self._switches.get(_session(request))
        if switch is None:
            return ""
        switch.set()
        return self.message


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""
