"""Shared by the benchmarks that run `app.py` in a subprocess: a free loopback port, and waiting until it serves."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import requests


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
