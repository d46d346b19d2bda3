"""What keeps one visitor of a public demo from costing the others: who a request comes from, how
often it may ask, what of the history it may see, and how much upload space it may fill.

Identity is the client's network address, never anything the client picks (Gradio's `session_hash`
is chosen by the client: a new one per call skipped the old per-session limit). Behind a reverse
proxy (Hugging Face Spaces) the peer is the proxy, so the address comes from `X-Forwarded-For`: the
entry `proxy_hops` from the right, i.e. the one our own proxy appended. Entries further left were
written by the client and are not trusted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from merging.errors import MergescopeError
from merging.limits import brief

log = logging.getLogger("mergescope.guard")

MAX_TRACKED_CLIENTS = 10_000   # beyond this the longest-idle clients are forgotten first
HISTORY_PER_CLIENT = 50        # configurations one visitor's History tab shows (public mode)


def client_id(request: gr.Request | None, proxy_hops: int = 0) -> str:
    """The requesting client's address: `request.client.host`, or with `proxy_hops` ≥ 1 (behind that
    many trusted proxies) the X-Forwarded-For entry that the outermost trusted proxy appended."""
    if request is None:
        return "local"
    if proxy_hops > 0:
        forwarded = (request.headers.get("x-forwarded-for") or "") if request.headers is not None else ""
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if len(hops) >= proxy_hops:
            return hops[-proxy_hops][:64]
    client = getattr(request, "client", None)
    return (getattr(client, "host", None) or "unknown")[:64]


class RateLimiter:
    """At most `limit` model requests per `window` seconds per client, and `global_limit` in all.

    Keys are client addresses (see `client_id`). Idle clients are forgotten once their window has
    passed, and at most MAX_TRACKED_CLIENTS are tracked, so the table cannot grow without bound.
    """

    def __init__(self, limit: int, window: float = 60.0, global_limit: int | None = None,
                 max_clients: int = MAX_TRACKED_CLIENTS):
        self.limit, self.window = limit, window
        self.global_limit = global_limit if global_limit is not None else 10 * limit
        self.max_clients = max_clients
        self._calls: OrderedDict[str, deque[float]] = OrderedDict()  # least recently seen first
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._calls)

    def check(self, client: str) -> None:
        """Count one request of `client`; raises MergescopeError (one line, with the wait) when over a limit."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            while self._all and now - self._all[0] > self.window:
                self._all.popleft()
            calls = self._calls.get(client) or deque()
            while calls and now - calls[0] > self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                wait = self.window - (now - calls[0])
                raise MergescopeError(f"rate limit: at most {self.limit} model requests per {self.window:.0f} s "
                                      f"from one address ({client[:40]}); try again in {wait:.0f} s")
            if len(self._all) >= self.global_limit:
                wait = self.window - (now - self._all[0])
                raise MergescopeError(f"this demo is busy: at most {self.global_limit} model requests per "
                                      f"{self.window:.0f} s from everyone; try again in {wait:.0f} s")
            calls.append(now)
            self._all.append(now)
            self._calls[client] = calls
            self._calls.move_to_end(client)
            while len(self._calls) > self.max_clients:
                self._calls.popitem(last=False)

    def _expire(self, now: float) -> None:
        # the least recently seen come first: stop at the first client still inside its window
        while self._calls:
            client, calls = next(iter(self._calls.items()))
            if calls and now - calls[-1] <= self.window:
                break
            del self._calls[client]


class History:
    """Per client, the cache keys of the configurations it asked about (newest last, at most `per_client`).

    Public mode shows a visitor only these; the cache itself is shared (a hit serves anyone).
    In memory: a restart forgets who asked what, never the answers.
    """

    def __init__(self, per_client: int = HISTORY_PER_CLIENT, max_clients: int = MAX_TRACKED_CLIENTS):
        self.per_client, self.max_clients = per_client, max_clients
        self._keys: OrderedDict[str, deque[str]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, client: str, key: str) -> None:
        with self._lock:
            keys = self._keys.pop(client, None) or deque(maxlen=self.per_client)
            if key in keys:
                keys.remove(key)
            keys.append(key)
            self._keys[client] = keys
            while len(self._keys) > self.max_clients:
                self._keys.popitem(last=False)

    def keys(self, client: str) -> list[str]:
        """This client's keys, newest first."""
        with self._lock:
            return list(reversed(self._keys.get(client, ())))


def upload_folder() -> Path:
    """Where Gradio keeps uploads (GRADIO_TEMP_DIR, else <tmp>/gradio), as Gradio computes it."""
    return Path(get_upload_folder())


