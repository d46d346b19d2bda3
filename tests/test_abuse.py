"""Issue #14, a public demo that one request cannot freeze: each kind of hostile request against a real
`app.py --public` server (a subprocess on the shipped toy pair, a temp cache and upload folder),
or in-process where the kind is about a function. Each test checks the clear one-line message and
that a normal request still gets the right answer afterwards (computed here, in-process, alone)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from cache import AnswerCache
from merging import MergeEngine, MergePlan, PlanError, load_pair
from merging.run.generate import GenerationSettings
from merging.model.known_pairs import resolve_models
from merging.io.images import read_image
from merging.limits import MAX_IMAGE_PIXELS, LimitError, brief
from merging.run.answerer import Answerer
from merging.experiments.sweep import parse_grid

REPO = Path(__file__).resolve().parents[1]
TOY_IMAGE = REPO / "assets/toy/eval/images/colour-00000.png"
COLOUR_Q = "What colour is the shape at the top left?"
RATE_LIMIT = 6
FAST_S = 2.0  # every refusal comes back within this


def _load_battery():
    """benchmarks/abuse.py, whose payload builders (alias and PNG bombs) these tests share."""
    spec = importlib.util.spec_from_file_location("abuse_battery", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "abuse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_battery = _load_battery()
_free_port, alias_bomb, png_bomb = _battery.free_port, _battery.alias_bomb, _battery.png_bomb


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.cache_dir = root / "cache"
        self.cache_dir.mkdir()
        # a cache.db that is not a database: the server must start anyway (and say so in one line)
        (self.cache_dir / "cache.db").write_bytes(b"not a database " * 512)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = dict(os.environ, GRADIO_TEMP_DIR=str(root / "uploads"), HF_HUB_OFFLINE="1",
                   GRADIO_ANALYTICS_ENABLED="False")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--public", "--port", str(self.port), "--cache-dir", str(self.cache_dir),
             "--rate-limit", str(RATE_LIMIT), "--global-rate-limit", "1000", "--proxy-hops", "1"],
            cwd=REPO, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("app.py did not start")

    def client(self, address: str) -> Client:
        """A client seen by the server as coming from `address` (its proxy-appended X-Forwarded-For hop)."""
        return Client(self.url, headers={"X-Forwarded-For": address}, verbose=False)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("abuse"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    """The toy pair in this process, no cache: what a correct answer is."""
    models = resolve_models(None, None, None, None)
    return Answerer(MergeEngine(load_pair(models.vlm, models.llm, models.base)))


def expected(reference, question: str, tokens: int = 8, image: Path | None = None) -> str:
    img = read_image(image) if image is not None else None
    return reference.ask(MergePlan(), question, img, GenerationSettings(max_new_tokens=tokens))["answer"]


def refused(call, *args, **kwargs) -> str:
    """The one-line message a refused /answer call comes back with, checked to be quick."""
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    assert time.monotonic() - start < FAST_S
    message = str(info.value)
    assert "\n" not in message.strip() and "Traceback" not in message and len(message) < 400
    return message


def answers_correctly(client: Client, reference, question: str) -> None:
    result = client.predict("rules: []", question, 8, api_name="/answer")
    assert result["answer"] == expected(reference, question)


# -- 1. unbounded work from tiny input ---------------------------------------------------------------

def test_alias_bombs_and_oversized_plans_are_refused_at_once(server, reference):
    client = server.client("10.1.0.1")
    before = rss_mb(server.proc.pid)
    assert len(alias_bomb()) < 500
    assert "aliases" in refused(client.predict, alias_bomb(), "Hi?", 4, api_name="/answer")
    assert "the limit is 64 KiB" in refused(client.predict, "rules: []\n#" + "x" * 70_000, "Hi?", 4,
                                            api_name="/answer")
    assert "nested deeper" in refused(client.predict, "[" * 3000, "Hi?", 4, api_name="/answer")
    assert rss_mb(server.proc.pid) - before < 100
    answers_correctly(client, reference, "What is 1 plus 2?")


def test_a_million_cell_grid_is_refused_from_its_axes(server, reference):
    client = server.client("10.1.0.2")
    axis = lambda prefix, value: "{" + ", ".join(f"{prefix}{i}: {value}" for i in range(100)) + "}"  # noqa: E731
    grid = (f"components: {axis('s', '[all]')}\ncurves: {axis('m', '{preset: constant}')}\n"
            f"alphas: [{', '.join(['0.5'] * 100)}]\n")
    assert len(grid) < 5000
    start = time.monotonic()
    status = client.predict(grid, "", 1, "LLM from the shared seed", api_name="/on_sweep")[0]
    assert time.monotonic() - start < FAST_S
    assert "1000001 cells; the limit is 64" in status
    assert "aliases" in client.predict(alias_bomb(), "", 1, "LLM from the shared seed", api_name="/on_sweep")[0]
    answers_correctly(client, reference, "What is 2 plus 2?")


def test_bounded_repr_never_formats_the_whole_value():
    deep: list = []
    for _ in range(10_000):  # a repr() of this would recurse too deep; brief() stops at 3 levels
        deep = [deep, list(range(1000))]
    text = brief(deep)
    assert len(text) <= 120 and text.startswith("[[")
    assert len(brief("x" * 10**7)) <= 120 and len(brief(10**4000)) <= 120


# -- 9. wrong types in a plan: one line, via the CLI too ---------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("rules:\n- {components: [all], method: [linear], curve: {preset: constant, value: 0.4}}",
     "rules[0].method: unknown merge method ['linear']"),
    ("rules:\n- {components: [all], curve: {preset: constant, value: " + "9" * 400 + "}}", "more than 30 digits"),
    ("rules:\n- {components: [all], curve: {preset: step, layer: " + "9" * 5000 + ", value: 0.2}}",
     "at most 30 digits"),
    ("rules:\n- {1: x, components: [all], curve: {preset: constant, value: 0.4}}", "keys must be text"),
    ("rules:\n- {components: [all], method: ties, params: {density: " + "9" * 400 + "}, "
     "curve: {preset: constant, value: 0.4}}", "more than 30 digits"),
])
def test_wrong_types_in_a_plan_are_one_line(text, says):
    with pytest.raises(PlanError) as info:
        MergePlan.from_text(text)
    assert says in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("rule", [
    {"components": [f"{'x' * 150}{i}" for i in range(4000)], "curve": {"preset": "constant", "value": 0.1}},
    {"components": ["all"],
     "curve": {"preset": "constant", "value": 0.1, **{f"k{'y' * 150}{i}": 1 for i in range(4000)}}},
    {"components": ["all"], "method": "ties", "params": {f"p{'z' * 150}{i}": 1 for i in range(4000)},
     "curve": {"preset": "constant", "value": 0.1}},
])
def test_messages_about_large_values_stay_short(rule):
    with pytest.raises(PlanError) as info:
        MergePlan.from_dict({"rules": [rule]})
    message = str(info.value)
    assert len(message) < 500 and ("unknown" in message or "no parameter" in message)


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    from merging.__main__ import main
    plan = tmp_path / "bomb.yaml"
    plan.write_text(alias_bomb())
    assert main(["answer", "--plan", str(plan), "--question", "Hi?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plan: YAML aliases") and "\n" not in err
    grid = tmp_path / "grid.yaml"
    grid.write_text("components: {a: [all]}\ncurves: {m: {preset: constant}}\nalphas: [0.5]\nmax_new_tokens: [1]\n")
    assert main(["sweep", "--grid", str(grid), "--eval-set", "x.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "max_new_tokens: expected a whole number" in capsys.readouterr().err
    cells, _ = parse_grid("components: {a: [all]}\ncurves: {m: {preset: constant}}\nalphas: [0.5]\n")
    assert len(cells) == 2  # a normal grid still parses


def test_a_full_disk_during_export_is_one_line(tmp_path):
    """The export hits a file-size limit (RLIMIT_FSIZE: what a full disk looks like to a writer)."""
    (tmp_path / "plan.yaml").write_text("rules: [{components: [all], curve: {preset: constant, value: 0.5}}]\n")

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    run = subprocess.run([sys.executable, "-m", "merging", "export", "--plan", str(tmp_path / "plan.yaml"),
                          "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, preexec_fn=small_files, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: File too large") and "choose another folder" in last
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


# -- 2. limits a client chooses to skip --------------------------------------------------------------

def test_rate_limit_is_per_address_not_per_session(server, reference):
    url_answers = 0
    for i in range(RATE_LIMIT):  # a new client (a new session hash) per call, and a forged first hop
        client = server.client(f"203.0.113.{i}, 10.2.0.1")
        assert client.predict("rules: []", "What is 3 plus 1?", 4, api_name="/answer")["answer"] is not None
        url_answers += 1
    message = refused(server.client("198.51.100.7, 10.2.0.1").predict, "rules: []", "What is 3 plus 1?", 4,
                      api_name="/answer")
    assert f"rate limit: at most {RATE_LIMIT} model requests per 60 s from one address (10.2.0.1)" in message
    answers_correctly(server.client("10.2.0.2"), reference, "What is 3 plus 3?")  # another address is served


def test_rate_limiter_has_a_global_limit_and_forgets_idle_clients():
    from merging.errors import MergescopeError
    from ui.guard import RateLimiter
    limiter = RateLimiter(2, window=0.3, global_limit=3)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(MergescopeError, match="at most 2 model requests"):
        limiter.check("a")
    limiter.check("b")
    with pytest.raises(MergescopeError, match="busy: at most 3 model requests .* from everyone"):
        limiter.check("c")
    time.sleep(0.35)  # the window passes: the global count and a's and b's entries expire
    for i in range(3):
        limiter.check(f"new-{i}")
    assert len(limiter) == 3
    small = RateLimiter(1, window=60, global_limit=10**6, max_clients=100)
    for i in range(1000):
        small.check(f"c{i}")
    assert len(small) == 100


# -- 3. other people's data --------------------------------------------------------------------------

def test_history_shows_a_visitor_only_their_own_questions(server, reference):
    alice, bob = server.client("10.3.0.1"), server.client("10.3.0.2")
    alice.predict("rules: []", "Alice asks: what is 4 plus 1?", 4, api_name="/answer")
    bob.predict("rules: []", "Bob asks: what is 4 plus 2?", 4, api_name="/answer")
    _compare(alice, TOY_IMAGE, "Alice asks: what colour is it?")  # base and merged: one Compare row
    seen = [row[1] for row in alice.predict(api_name="/on_refresh")["data"]]
    assert sorted(seen) == ["Alice asks: what colour is it?", "Alice asks: what is 4 plus 1?"]
    assert [row[1] for row in bob.predict(api_name="/on_refresh")["data"]] == ["Bob asks: what is 4 plus 2?"]
    assert [row[1] for row in server.client("10.3.0.3").predict(api_name="/on_refresh")["data"]] == []
    answers_correctly(alice, reference, "What is 4 plus 4?")


def test_history_is_capped_per_visitor():
    from ui.guard import History
    history = History(per_client=3, max_clients=2)
    for i in range(10):
        history.add("a", f"k{i}")
    history.add("a", "k8")  # asked again: moves to the front, not twice
    assert history.keys("a") == ["k8", "k9", "k7"]
    history.add("b", "x")
    history.add("c", "y")
    assert history.keys("a") == [] and history.keys("c") == ["y"]


# -- 4. images decoded before they are checked -------------------------------------------------------

def _compare(client: Client, path: Path, question: object = COLOUR_Q, tokens: object = 8,
             alphas: object = (0.0,) * 8) -> list:
    """/on_compare's outputs as the page would show them at the end (each stream step updates some)."""
    job = client.submit(handle_file(str(path)), question, False, tokens, "LLM from the shared seed", ["q_proj"],
                        list(alphas) if isinstance(alphas, tuple) else alphas, "linear", 1.0, 0.2, 1, 0, 0.9,
                        api_name="/on_compare")
    return _battery.final_outputs(job)


