"""Abuse battery (issue #14): a fixed set of hostile requests against a local `app.py --public` server.

Starts the server on the shipped toy pair (a subprocess, free port, temp cache and upload folder,
`--proxy-hops 1` so each battery item can come from its own address), warms it up, resets the
server's peak-RSS counter, then sends each hostile request and times it. Afterwards it asks normal
questions from a fresh address and compares each answer with the same question answered in this
process by the toy pair alone. Prints one JSON object:

  requests                     hostile requests sent
  refused_with_clear_message   of those, refused with the expected one-line message
  stalls_over_2s               hostile requests that took more than 2 s to come back
  peak_rss_growth_mb           server's VmHWM at the end minus its VmRSS after warm-up
  answers_correct_after        normal answers afterwards equal to the reference (of answers_checked)
  history_rows_leaked          rows of other visitors' questions a stranger's History showed

Targets: 0 stalls, RSS growth < 200 MB, every later answer correct, nothing leaked.
Run (after `pip install -e .`): python benchmarks/abuse.py
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import requests
from gradio_client import Client, handle_file

REPO = Path(__file__).resolve().parents[1]  # app.py and the toy image; the library is the installed package
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RATE_LIMIT = 12  # app.py's default
TOY_IMAGE = REPO / "assets/toy/eval/images/colour-00000.png"
STALL_S = 2.0


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ",".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nrules: *a{levels - 1}\n"


def png_bomb(width: int = 12_000, height: int = 12_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 300) -> None:
    """Return once `url` answers 200; SystemExit with the log's tail if the server exits or takes longer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.5)


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def rule(extra: str) -> str:
    return "rules:\n- {components: [all], " + extra + "}\n"


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    """`app.py --public` on the toy pair in a subprocess; (process, url) once it serves."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "app.py", "--public", "--port", str(port), "--cache-dir", str(root / "cache"),
         "--proxy-hops", "1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, GRADIO_TEMP_DIR=str(root / "uploads"), GRADIO_ANALYTICS_ENABLED="False"))
    wait_until_serving(server, url, root / "server.log")
    return server, url


class Visitor:
    """Requests to the server as seen from one client address (behind the one trusted proxy hop)."""

    def __init__(self, url: str, address: str):
        self.client = Client(url, headers={"X-Forwarded-For": address}, verbose=False)

    def compare(self, path: Path, question: str) -> list:
        """The Compare outputs the page would finally show (updates skipped)."""
        job = self.client.submit(handle_file(str(path)), question, False, 8, "LLM from the shared seed",
                                 ["q_proj"], [0.0] * 8, "linear", 1.0, 0.2, 1, 0, 0.9, api_name="/on_compare")
        return final_outputs(job)


def final_outputs(job, count: int = 8) -> list:
    """A streamed Gradio job's outputs as the page shows them at the end (each step updates some)."""
    job.result()
    shown: list = [None] * count
    for step in job.outputs():
        for i, value in enumerate(step):
            if not (isinstance(value, dict) and value.get("__type__") == "update"):
                shown[i] = value
    return shown


