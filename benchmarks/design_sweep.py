"""Design sweep: train candidate tiny-preset designs side by side and record learning curves.

Runs every candidate as its own ``kolmotok train`` process (in parallel, one device),
first for a short probe to measure speed, then all for the same number of steps that
fits the time budget. Then evaluates each on photos:test and shapes.

    python benchmarks/design_sweep.py --out runs/sweep --minutes 7.5 [--device cuda]

The curves it logged are summarised in docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from kolmotok.cli import report_errors

# the tiny preset's defaults when the sweep was run (docs/DESIGN.md §1), before the PCA linear
# path and the later objective changes; every candidate starts from these
SWEEP_BASE = ["model.linear_path=false", "model.quantizer=fsq", "model.token_dim=16", "optim.lr=0.002",
              "optim.warmup_steps=300", "objective.halting_weight=0.1", "objective.shorter_prefix_tolerance=-1"]

CANDIDATES = {
    # the naive design of the planning prototype: linear patchify, patch 8, linear head
    "vit-p8-fsq": ["model.stem=linear", "model.patch_size=8"],
    # conv stem/head, patch 4 (the tiny preset of the time)
    "conv-p4-fsq": [],
    # same, continuous 16-d tokens instead of FSQ codes
    "conv-p4-cont": ["model.quantizer=continuous", "model.token_dim=16"],
    # same as conv-p4-fsq with a wider transformer and a deeper decoder
    "conv-p4-fsq-wide": ["model.width=192", "model.decoder_layers=8", "model.num_heads=6"],
}


def launch(name: str, out: Path, steps: int, device: str, workers: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kolmotok", "train", "--preset", "tiny", "--out", str(out / name),
           "--steps", str(steps), "--device", device, "--data-workers", str(workers), "--no-progress",
           "--set", f"train.eval_every={max(steps // 12, 50)}", "--set", f"train.checkpoint_every={steps}"]
    for s in SWEEP_BASE + CANDIDATES[name] + extra:
        cmd += ["--set", s]
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def run_all(out: Path, steps: int, device: str, workers: int, extra: list[str]) -> float:
    t0 = time.time()
    procs = {n: launch(n, out, steps, device, workers, extra) for n in CANDIDATES}
    for n, p in procs.items():
        if p.wait() != 0:
            print(f"{n} failed; see {out / (n + '.log')}", file=sys.stderr)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=7.5, help="wall-clock budget for the main runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--probe-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, help="skip the probe and train this many steps")
    ap.add_argument("--set", action="append", default=[], help="extra override for every candidate")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = args.steps
    if steps is None:
        probe = args.out / "probe"
        probe.mkdir(exist_ok=True)
        run_all(probe, args.probe_steps, args.device, args.workers, args.set)
        rates = []
        for n in CANDIDATES:
            rows = [json.loads(line) for line in (probe / n / "metrics.jsonl").read_text().splitlines()]
            a, b = rows[len(rows) // 3], rows[-2]
            rates.append((b["step"] - a["step"]) / (b["time"] - a["time"]))
        steps = int(min(rates) * args.minutes * 60 * 0.9) // 500 * 500
        print(f"probe: steps/s per candidate {dict(zip(CANDIDATES, [round(r, 1) for r in rates]))}; "
              f"training {steps} steps each", flush=True)
    wall = run_all(args.out, steps, args.device, args.workers, args.set)
    print(f"main runs: {wall:.0f} s for {steps} steps", flush=True)
    device = args.device if args.device != "auto" else "cpu"
    evals = {}
    for n in CANDIDATES:  # evaluations run in parallel too
        for data in ("photos:test", "shapes"):
            tag = data.replace(":", "_")
            evals[(n, data)] = subprocess.Popen(
                [sys.executable, "-m", "kolmotok", "eval", "--ckpt", str(args.out / n), "--data", data,
                 "--device", device, "--out", str(args.out / n / f"eval_{tag}.json")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for (n, data), p in evals.items():
        out, err = p.communicate()
        print(f"==== {n} on {data}\n{out}{err[-2000:] if p.returncode else ''}", flush=True)

if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
