#!/usr/bin/env bash
# The GPU check of issue 15, in one command, under 8 minutes on a datacentre GPU:
#   (a) the tests marked gpu (tests/test_gpu.py) and the CPU-side device tests;
#   (b) the quickstart on the device, timed (a random MiniLM-shaped source with the real tokenizer);
#   (c) the paper shape (IB-BERT_LARGE + MobileBERT, seq 128, bf16): a progressive step at layer 24 and a
#       pre-training-distillation step, growing the batch until memory runs out; then the best progressive batch
#       with a fused AdamW and with torch.compile;
#   (d) benchmarks/results/gpu.md (and $OUT/gpu.md), and a summary table printed last.
# Logs go to $OUT (flat, at most 8 files); each part is bounded by `timeout`, so one hang costs only its share.
#
# Prepare here (network): bash benchmarks/training/gpu_wheels.sh    -> .whl/ and .gpu_data/ (both git-ignored)
# Run there (the device tool): carry [".whl", ".gpu_data"], timeout_s 560, command:
#   bash benchmarks/training/gpu_check.sh
# Parts are bounded at 160 + 80 + 90 + 35 + 80 s (about 7.5 min with start-up); typical total 4-5 min.
# Without a GPU (or with --cpu) every part runs on the CPU at tiny sizes: a rehearsal of the script.
# PARTS=bc bash benchmarks/training/gpu_check.sh runs only parts b and c (default: abc; d, the report, always runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
CPU=0; [ "${1:-}" = "--cpu" ] && CPU=1
export OUT=${OUT:-$REPO/.gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import pydantic, torch_pruning, pytorch_optimizer" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$REPO || { echo "wheel install failed"; exit 1; }
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 SLIMBERT_SHARED_DATA=$REPO/.gpu_data SLIMBERT_TOKENIZER=$REPO/.gpu_data/minilm-tokenizer
[ -f "$SLIMBERT_SHARED_DATA/wikitext-2-raw/wiki.test.raw" ] || { echo "no .gpu_data: run benchmarks/training/gpu_wheels.sh"; exit 1; }
if [ $CPU = 0 ] && python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
else
  DEVICE=cpu; CPU=1
fi
WORK=$(mktemp -d /tmp/gpu-check.XXXX)
T0=$(date +%s)
part() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
want() { [[ "${PARTS:-abc}" == *$1* ]]; }

part "environment"
{
  date -u; uname -m; nproc
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

if want a; then
part "(a) tests"
timeout -k 5 "$([ $CPU = 1 ] && echo 600 || echo 160)" python3 -m pytest -q -p no:cacheprovider \
  tests/test_gpu.py tests/test_device.py -m "gpu or not e2e" -rs > "$OUT/tests.log" 2>&1
echo "exit $?" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
fi

if want b; then
part "(b) quickstart on $DEVICE"
{
  python3 benchmarks/training/gpu_helpers.py source "$WORK/minilm-random"
  STEPS=(); [ $CPU = 1 ] && STEPS=(--set transfer.0.steps=4 --set transfer.1.steps_per_layer=2 --set transfer.2.steps=4
    --set transfer.0.warmup_steps=1 --set transfer.1.warmup_steps=1 --set transfer.2.warmup_steps=1 --set data.max_sequences=256)
  start=$(date +%s.%N)
  timeout -k 5 "$([ $CPU = 1 ] && echo 600 || echo 80)" python3 -m slimbert.cli run quickstart \
    --set "source.model=$WORK/minilm-random" --set "data.corpus.files=[$REPO/.gpu_data/wikitext-2-raw/*.raw]" \
    "${STEPS[@]}" --device $DEVICE --out "$WORK/quickstart"
  rc=$?
  echo "quickstart wall: $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s (rc $rc)"
  tail -n 12 "$WORK/quickstart/metrics.jsonl" 2>/dev/null
} > "$OUT/quickstart.log" 2>&1
grep "quickstart wall" "$OUT/quickstart.log"
fi

if want c; then
part "(c) paper shape"
if [ $CPU = 1 ]; then SIZE=(--tiny --seq 32 --batches 2,4 --steps 2 --warmup 1)
else SIZE=(--batches 256,1024,4096,8192,16384 --steps 5 --warmup 2 --max-step-s 3); fi
{
  timeout -k 5 90 python3 benchmarks/training/gpu_paper_shape.py "${SIZE[@]}" --device $DEVICE --out "$OUT/paper.jsonl"
  BEST=$(python3 benchmarks/training/gpu_helpers.py best-batch "$OUT/paper.jsonl" progressive)
  echo "best progressive batch: $BEST"
  timeout -k 5 35 python3 benchmarks/training/gpu_paper_shape.py "${SIZE[@]}" --device $DEVICE --kinds progressive \
    --batches "$BEST" --optimizer fused --out "$OUT/paper.jsonl"
  timeout -k 5 80 python3 benchmarks/training/gpu_paper_shape.py "${SIZE[@]}" --device $DEVICE --kinds progressive \
    --batches "$BEST" --compile --out "$OUT/paper.jsonl"
} > "$OUT/paper.log" 2>&1
grep -c step_s "$OUT/paper.jsonl" 2>/dev/null | sed 's/^/paper rows: /'
fi

part "(d) report"
if [ $CPU = 1 ]; then MD=""; else MD=benchmarks/results/gpu.md; fi
python3 benchmarks/training/gpu_helpers.py report "$OUT" $MD > "$OUT/summary.txt" 2>&1
rm -rf "$WORK"
part "done"
cat "$OUT/summary.txt"
