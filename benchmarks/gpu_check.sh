#!/usr/bin/env bash
# One command for a CUDA machine: the engine on a Qwen2.5-VL-7B-shaped random pair (real 7B text
# configuration, bf16) generated in a temporary folder, plus generation throughput and switch.py on
# CUDA. Prints ONE JSON object (logs on stderr). Installs nothing beyond requirements.txt; writes
# nothing outside the temporary folder (removed on exit). Disk: ~31 GB free under $TMPDIR (or /tmp).
# Without CUDA it says so (JSON with "cuda": false) and exits 0.
#
#   bash benchmarks/gpu_check.sh            (from the repository root, after pip install -r requirements.txt)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo '{"cuda": false, "reason": "no CUDA device here (torch.cuda.is_available() is False): nothing measured"}'
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mergescope-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export TMPDIR="$WORK"  # switch.py and anything else that makes temporary files stays in here

"$PY" -m benchmarks.gpu_check --work "$WORK" --switch-script "$HERE/switch.py"