def prune_folder(folder: Path, max_bytes: int, max_age_s: float, keep_before: float) -> int:
    """Delete files in `folder` older than `max_age_s`, then the oldest until the rest fit `max_bytes`.

    Files modified before `keep_before` (the server's start: cached examples) are never deleted.
    Links are not followed. Returns how many files were deleted; errors on single files are skipped.
    """
    now = time.time()
    files: list[tuple[float, int, str]] = []
    for root, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_mtime >= keep_before:
                files.append((st.st_mtime, st.st_size, path))
    files.sort()
    total, deleted = sum(size for _, size, _ in files), 0
    for mtime, size, path in files:
        if total <= max_bytes and now - mtime <= max_age_s:
            break  # sorted oldest first: the rest are younger and fit
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        deleted += 1
    return deleted


def start_janitor(folder: Path, max_bytes: int, max_age_s: float, every_s: float = 30.0) -> threading.Thread:
    """A daemon thread that runs `prune_folder` every `every_s` seconds (uploads bypass the rate limit)."""
    started = time.time()

    def run() -> None:
        while True:
            time.sleep(every_s)
            try:
                deleted = prune_folder(folder, max_bytes, max_age_s, started)
            except OSError as exc:
                log.warning("uploads: cannot prune %s (%s)", folder, exc)
                continue
            if deleted:
                log.info("uploads: deleted %d old file(s) from %s", deleted, folder)

    thread = threading.Thread(target=run, name="upload-janitor", daemon=True)
    thread.start()
    return thread


def _keep(block: gr.components.Component, patch) -> None:
    """Apply `patch` (a function that changes a component instance) to `block`, and remember it: Gradio
    rebuilds a component per session from its constructor arguments once an event sends it an update
    (an example or lesson clicked, a box shown), and that copy must answer as the original does
    (`explain_bad_inputs` applies the remembered patches to it)."""
    patch(block)
    block._guards = (*getattr(block, "_guards", ()), patch)


def _path_only(image: gr.Image) -> None:
    def preprocess(payload) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            raise gr.Error("send the image as an upload (a file), not as a data: URL")
        if payload.path is None:
            raise gr.Error("the image upload is missing its file; upload it again")
        return str(payload.path)

    image.preprocess = preprocess


def uploaded_image(**kwargs) -> gr.Image:
    """A gr.Image that hands the handler the uploaded file's path without opening it.

    gr.Image(type="filepath") still calls PIL.Image.open in preprocessing, so a non-image or a
    declared-huge image failed there, with Gradio's generic error; here the handler gets the path and
    checks it itself (merging.io.images.read_image: header first, one-line refusals). An instance, not a
    subclass: Gradio writes a .pyi stub next to the source of every component class; its per-session
    copies get the same preprocessing (`_keep`).
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    _keep(image, _path_only)
    return image


def _explained(block: gr.components.Component) -> None:
    """`block`'s preprocessing with a one-line gr.Error for a value it cannot read; a number box's range
    is left to the handler, which refuses it in its status line (Gradio's own check is a red toast)."""
    if isinstance(block, (gr.Number, gr.Slider)):
        def original(payload, _precision=block.precision):  # float(): text is still refused here
            return None if payload is None else gr.Number.round_to_precision(float(payload), _precision)
    else:
        original = block.preprocess
    name = str(block.label or block.elem_id or type(block).__name__.lower())[:40]

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 — any reader's failure is a bad value from the client
            raise gr.Error(f"{name}: {brief(payload, 60)} is not a value this field takes "
                           f"({type(exc).__name__}); send what the page sends") from None

    block.preprocess = preprocess


def explain_bad_inputs(app: gr.Blocks) -> None:
    """Make every input component of `app` answer a value it cannot read with one line (gr.Error), in
    every session.

    Gradio turns an exception in a component's preprocessing (text where a slider's number goes,
    something a script sent that the page never would) into its generic "upstream Gradio app has
    raised an exception"; a gr.Error's message is shown instead. Only the message changes: the value
    is still refused before any handler runs. A number outside a box's range goes through to the
    handler (each checks its own, e.g. `bounded_int`), whose refusal is a line in its status, not a toast.
    """
    for block in app.blocks.values():
        if isinstance(block, gr.components.Component) and _explained not in getattr(block, "_guards", ()):
            _keep(block, _explained)
    original = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, *args, **kwargs):
        for block in block_fn.inputs if state is not None else ():
            copy = state.blocks_config.blocks.get(block._id)
            if copy is not None and copy is not block and getattr(copy, "_guards", None) is None:
                copy._guards = ()
                for patch in getattr(block, "_guards", ()):
                    _keep(copy, patch)
        return await original(block_fn, inputs, state, *args, **kwargs)

    app.preprocess_data = preprocess_data
