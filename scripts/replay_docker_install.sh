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
  if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then served=1; break; fi
  sleep 2
done
[ "${served:-0}" = 1 ] || { cat "$work/log"; exit 1; }
echo "replay: the app serves on $port"
# the first example a visitor clicks, then Compare, as the app builds its explorer on the same cache:
# both answers must come from the warmed cache
"$venv/bin/python" - "$work/runs/cache" <<'PY'
import sys
import app
from ui.compare_tab import on_compare, start_panel
from ui.examples import teaching_order
from ui.explorer import build_explorer
explorer = build_explorer(app.parse_args(["--public", "--cache-dir", sys.argv[1]]), public=True)
first = teaching_order(explorer.eval_items)[0][0]
entries = explorer.answerer.cache.stats()["entries"]
updates = list(on_compare(explorer, None, str(first.image_path), first.question, False,
                          explorer.answer_settings.max_new_tokens, "", explorer.answerer.default_donor,
                          start_panel(explorer)))
metas = [m for m in [u for u in updates if u[0] == "Answering…"][-1][4:7] if m]
assert len(metas) == 2 and all("cached ✓" in m for m in metas), metas
assert explorer.answerer.cache.stats()["entries"] == entries
print(f"replay ok: the first example's Compare came from the warmed cache ({entries} entries)")
PY
