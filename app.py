"""Mergescope: python app.py [--vlm V --llm L ...] — the explorer in a browser, on 127.0.0.1 by default."""

from __future__ import annotations

try:  # on a ZeroGPU Space: imported before torch, as the package asks, so it can patch CUDA in time
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from merging.errors import MergescopeError
from merging.run.stack import add_model_args
from ui.app import build_app
from ui.explorer import build_explorer
from ui.guard import start_janitor, upload_folder

PUBLIC_MAX_UPLOAD = "5mb"
PUBLIC_QUEUE = 32  # requests waiting beyond this are turned away at once instead of piling up
PUBLIC_UPLOAD_FOLDER_BYTES = 512 * 2**20  # the janitor keeps Gradio's upload folder below this
PUBLIC_UPLOAD_AGE_S = 1800


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    parser.add_argument("--eval-set", help="examples and sweep items: PATH.jsonl, mathvista:PATH, mathvision:PATH")
    parser.add_argument("--cache-dir", default="runs/cache", help="answers cache (JSON values)")
    parser.add_argument("--search-dir", default="runs/search", help="the Search tab's studies (one folder each)")
    parser.add_argument("--export-dir", default="runs/exports", help="where exports may be written ('' = off)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--public", action="store_true",
                        help="public demo: fixed pair and eval set, capped answers and sweeps, export off, "
                             "5 MB uploads, a per-address rate limit")
    parser.add_argument("--i-know-this-is-open", action="store_true",
                        help="serve a non-loopback --host without --public (no limits: anyone who reaches it can "
                             "load the server, write exports and read every visitor's history)")
    parser.add_argument("--rate-limit", type=int, default=12, help="public: model requests per minute per address")
    parser.add_argument("--global-rate-limit", type=int, default=120, help="public: model requests per minute in all")
    parser.add_argument("--proxy-hops", type=int, default=int(os.environ.get("MERGESCOPE_PROXY_HOPS", 0)),
                        help="trusted reverse proxies in front (1 on Spaces): the client address is the "
                             "X-Forwarded-For entry the outermost one appended (default 0: the peer address)")
    return parser.parse_args(argv)


def space_argv(argv: list[str], environ: dict[str, str]) -> list[str]:
    """The options on a Gradio-SDK Space, which starts `python app.py` with none (SPACE_ID set): those the
    Docker image's CMD passes — all interfaces, public mode, export off, the Spaces proxy — with the pair
    from MERGESCOPE_VLM / MERGESCOPE_LLM / MERGESCOPE_BASE, and on ZeroGPU (SPACES_ZERO_GPU) device cuda
    in bfloat16 unless MERGESCOPE_DEVICE / MERGESCOPE_DTYPE say otherwise. Elsewhere, or with options
    given: `argv` as it is."""
    if argv or not environ.get("SPACE_ID"):
        return argv
    zero = environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    out = ["--host", "0.0.0.0", "--port", environ.get("GRADIO_SERVER_PORT", "7860"), "--public",
           "--proxy-hops", environ.get("MERGESCOPE_PROXY_HOPS", "1"), "--export-dir", "",
           "--device", environ.get("MERGESCOPE_DEVICE", "cuda" if zero else "cpu"),
           "--dtype", environ.get("MERGESCOPE_DTYPE", "bfloat16" if zero else "auto")]
    for name in ("vlm", "llm", "base"):
        if environ.get(f"MERGESCOPE_{name.upper()}"):
            out += [f"--{name}", environ[f"MERGESCOPE_{name.upper()}"]]
    return out


def check_port(host: str, port: int) -> None:
    """Raises MergescopeError (one line) if `host:port` cannot be listened on now (busy, or not ours)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
            probe.bind((host, port))
    except OSError as exc:
        raise MergescopeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port "
                              f"(or GRADIO_SERVER_PORT), or stop what uses it") from None


def check_exposure(args: argparse.Namespace) -> None:
    """Refuse to serve a non-loopback host without --public unless told --i-know-this-is-open.

    Raises MergescopeError (one line that says what to add)."""
    if not is_loopback(args.host) and not args.public and not args.i_know_this_is_open:
        raise MergescopeError(f"--host {args.host} is reachable from other machines: add --public (limits for a "
                              f"public demo) or --i-know-this-is-open (no limits), or use --host 127.0.0.1")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(space_argv(sys.argv[1:] if argv is None else argv, dict(os.environ)))
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # warnings: one line each
    try:
        check_exposure(args)
        check_port(args.host, args.port)  # before minutes of model loading, not after
        explorer = build_explorer(args, export_dir=Path(args.export_dir) if args.export_dir else None,
                                  public=args.public, rate_limit=args.rate_limit,
                                  global_rate_limit=args.global_rate_limit, proxy_hops=args.proxy_hops,
                                  search_dir=Path(args.search_dir))
    except MergescopeError as exc:
        sys.exit(f"error: {exc}")
    if args.public:
        start_janitor(upload_folder(), PUBLIC_UPLOAD_FOLDER_BYTES, PUBLIC_UPLOAD_AGE_S)
    app = build_app(explorer).queue(default_concurrency_limit=1, max_size=PUBLIC_QUEUE if args.public else None)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                   max_file_size=PUBLIC_MAX_UPLOAD if args.public else None)
    except OSError:  # Gradio's "Cannot find empty port", or an address this machine does not have
        sys.exit(f"error: cannot listen on {args.host}:{args.port} (busy, or not an address of this machine): "
                 f"pick another --port (or GRADIO_SERVER_PORT), or stop what uses it")


if __name__ == "__main__":
    main()