def test_images_are_measured_before_decoding_and_bad_files_are_one_line(server, reference, tmp_path):
    client = server.client("10.4.0.1")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    assert bomb.stat().st_size < 2 * 2**20
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(TOY_IMAGE.read_bytes()[: TOY_IMAGE.stat().st_size // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    before = rss_mb(server.proc.pid)
    for path, says in ((bomb, f"more than {MAX_IMAGE_PIXELS / 1e6:.1f} MP; upload a smaller one"),
                       (truncated, "truncated.png: not a readable image"), (text, "notes.png: not a readable image")):
        start = time.monotonic()
        status = _compare(client, path)[0]
        assert time.monotonic() - start < FAST_S + 1  # includes the upload
        assert says in status and status.startswith("⚠️") and "\n" not in status
    assert rss_mb(server.proc.pid) - before < 100  # 144 MP would be +400 MB decoded
    outputs = _compare(client, TOY_IMAGE)
    assert outputs[1] == expected(reference, COLOUR_Q, image=TOY_IMAGE)


def test_crafted_panel_values_are_one_line(server, reference):
    """What the browser never sends but a script can: the same handler answers with one line."""
    client = server.client("10.4.0.2")
    for kwargs, says in (({"alphas": "abc"}, "the α curve must be a list of numbers"),
                         ({"alphas": [0.1] * 5000}, "the α curve must be a list of numbers"),
                         ({"alphas": [0.1] * 7}, "custom curve has 7 values but the model has 8")):
        status = _compare(client, TOY_IMAGE, **kwargs)[0]
        assert says in status and status.startswith("⚠️") and "\n" not in status
    # refused by the slider itself, before the handler: still one line, not Gradio's generic error
    assert "Max new tokens: 'lots' is not a value this field takes" in refused(_compare, client, TOY_IMAGE,
                                                                               tokens="lots")
    assert _compare(client, TOY_IMAGE)[1] == expected(reference, COLOUR_Q, image=TOY_IMAGE)


def test_read_image_refuses_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bomb(5000, 5000))  # between PIL's warning and error thresholds
    with pytest.raises(LimitError, match="upload a smaller one"):
        read_image(path)
    assert read_image(TOY_IMAGE).mode == "RGB"


# -- 5. uploads expire -------------------------------------------------------------------------------

def test_upload_folder_is_pruned_by_age_and_size(tmp_path):
    from ui.guard import prune_folder
    now = time.time()
    for name, age, size in (("old", 4000, 10), ("mid-a", 100, 600), ("mid-b", 50, 600), ("new", 1, 600),
                            ("example", 9000, 10)):
        path = tmp_path / "u" / name / "f.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    deleted = prune_folder(tmp_path / "u", max_bytes=1300, max_age_s=3600, keep_before=now - 5000)
    left = sorted(p.parent.name for p in (tmp_path / "u").rglob("*.png"))
    assert deleted == 2 and left == ["example", "mid-b", "new"]  # too old, then the oldest over the bound


def test_public_app_deletes_gradio_uploads(reference):
    from ui.app import Explorer, build_app
    from ui.explorer import PUBLIC_DELETE_CACHE
    assert build_app(Explorer(reference, public=True)).delete_cache == PUBLIC_DELETE_CACHE
    assert build_app(Explorer(reference)).delete_cache is None


# -- 6. the cache can stop the app, or be turned against it ------------------------------------------

def test_an_unreadable_cache_is_moved_aside_at_start(server, reference):
    assert "cache.db is unreadable (file is not a database); moved it to" in server.output()
    assert any(p.name.startswith("cache.corrupt-") for p in server.root.iterdir())
    client = server.client("10.6.0.1")
    answers_correctly(client, reference, "What is 5 plus 1?")
    assert client.predict("rules: []", "What is 5 plus 1?", 8, api_name="/answer")["cached"] is True


def test_cache_rows_cannot_pickle_or_reach_outside(tmp_path):
    store = AnswerCache(tmp_path / "cache")
    store.put({"q": 1}, {"answer": "one"})
    marker, victim = tmp_path / "pickle-ran", tmp_path / "victim.txt"
    victim.write_text("not the cache's")

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    db = sqlite3.connect(store.directory / "cache.db")
    insert = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
              "filename, value) VALUES (?, ?, ?, NULL, 0, 0, NULL, 0, ?, ?, ?)")
    db.execute(insert, (sqlite3.Binary(pickle.dumps(Payload())), 0, 2e9, 1, None, sqlite3.Binary(b"x")))
    db.execute(insert, ("k-pickle", 1, 2e9, 4, None, sqlite3.Binary(pickle.dumps(Payload()))))
    db.execute(insert, ("k-outside", 1, 2e9, 2, "../victim.txt", None))
    db.commit()
    db.close()
    assert [e["result"] for e in store.entries()] == [{"answer": "one"}]
    assert store.get({"q": 1}) == {"answer": "one"}
    store.clear()
    assert not marker.exists() and victim.read_text() == "not the cache's"