def hostile_requests(files: Path) -> list[tuple[str, object, str]]:
    """(name, send(visitor) → message, the text a clear refusal contains) for each hostile request."""
    files.mkdir()
    (files / "bomb.png").write_bytes(png_bomb())
    (files / "truncated.png").write_bytes(TOY_IMAGE.read_bytes()[: TOY_IMAGE.stat().st_size // 2])
    (files / "notes.png").write_text("not an image")
    axis = lambda p, v: "{" + ", ".join(f"{p}{i}: {v}" for i in range(100)) + "}"  # noqa: E731
    million = (f"components: {axis('s', '[all]')}\ncurves: {axis('m', '{preset: constant}')}\n"
               f"alphas: [{', '.join(['0.5'] * 100)}]\n")

    def answer(plan: str, tokens: object = 8):
        return lambda v: v.client.predict(plan, "Hi?", tokens, api_name="/answer")

    def sweep(grid: str):
        return lambda v: v.client.predict(grid, "", 1, "LLM from the shared seed", api_name="/on_sweep")[0]

    def image(name: str):
        return lambda v: v.compare(files / name, "What colour is it?")[0]

    return [
        ("alias bomb plan", answer(alias_bomb()), "aliases"),
        ("70 KB plan", answer("rules: []\n#" + "x" * 70_000), "the limit is 64 KiB"),
        ("30000-deep nesting", answer("[" * 30_000), "nested deeper"),
        ("list as method", answer(rule("method: [linear], curve: {preset: constant, value: 0.4}")),
         "unknown merge method"),
        ("400-digit α", answer(rule("curve: {preset: constant, value: " + "9" * 400 + "}")), "digits"),
        ("5000-digit layer", answer(rule("curve: {preset: step, layer: " + "9" * 5000 + ", value: 0.1}")),
         "digits"),
        ("mixed key types", answer(rule("1: x, curve: {preset: constant, value: 0.4}")), "keys must be text"),
        ("max_tokens as text", answer("rules: []", "lots"), "max_new_tokens: expected a whole number"),
        ("max_tokens 10**30", answer("rules: []", 10**30), "outside [1, 4096]"),
        ("100×100×100 grid", sweep(million), "1000001 cells; the limit is 64"),
        ("alias bomb grid", sweep(alias_bomb()), "aliases"),
        ("grid of wrong types", sweep("components: [a]\ncurves: 1\nalphas: 2\n"), "must be a non-empty"),
        ("144 MP PNG", image("bomb.png"), "MP; upload a smaller one"),
        ("truncated PNG", image("truncated.png"), "not a readable image"),
        ("text file as PNG", image("notes.png"), "not a readable image"),
        ("α curve of text", lambda v: v.client.submit(handle_file(str(TOY_IMAGE)), "Hi?", False, 8,
                                                      "LLM from the shared seed", ["q_proj"], "abc", "linear",
                                                      1.0, 0.2, 1, 0, 0.9, api_name="/on_compare").result()[0],
         "α curve must be a list of numbers"),
        ("100 KB anchors", lambda v: v.client.predict("anchors", 0.4, 0.05, 0.4, 4, "0.1 " * 25_000,
                                                      api_name="/on_preset_apply")[3], "the limit is 4 KiB"),
    ] + [(f"new session #{i} past the limit", answer("rules: []"), "rate limit") for i in range(8)]


def send_all(url: str, battery: list) -> tuple[int, int, list[dict]]:
    """(refused with a clear message, stalls, failures): each request from its own address, the rate-limit
    ones from one address that a new session per call and a forged first hop do not hide."""
    for i in range(RATE_LIMIT):
        Visitor(url, f"198.51.100.{i}, 192.0.2.77").client.predict("rules: []", "What is 2 plus 5?", 8,
                                                                   api_name="/answer")
    refused = stalls = 0
    failures = []
    for n, (name, send, expected) in enumerate(battery):
        address = "192.0.2.77" if "past the limit" in name else f"192.0.2.{n + 1}"
        visitor = Visitor(url, f"203.0.113.9, {address}")
        start = time.monotonic()
        try:
            message = str(send(visitor))
        except Exception as exc:  # a refused API call comes back as an exception with the message
            message = str(exc)
        seconds = time.monotonic() - start
        stalls += seconds > STALL_S
        clear = expected in message and "\n" not in message.strip() and "Traceback" not in message
        refused += clear
        if not clear or seconds > STALL_S:
            failures.append({"request": name, "seconds": round(seconds, 2), "message": message[:200]})
    return refused, stalls, failures


def answers_still_correct(url: str) -> tuple[int, int]:
    """(correct, checked): normal questions from a fresh address against the toy pair answered here."""
    from transformers.utils import logging as hf_logging

    from merging import MergeEngine, MergePlan, load_pair
    from merging.run.answerer import Answerer
    from merging.run.generate import GenerationSettings
    from merging.model.known_pairs import resolve_models
    from merging.io.images import read_image
    hf_logging.disable_progress_bar()
    models = resolve_models(None, None, None, None)
    reference = Answerer(MergeEngine(load_pair(models.vlm, models.llm, models.base)))
    settings = GenerationSettings(max_new_tokens=8)
    after = Visitor(url, "192.0.2.201")
    checked = correct = 0
    for q in ("What is 3 plus 4?", "What is 6 plus 1?", "How many letters in cat?"):
        got = after.client.predict("rules: []", q, 8, api_name="/answer")["answer"]
        checked, correct = checked + 1, correct + (got == reference.ask(MergePlan(), q, None, settings)["answer"])
    q = "What colour is the shape at the top left?"
    want = reference.ask(MergePlan(), q, read_image(TOY_IMAGE), settings)["answer"]
    return correct + (after.compare(TOY_IMAGE, q)[1] == want), checked + 1


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="abuse-"))
    server, url = start_server(root)
    try:
        # warm-up: the first answer and the first image load their code paths; then measure from here
        warm = Visitor(url, "192.0.2.250")
        warm.client.predict("rules: []", "What is 1 plus 1?", 8, api_name="/answer")
        warm.compare(TOY_IMAGE, "What colour is the shape at the top left?")
        try:
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        base_rss = proc_kib(server.pid, "VmRSS")
        battery = hostile_requests(root / "files")
        refused, stalls, failures = send_all(url, battery)
        # a stranger's History must not show anyone else's questions
        leaked = len(Visitor(url, "192.0.2.200").client.predict(api_name="/on_refresh")["data"])
        correct, checked = answers_still_correct(url)
        peak = proc_kib(server.pid, "VmHWM")
        print(json.dumps({"requests": len(battery), "refused_with_clear_message": refused, "stalls_over_2s": stalls,
                          "peak_rss_growth_mb": round(max(0, peak - base_rss) / 1024, 1),
                          "answers_correct_after": correct, "answers_checked": checked,
                          "history_rows_leaked": leaked, "failures": failures}))
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
