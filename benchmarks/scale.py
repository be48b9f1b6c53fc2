"""Training and tokenize throughput for 1 and N processes (torchrun), side by side in one run.

    python benchmarks/scale.py [--procs 1,2] [--steps 30] [--images 512] [--device cpu]
    python benchmarks/scale.py --device cuda --procs 1 --preset small --precision fp32,bf16   # one GPU

Training: `torchrun --nproc_per_node N -m kolmotok train` for --steps steps; images/s is
the median of the per-step rate in metrics.jsonl after the first 5 steps (global batch).
Tokenize: `torchrun ... -m kolmotok tokenize` on a folder of --images PNG crops of photos:test;
images/s = images / wall time of the whole command (start-up included) and the mean of
the per-rank rates it prints. With several CPU processes each gets cores / N threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kolmotok.cli import report_errors
from kolmotok.data import eval_set
from kolmotok.data.images import save_image


def torchrun(nproc: int, args: list[str], threads: int) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "kolmotok", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


WARMUP_STEPS = 5  # steps left out of the training rate (allocation, caches)


def train_rate(root: Path, nproc: int, a, precision: str) -> float:
    out = root / f"train-{a.preset}-{nproc}-{precision}"
    torchrun(nproc, ["train", "--preset", a.preset, "--out", str(out), "--steps", str(a.steps), "--no-progress",
                     "--device", a.device, "--precision", precision, "--batch-size", str(a.batch),
                     "--set", "train.eval_every=0", "--set", f"train.checkpoint_every={a.steps}",
                     "--set", "train.pca_init_images=256"], a.threads // nproc or 1)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[WARMUP_STEPS:])


def tokenize_rate(root: Path, folder: Path, nproc: int, a) -> tuple[float, float]:
    out = root / f"tokens-{nproc}"
    wall, stdout = torchrun(nproc, ["tokenize", "--data", f"folder:{folder}", "--out", str(out), "--epsilon", "0.05",
                                    "--shard-size", "128", "--device", a.device, "--no-progress"],
                            a.threads // nproc or 1)
    per_rank = [float(x) for x in re.findall(r"([\d.]+) images/s", stdout)]
    return a.images / wall, sum(per_rank)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=30, help=f"training steps (at least {WARMUP_STEPS + 1}: "
                    f"the first {WARMUP_STEPS} are not timed)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, fp16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    ap.add_argument("--skip-tokenize", action="store_true")
    a = ap.parse_args()
    if a.steps <= WARMUP_STEPS:
        ap.error(f"--steps must be at least {WARMUP_STEPS + 1} (the first {WARMUP_STEPS} steps are not timed)")
    procs = [int(p) for p in a.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"preset {a.preset}, device {a.device}, {a.threads} CPU threads, global batch {a.batch}")
        print("\nprocesses | precision | train images/s")
        for precision in a.precision.split(","):
            for n in procs:
                print(f"{n:9d} | {precision:9s} | {train_rate(root, n, a, precision):14.1f}", flush=True)
        if a.skip_tokenize:
            return
        folder = root / "images"
        for i, img in enumerate(eval_set("photos:test", 64, a.images).images):
            save_image(img, folder / f"{i:05d}.png")
        print(f"\nprocesses | tokenize images/s (wall, {a.images} PNGs, start-up included) | sum of per-rank rates")
        for n in procs:
            wall_rate, rank_rate = tokenize_rate(root, folder, n, a)
            print(f"{n:9d} | {wall_rate:54.1f} | {rank_rate:21.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
