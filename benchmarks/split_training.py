"""How far a split training step lands from the one-batch step: 2 DDP processes (Gloo, CPU)
and ``--grad-accum 2``, each against one process on the same global batch, on the test config
(tests/conftest.py): the default objective, with gap targets on, and with the halting BCE off.

    python benchmarks/split_training.py

Prints the largest difference in any weight after 3 steps (processes) or 2 steps (accumulation).
The objective's random draws and the halting BCE's normaliser are made for the whole batch
(training/objective.py, ``Draws``); with gap targets on, which images get one depends on each
slice's own errors, so the BCE is normalised per slice (README, Training).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from conftest import small_config  # noqa: E402
from kolmotok.cli import report_errors  # noqa: E402
from kolmotok.training import train  # noqa: E402

COMMON = ["train.data=shapes", "train.eval_every=0", "train.threads=1", "train.device=cpu"]
CASES = {"default objective": [],
         "gap targets on (0.5)": ["objective.gap_target_prob=0.5"],
         "gap targets, BCE off": ["objective.gap_target_prob=0.5", "objective.halting_weight=0"]}


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def processes(tmp: Path, extra: list[str]) -> float:
    """1 vs 2 processes, 3 steps, global batch 8 (tests/ddp_worker.py saves each rank's weights)."""
    settings = ["train.steps=3", "train.batch_size=8", *COMMON, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for nproc in (1, 2):
        out = tmp / f"ddp{nproc}"
        out.mkdir()
        launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        subprocess.run([sys.executable, *launcher, str(TESTS / "ddp_worker.py"), str(out), *settings],
                       env=env, check=True, capture_output=True)
        runs[nproc] = load_file(str(out / "rank0.safetensors"))
    return max_difference(runs[1], runs[2])


def accumulation(tmp: Path, extra: list[str]) -> float:
    """One batch vs 2 micro-batches, 2 steps."""
    weights = []
    for accum in (1, 2):
        cfg = small_config("train.steps=2", *COMMON, *extra, f"train.grad_accum={accum}")
        weights.append(load_file(str(train(cfg, tmp / f"accum{accum}", progress=False) / "model.safetensors")))
    return max_difference(*weights)


def main() -> None:
    print("largest weight difference from one process on one batch")
    for label, extra in CASES.items():
        with tempfile.TemporaryDirectory() as t:
            p, a = processes(Path(t), extra), accumulation(Path(t), extra)
        print(f"  {label:26s} 2 processes (3 steps): {p:.2e}   grad_accum 2 (2 steps): {a:.2e}")


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
