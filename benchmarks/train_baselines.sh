#!/usr/bin/env bash
# Train the baselines of `kolmotok bench` with the shipped KARL checkpoint's recipe: each starts
# from the same stage-1 weights (benchmarks/checkpoints/tiny-stage1) and trains the same number
# of steps on the same data, with its own objective (preset tiny-<method>).
#
# STAGES lists the steps of each fine-tuning stage; stage k starts from stage k-1's weights with
# seed SEEDS[k], warm-up 100 steps and a fresh cosine schedule, as the shipped model's stages did
# (weights/tiny/MODEL_CARD.md).
#   STAGES=1000,1000,2000 (default)  its stages 2-4 (seeds 1, 3, 4), 4,000 steps: all of its training
#                                    after stage 1; 45-75 min per baseline alone on 2 CPU cores
#   STAGES=1000                      its stage 2 only (seed 1): a quick 11-19 min per baseline
# The last stage is written to OUTROOT/METHOD (what `kolmotok bench --baselines OUTROOT` reads);
# earlier stages to OUTROOT/stages/METHOD-K. Every stage resumes, so re-running after an
# interruption continues where it stopped.
# One command per baseline; usage: [STAGES=a,b,..] benchmarks/train_baselines.sh [OUTROOT] [METHOD...]
set -euo pipefail
root=${1:-runs/baselines}; shift || true
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(prefix recurrent fixed4 fixed8 fixed16 fixed32)
IFS=, read -r -a stages <<< "${STAGES:-1000,1000,2000}"
IFS=, read -r -a seeds <<< "${SEEDS:-1,3,4}"
[ ${#seeds[@]} -ge ${#stages[@]} ] || { echo "SEEDS needs one seed per stage (${#stages[@]})" >&2; exit 2; }
for m in "${methods[@]}"; do
  init=benchmarks/checkpoints/tiny-stage1
  for k in "${!stages[@]}"; do
    if [ "$k" -eq $((${#stages[@]} - 1)) ]; then out="$root/$m"; else out="$root/stages/$m-$((k + 1))"; fi
    kolmotok train --preset "tiny-$m" --init-from "$init" --steps "${stages[$k]}" --seed "${seeds[$k]}" \
      --out "$out" --set optim.warmup_steps=100 --set train.eval_every=250 --no-progress --resume
    init=$out
  done
done
