#!/usr/bin/env bash
# Test-only extras, for tests/test_mergekit_parity.py: mergekit, the reference merge tool.
# mergekit 0.1.5 accepts our torch 2.14.1 / transformers 5.23 (it asks for transformers>=5,<6), but its
# package metadata also pulls datasets, sentencepiece and protobuf, which merging from Python
# (mergekit.merge.run_merge, no tokenizer copy) never imports. So: mergekit and the two packages it
# does import (peft at module level, immutables), without dependency resolution — nothing already
# installed is upgraded or downgraded.
set -euo pipefail
python -m pip install --quiet --disable-pip-version-check --no-deps \
    mergekit==0.1.5 peft==0.21.2 immutables==0.21
python -c "import mergekit.merge, mergekit.config" # fails loudly if an import is missing
