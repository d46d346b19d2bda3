#!/usr/bin/env bash
# Docker cannot run on the development machines: replay the Dockerfile's install steps in a fresh venv
# instead (same Python, same requirements.txt, same start command), and check the app answers on 7860's
# stand-in port. Usage: bash scripts/replay_docker_install.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/mergescope-docker-venv}
rm -rf "$venv"
python3.11 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir -r requirements.txt
work=$(mktemp -d)
cp -r app.py merging cache ui assets requirements.txt "$work"/
port=7899
cd "$work"
# the Dockerfile's build-time warm-up, into the cache the app then serves from
"$venv/bin/python" -m ui.warm --examples --lessons --dtype auto --device cpu --cache-dir "$work/runs/cache"
GRADIO_SERVER_NAME=127.0.0.1 "$venv/bin/python" app.py --port $port --export-dir '' \
  --cache-dir "$work/runs/cache" >"$work/log" 2>&1 &
app=$!
trap 'kill $app 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then echo "replay ok: the app serves on $port"; exit 0; fi
  sleep 2
done
cat "$work/log"; exit 1
