#!/usr/bin/env bash
# One-shot GPU check (run on a lent GPU machine from the repository root, wheels for missing packages in .whl/):
# the H100 benchmark (bf16-mixed, 12-layer ViT-B/16, eager and compiled) and end-to-end `dapt fit` + test runs on the
# GPU in bf16-mixed, eager and with --model.compile reduce-overhead. Budget: under 8 minutes.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, open_clip; print('torch', torch.__version__, 'lightning', lightning.__version__, 'open_clip', open_clip.__version__)"

echo "== benchmark (eager fast path and --model.compile reduce-overhead, i.e. compiled towers replayed from CUDA graphs)"
# Each row is printed ([bench] lines) as soon as it is measured and logged under $OUT, so a run cut short by the
# timeout still returns what it measured; a failed compile is reported in the table and the eager rows go on.
timeout 330 python3 -m benchmarks --device cuda --depth 12 --precision bf16-mixed --classes 37,1000 --repeats 5 \
  --compile reduce-overhead --profile --output BENCHMARKS.md --note "37 and 1000 classes only (device time)" \
  2>&1 | grep --line-buffered -v Warning | tee "$OUT/bench.log"
cp BENCHMARKS.md "$OUT/"

echo "== dapt fit + test on the GPU, bf16-mixed, demo config, eager then compiled (reduce-overhead)"
for mode in off reduce-overhead; do
  left=$((450 - SECONDS))  # the whole script stays under 8 minutes, whatever the benchmark took
  if [ "$left" -lt 30 ]; then echo "skipped the $mode fit: ${left}s left of the budget"; continue; fi
  timeout $((left < 100 ? left : 100)) python3 -m dapt_lightning.cli fit --config configs/demo.yaml --trainer.accelerator gpu \
    --trainer.precision bf16-mixed --trainer.max_epochs 3 --trainer.logger false --trainer.enable_progress_bar false \
    --embedding_plots.enabled false --model.compile "$mode" --run.dir "$OUT/run-$mode" --run.test_after_fit true \
    2>&1 | grep -v Warning | tail -3
  python3 -c "import json; m = json.load(open('$OUT/run-$mode/metrics.json')); print('$mode', {k: round(v, 4) for k, v in m['test'].items()})"
done
