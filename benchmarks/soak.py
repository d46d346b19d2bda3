"""Soak and fault run: the app on the toy pair, several client sessions mixing Compare's answer, the
next-token distribution, the α scan, a sweep and an export, while faults are injected. Prints one JSON
object (issue #25).

Faults, each once, spread over the run: the cache database overwritten with garbage in the middle,
the disk filling (RLIMIT_FSIZE set on the server at the database's current size, for a tenth of the
run), an export (the CLI) killed with SIGKILL once its partial folder exists, and the donor's
safetensors replaced under the server (by another donor's).

Reported: requests, errors by kind ("unhandled" is Gradio's generic message: an uncaught exception),
stalls over 2 s, the server's peak RSS growth after warm-up, answers that differ from a fresh
process's answers for the same plans (`wrong_answers`), acknowledged cache writes lost (answers
returned after the last database fault whose entry is not in the cache afterwards), and interrupted
exports that left a folder which opens as a checkpoint without being the complete export.

Run (after `pip install -e .`): python benchmarks/soak.py [--seconds 60 --clients 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file
from abuse import free_port, wait_until_serving  # benchmarks/: the script's own folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fresh process checks with this checkout's code, as the server runs it
TOY = REPO / "assets" / "toy"
IMAGE = TOY / "eval" / "images" / "colour-00000.png"
STALL_S, TOKENS = 2.0, 8
PLANS = ["rules: []"] + [f"rules: [{{components: [{c}], curve: {{preset: constant, value: {a}}}}}]"
                         for c in ("all", "self_attn") for a in (0.3, 0.6, 0.9)]
QUESTIONS = ["What is 3 plus 4?", "Which colour comes next?", "How many letters in cat?"]
GRID = "components: {S: [self_attn]}\ncurves: {c: {preset: constant}}\nalphas: [0.5]\nmax_new_tokens: 4\n"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port, log = free_port(), open(root / "server.log", "w")
    server = subprocess.Popen([sys.executable, "app.py", "--vlm", str(root / "vlm"), "--llm", str(root / "llm"),
                               "--eval-set", str(TOY / "eval" / "toy_eval.jsonl"), "--cache-dir", str(root / "cache"),
                               "--export-dir", str(root / "exports"), "--port", str(port)], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(server, url, root / "server.log")
    return server, url


class Sessions:
    """Client sessions sending a random mix of requests until `deadline`; every outcome recorded."""

    def __init__(self, url: str, deadline: float, seed: int):
        self.url, self.deadline, self.seed = url, deadline, seed
        self.records: list[dict] = []
        self.lock = threading.Lock()

    def run(self, session: int) -> None:
        rng, client = random.Random(self.seed + session), Client(self.url, verbose=False)
        while time.monotonic() < self.deadline:
            op = rng.choice(["answer", "answer", "distribution", "scan", "sweep", "export"])
            plan, question = rng.choice(PLANS), rng.choice(QUESTIONS)
            start = time.monotonic()
            try:
                result, error = self.send(client, op, plan, question), None
            except Exception as exc:  # a refusal or a failure: classified below
                result, error = None, " ".join(str(exc).split())
            with self.lock:
                self.records.append({"op": op, "plan": plan, "question": question, "result": result, "error": error,
                                     "seconds": time.monotonic() - start, "done": time.monotonic()})

    @staticmethod
    def send(client: Client, op: str, plan: str, question: str):
        if op == "answer":
            return client.predict(plan, question, TOKENS, api_name="/answer")
        if op == "distribution":
            return client.predict(plan, "What colour is it?", handle_file(str(IMAGE)), 3, api_name="/distribution")
        if op == "scan":
            return client.predict(plan, question, None, [0.0, 0.5, 1.0], api_name="/scan")
        if op == "sweep":
            return client.predict(grid=GRID, spec=str(TOY / "eval" / "toy_eval.jsonl"), limit=2,
                                  api_name="/on_sweep")[0]
        return client.predict(api_name="/export_plan")[1]


def error_kind(message: str) -> str:
    if "upstream Gradio app has raised an exception" in message:
        return "unhandled"
    if "Connection" in message or "timed out" in message:
        return "connection"
    return "refused: " + message[:70]


def export_job(plan: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "merging", "export", "--vlm", str(TOY / "vlm"), "--llm",
                             str(TOY / "llm"), "--plan", str(plan), "--out", str(out), "--max-shard-size", "1MB"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(job: subprocess.Popen, ready) -> float:
    """Wait until `ready()` (or the job ends, or 2 minutes); the moment it happened."""
    deadline = time.monotonic() + 120
    while job.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    return time.monotonic()


def partial(out: Path):
    return lambda: any(out.parent.glob(f".{out.name}.partial-*"))


def files_of(folder: Path) -> dict[str, bytes]:
    """The export's files but its model card (which names the folder it was written to)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "README.md"}


