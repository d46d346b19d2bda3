"""Math equivalence with Hugging Face's math-verify, bounded in time from any thread.

math-verify (github.com/huggingface/Math-Verify) parses LaTeX/plain expressions to SymPy and compares
them. Its own time limits (`parse(..., parsing_timeout=)`, `verify(..., timeout_seconds=)`) use
`signal.alarm`: off the main thread they raise ValueError ("signal only works in main thread"), with
`None` they are off — and then one answer such as `9^{9^{9^{9}}}` runs for ever, or `((((…1))))` for
tens of seconds (measured with 0.9.0). On the main thread the alarm would also cancel any other SIGALRM
timer (pytest-timeout's, say). So the comparison runs in one worker process (a plain Python child,
never importing this package or torch), which keeps math-verify's own alarms on its main thread, and
the caller waits at most `DEADLINE_S`; a worker past its deadline is killed and the next call starts a
fresh one. Calls from several threads take turns (a lock). Inputs are capped at `MAX_CHARS` (the
response's tail, where its conclusion is).
"""

from __future__ import annotations

import atexit
import json
import logging
import select
import subprocess
import sys
import threading
import time

PARSE_TIMEOUT_S = 2     # math-verify's own alarm in the worker, per parse / verify
DEADLINE_S = 10.0       # the caller's hard limit per comparison (after the worker is up)
START_DEADLINE_S = 60.0  # importing sympy + math-verify in a fresh worker
MAX_CHARS = 2000

_WORKER = f"""
import json, logging, sys
logging.disable(logging.CRITICAL)
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
T = {PARSE_TIMEOUT_S}
def wrap(s):
    return s if ("$" in s or "\\\\boxed" in s or "\\\\(" in s) else "$" + s + "$"
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        gold = parse(wrap(req["gold"]), CONFIG, parsing_timeout=T)
        pred = parse(wrap(req["pred"]) if req["wrap"] else req["pred"], CONFIG, parsing_timeout=T)
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=T))
    except BaseException:
        ok = False
    print(json.dumps(ok), flush=True)
"""

log = logging.getLogger(__name__)
_lock = threading.Lock()
_proc: subprocess.Popen | None = None


def _kill() -> None:
    global _proc
    if _proc is not None:
        _proc.kill()
        _proc.wait()
        _proc = None


atexit.register(_kill)


def _readline(proc: subprocess.Popen, deadline: float) -> str | None:
    if not select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return None
    return proc.stdout.readline() or None


def _worker() -> subprocess.Popen | None:
    global _proc
    if _proc is not None and _proc.poll() is None:
        return _proc
    _proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, bufsize=1)
    if _readline(_proc, time.monotonic() + START_DEADLINE_S) != "ready\n":
        log.warning("math-verify worker did not start (is math-verify installed?)")
        _kill()
    return _proc


def equivalent(gold: str, answer: str, deadline_s: float = DEADLINE_S) -> bool | None:
    """Whether `answer` (str: an extracted answer, or a whole response whose last expression is used)
    equals `gold` (str, LaTeX or plain) under math-verify; None when the comparison did not finish in
    `deadline_s` seconds or the worker could not start (the worker is then replaced). Safe from any
    thread; never raises."""
    short = len(answer) <= 200 and "\n" not in answer
    request = json.dumps({"gold": gold[:MAX_CHARS], "pred": answer[-MAX_CHARS:], "wrap": short}) + "\n"
    with _lock:
        proc = _worker()
        if proc is None:
            return None
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
            reply = _readline(proc, time.monotonic() + deadline_s)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            log.warning("math-verify gave no verdict within %.0f s; counted wrong", deadline_s)
            _kill()
            return None
        return json.loads(reply)
