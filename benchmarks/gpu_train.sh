#!/usr/bin/env bash
# Stage 1 of the shipped tiny checkpoint on one GPU (DEVICE=cpu runs the same command on the
# CPU, only slower): train for at most SECONDS, then evaluate on photos:test.
# Usage: [DEVICE=cuda] gpu_train.sh [OUTDIR] [STEPS] [SECONDS]
# The shipped stage 1 came from an earlier version of this script, which ran two copies of this
# run side by side on one H100 (the second one's overrides had become the preset defaults, so
# both had the same recipe); see src/kolmotok/weights/tiny/MODEL_CARD.md.
set -u
out=${1:-runs/gpu}; steps=${2:-4000}; secs=${3:-190}; device=${DEVICE:-cuda}
mkdir -p "$out"
timeout "$secs" python3 -m kolmotok train --out "$out/a" --preset tiny --steps "$steps" --seed 0 --device "$device" \
  --data-workers 3 --no-progress --set train.checkpoint_every=500 --set train.eval_every=500 > "$out/a.log" 2>&1
tail -3 "$out/a.log"
python3 -m kolmotok eval --ckpt "$out/a" --data photos:test --device "$device" --out "$out/a/eval_test.json"
