#!/usr/bin/env bash
# Train two tiny-preset variants side by side on one GPU (used for the shipped checkpoint;
# the same `kolmotok train` command runs on CPU, only slower). Usage: gpu_train.sh OUTDIR STEPS SECONDS
set -u
out=${1:-runs/gpu}; steps=${2:-4000}; secs=${3:-190}
mkdir -p "$out"
common=(--preset tiny --steps "$steps" --seed 0 --device cuda --data-workers 3 --no-progress
        --set train.checkpoint_every=500 --set train.eval_every=500)
timeout "$secs" python3 -m kolmotok train --out "$out/a" "${common[@]}" > "$out/a.log" 2>&1 &
timeout "$secs" python3 -m kolmotok train --out "$out/b" "${common[@]}" --set optim.lr=0.0005 --set objective.halting_weight=0.5 > "$out/b.log" 2>&1 &
wait
for r in a b; do
  tail -3 "$out/$r.log"
  python3 -m kolmotok eval --ckpt "$out/$r" --data photos:test --device cuda --out "$out/$r/eval_test.json" &
done
wait