def test_a_cache_that_breaks_while_serving_still_answers(server, reference):
    """Last in the module: the cache's pages are overwritten under the running server."""
    client = server.client("10.6.0.2")
    client.predict("rules: []", "What is 6 plus 1?", 8, api_name="/answer")
    db = sqlite3.connect(server.cache_dir / "cache.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = server.cache_dir / "cache.db"
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * (path.stat().st_size - 4096))
    result = client.predict("rules: []", "What is 6 plus 2?", 8, api_name="/answer")
    assert result["answer"] == expected(reference, "What is 6 plus 2?") and result["cached"] is False
    assert "cache: could not store an answer (database disk image is malformed)" in server.output()
    answers_correctly(server.client("10.6.0.3"), reference, "What is 6 plus 3?")


# -- 8. not public by default where it is public ------------------------------------------------------

def test_open_hosts_need_public_or_an_explicit_opt_out():
    from app import check_exposure, parse_args
    from merging.errors import MergescopeError
    with pytest.raises(MergescopeError, match="add --public .* or --i-know-this-is-open"):
        check_exposure(parse_args(["--host", "0.0.0.0"]))
    for ok in (["--host", "0.0.0.0", "--public"], ["--host", "0.0.0.0", "--i-know-this-is-open"],
               ["--host", "127.0.0.1"], ["--host", "::1"], ["--host", "localhost"]):
        check_exposure(parse_args(ok))


def test_a_busy_port_is_one_line_before_loading(server):
    run = subprocess.run([sys.executable, "app.py", "--port", str(server.port)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{server.port}")
    assert "needs about" not in run.stdout + run.stderr  # refused before the model was loaded


def test_the_image_is_public_unless_opted_out():
    cmd = json.loads((REPO / "Dockerfile").read_text().split("\nCMD", 1)[1].strip())[-1]
    for value, flag in (("", "--public"), ("1", "--public"), ("0", "--i-know-this-is-open")):
        env = {"PATH": os.environ["PATH"]} | ({"MERGESCOPE_PUBLIC": value} if value else {})
        line = subprocess.run(["sh", "-c", cmd.replace("python app.py", "echo")], env=env, capture_output=True,
                              text=True, check=True).stdout
        assert line.split()[-1] == flag
