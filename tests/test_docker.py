"""The Spaces image follows the Docker-SDK conventions (Docker itself cannot run here)."""

import json
import re
from pathlib import Path

import yaml

from app import parse_args

REPO = Path(__file__).resolve().parents[1]


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_runs_as_uid_1000_on_port_7860_bound_to_all_interfaces():
    text = dockerfile()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert re.search(r"useradd[^\n]*--uid 1000 user", text)
    user_at = text.index("\nUSER user")
    assert user_at < text.index("\nCMD")  # the app never runs as root
    assert "EXPOSE 7860" in text and "GRADIO_SERVER_PORT=7860" in text
    assert "GRADIO_SERVER_NAME=0.0.0.0" in text
    assert "pip install --no-cache-dir --user -r requirements.txt" in text
    cmd = json.loads(text[text.index("\nCMD") + 4:].strip())[-1]  # exec form: ["sh", "-c", "..."]
    assert "python app.py" in cmd and '--host "$GRADIO_SERVER_NAME"' in cmd and "--export-dir ''" in cmd


def test_space_front_matter():
    readme = (REPO / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["sdk"] == "docker" and front["app_port"] == 7860


def test_binds_localhost_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert parse_args([]).host == "0.0.0.0"
    assert parse_args(["--host", "127.0.0.2"]).host == "127.0.0.2"


def test_the_image_warms_the_cache_the_app_reads():
    """The build runs the warm-up (ui/warm.py) as the app's user after the code is copied, into the cache
    folder CMD serves from, with CMD's default pair, dtype and device (what the cache keys hold)."""
    text = dockerfile()
    warm = next(line for line in text.splitlines() if line.startswith("RUN python -m ui.warm"))
    assert text.index("\nUSER user") < text.index("\nCOPY --chown=user . .") < text.index(warm)
    assert "--examples" in warm and "--lessons" in warm and "--device cpu" in warm and "--dtype auto" in warm
    cmd = json.loads(text[text.index("\nCMD") + 4:].strip())[-1]
    cache_dir = warm.split("--cache-dir ")[1].split()[0]
    assert f"--cache-dir {cache_dir}" in cmd
    assert '--device "${MERGESCOPE_DEVICE:-cpu}"' in cmd and '--dtype "${MERGESCOPE_DTYPE:-auto}"' in cmd