def killed_exports(root: Path, count: int) -> dict:
    """A complete CLI export (timing its write: partial folder to rename), then `count` killed (SIGKILL) at
    random moments of that write: how many left a folder at --out that opens as a checkpoint (Checkpoint)
    without being the complete export, byte for byte (`half_exports_that_load`, must be 0)."""
    from merging.io.checkpoint import Checkpoint
    from merging.errors import MergescopeError
    plan = root / "plan.yaml"
    plan.write_text(PLANS[1])
    (root / "killed").mkdir()
    done = root / "killed" / "complete"
    reference = export_job(plan, done)
    writing = wait_until(reference, partial(done))
    write_s = wait_until(reference, done.exists) - writing  # from the partial folder to the rename
    reference.wait()
    complete = files_of(done)
    half = killed = finished = 0
    for i in range(count):
        out = root / "killed" / f"export-{i}"
        job = export_job(plan, out)
        wait_until(job, partial(out))
        time.sleep(random.Random(i).uniform(0.0, write_s))  # somewhere while it writes
        if job.poll() is None:
            job.send_signal(signal.SIGKILL)
            killed += 1
        job.wait()
        try:
            Checkpoint(out)
        except (MergescopeError, OSError):
            continue
        finished += files_of(out) == complete
        half += files_of(out) != complete
    return {"exports_killed": killed, "killed_exports_complete": finished, "half_exports_that_load": half,
            "export_write_s": round(write_s, 2)}


def inject_faults(server: subprocess.Popen, root: Path, seconds: float, log: list) -> None:
    """The database overwritten, the disk 'full' for a tenth of the run, the donor replaced; times logged."""
    db = root / "cache" / "cache.db"
    time.sleep(seconds * 0.2)
    with open(db, "r+b") as f:
        size = f.seek(0, 2)
        f.seek(max(100, size // 2))
        f.write(os.urandom(8192))
    log.append({"fault": "cache.db overwritten", "at": time.monotonic()})
    time.sleep(seconds * 0.2)
    limit = db.stat().st_size  # the soft limit only: lifting a hard limit again needs CAP_SYS_RESOURCE
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    log.append({"fault": f"RLIMIT_FSIZE {limit} B", "at": time.monotonic()})
    time.sleep(seconds * 0.1)
    resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (soft, hard))
    log.append({"fault": "RLIMIT_FSIZE lifted", "at": time.monotonic()})
    time.sleep(seconds * 0.2)
    spare = root / "llm" / "model.safetensors.new"
    shutil.copy(TOY / "llm_noseed" / "model.safetensors", spare)
    os.replace(spare, root / "llm" / "model.safetensors")
    log.append({"fault": "donor replaced", "at": time.monotonic()})


def check_answers(records: list[dict], root: Path, writes_safe_after: float) -> dict:
    """Every /answer result against a fresh process's answer (the original toy pair, no cache), and the
    ones returned after the last database fault against the cache the server left."""
    from cache import AnswerCache
    from merging import MergeEngine, MergePlan, load_pair
    from merging.run.answerer import Answerer
    from merging.run.generate import GenerationSettings
    fresh = Answerer(MergeEngine(load_pair(TOY / "vlm", TOY / "llm")))
    settings, cache = GenerationSettings(max_new_tokens=TOKENS), AnswerCache(root / "cache")
    expected: dict[tuple[str, str], str] = {}
    wrong = lost = acknowledged = 0
    for r in records:
        if r["op"] != "answer" or r["result"] is None:
            continue
        key = (r["plan"], r["question"])
        plan = MergePlan.from_text(r["plan"])
        if key not in expected:
            expected[key] = fresh.ask(plan, r["question"], None, settings)["answer"]
        wrong += r["result"]["answer"] != expected[key]
        if r["done"] > writes_safe_after:
            acknowledged += 1
            stored = cache.get(fresh.config(plan, r["question"], None, settings))
            if stored is None or stored["answer"] != r["result"]["answer"]:
                lost += 1
                print(f"lost: {r['plan']!r} {r['question']!r} cached={r['result']['cached']} at {r['done']:.1f}",
                      file=sys.stderr)
    return {"answers_checked": sum(r["op"] == "answer" and r["result"] is not None for r in records),
            "wrong_answers": wrong, "acknowledged_writes_checked": acknowledged, "acknowledged_writes_lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the sessions run (default 60)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--exports-killed", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (server.log, cache) and name it")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    for name in ("vlm", "llm"):
        shutil.copytree(TOY / name, root / name)
    server, url = start_server(root)
    try:
        Sessions.send(Client(url, verbose=False), "answer", PLANS[1], QUESTIONS[0])  # warm-up
        try:
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS
        except OSError:
            pass
        base_rss, faults = rss_kib(server.pid, "VmRSS"), []
        sessions = Sessions(url, time.monotonic() + args.seconds, args.seed)
        threads = [threading.Thread(target=sessions.run, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=inject_faults, args=(server, root, args.seconds, faults)))
        for t in threads:
            t.start()
        exports = killed_exports(root, args.exports_killed)
        for t in threads:
            t.join()
        peak = rss_kib(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    records = sessions.records
    errors: dict[str, int] = {}
    for r in records:
        if r["error"] is not None:
            errors[error_kind(r["error"])] = errors.get(error_kind(r["error"]), 0) + 1
    db_faults = [f["at"] for f in faults if "cache" in f["fault"] or "FSIZE" in f["fault"]]
    report = {"seconds": args.seconds, "clients": args.clients, "requests": len(records),
              "by_op": {op: sum(r["op"] == op for r in records) for op in sorted({r["op"] for r in records})},
              "errors_by_kind": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
              "unhandled": errors.get("unhandled", 0),
              "stalls_over_2s": sum(r["seconds"] > STALL_S for r in records),
              "slowest_s": round(max((r["seconds"] for r in records), default=0.0), 2),
              "peak_rss_growth_mb": round(max(0, peak - base_rss) / 1024, 1),
              **check_answers(records, root, max(db_faults, default=0.0)), **exports,
              "faults": [f["fault"] for f in faults]}
    if args.keep:
        report["folder"] = str(root)
        (root / "records.json").write_text(json.dumps({"records": records, "faults": faults}))
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
