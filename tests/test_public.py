"""Public mode: each limit answers with a clear message (a real server, real clients)."""

import socket

import pytest
import requests
from gradio_client import Client

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.run.generate import GenerationSettings
from merging.run.answerer import Answerer
from ui.app import Explorer, build_app
from ui.explorer import PUBLIC_MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def public_server(qwen_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    explorer = Explorer(Answerer(MergeEngine(load_pair(*qwen_dirs)), AnswerCache(root / "cache")),
                        export_dir=root / "exports", public=True, rate_limit=3, proxy_hops=1)
    app = build_app(explorer).queue(default_concurrency_limit=1, max_size=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=False,
               max_file_size="1mb")
    yield f"http://127.0.0.1:{port}", explorer, app
    app.close()


def test_public_mode_turns_export_off_and_fixes_the_eval_set(public_server):
    _, explorer, app = public_server
    assert explorer.export_dir is None
    eval_box = next(c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "eval-set")
    assert eval_box["props"]["interactive"] is False


def test_rate_limit_and_question_limit_messages(public_server):
    url, _, _ = public_server
    client = Client(url, headers={"X-Forwarded-For": "192.0.2.1"}, verbose=False)
    with pytest.raises(Exception, match="the limit is 2000"):
        client.predict("rules: []", "x" * 2001, 4, api_name="/answer")
    for _ in range(2):  # the first call above counted too: 3 per minute in all
        assert client.predict("rules: []", "Hello?", 4, api_name="/answer")["answer"] is not None
    with pytest.raises(Exception, match="rate limit: at most 3 model requests"):
        client.predict("rules: []", "Hello?", 4, api_name="/answer")
    same = Client(url, headers={"X-Forwarded-For": "192.0.2.1"}, verbose=False)  # a new session, same address
    with pytest.raises(Exception, match="rate limit: at most 3 model requests"):
        same.predict("rules: []", "Hello?", 4, api_name="/answer")
    other = Client(url, headers={"X-Forwarded-For": "192.0.2.2"}, verbose=False)  # another address: its own
    assert other.predict("rules: []", "Hello again?", 4, api_name="/answer")["cached"] is False


def test_answers_are_capped(public_server):
    url, explorer, _ = public_server
    result = Client(url, verbose=False).predict("rules: []", "Count to a hundred.", 500, api_name="/answer")
    capped = Answerer(explorer.engine).ask(MergePlan(), "Count to a hundred.", None,
                                           GenerationSettings(max_new_tokens=PUBLIC_MAX_NEW_TOKENS))
    assert result["answer"] == capped["answer"]


def test_uploads_above_the_size_limit_are_refused(public_server):
    url, _, _ = public_server
    response = requests.post(f"{url}/gradio_api/upload", files={"files": ("big.png", b"\0" * 2_000_000)})
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text
