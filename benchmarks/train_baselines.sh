#!/usr/bin/env bash
# Train the baselines of `kolmotok bench` with the shipped KARL checkpoint's stage-2 recipe:
# each starts from the same stage-1 weights (benchmarks/checkpoints/tiny-stage1) and trains the
# same number of steps on the same data, with its own objective (preset tiny-<method>).
# STEPS (default 1000, stage 2 of the shipped model); STEPS=4000 matches all of the shipped
# model's fine-tuning after stage 1 (stages 2-4, weights/tiny/MODEL_CARD.md) and takes four
# times as long (~30-75 min per baseline on 2 CPU cores).
# One command per baseline; usage: [STEPS=N] benchmarks/train_baselines.sh [OUTROOT] [METHOD...]
set -euo pipefail
root=${1:-runs/baselines}; shift || true
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(prefix recurrent fixed4 fixed8 fixed16 fixed32)
for m in "${methods[@]}"; do
  kolmotok train --preset "tiny-$m" --init-from benchmarks/checkpoints/tiny-stage1 --steps "${STEPS:-1000}" --seed 1 \
    --out "$root/$m" --set optim.warmup_steps=100 --set train.eval_every=250 --no-progress --resume
done
