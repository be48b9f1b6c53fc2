"""DDP on CPU (gloo): 2 processes end with identical parameters, equal to 1 process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = str(Path(__file__).parent / "ddp_worker.py")
# The objective's draws (stricter / looser targets) and KARL's halting BCE normaliser are made for the
# global batch, so they do not depend on how it is split. Gap targets are the exception: which
# images get one depends on each slice's errors, so their BCE is normalised per slice
# (benchmarks/split_training.py); their case runs with the BCE off.
SETTINGS = ["train.steps=3", "train.batch_size=8", "train.data=shapes", "train.eval_every=0",
            "train.threads=1", "train.device=cpu"]
KINDS = [["objective.looser_target_prob=0.3"],
         ["objective.gap_target_prob=0.5", "objective.halting_weight=0"],
         ["objective.kind=prefix", "objective.full_budget_prob=1.0"]]


def _run(out: Path, nproc: int, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(out), *SETTINGS, *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               WORKER, str(out), *SETTINGS, *extra]
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("kind", KINDS)
def test_two_process_ddp_matches_single_process(tmp_path, kind):
    _run(tmp_path / "one", 1, *kind)
    _run(tmp_path / "two", 2, *kind)
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    r0, r1 = (load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1))
    saved = load_file(str(tmp_path / "two" / "run" / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "replicas diverged"
    assert all(torch.equal(r0[k], saved[k]) for k in r0), "rank 0's checkpoint is not its model"
    for k in single:
        torch.testing.assert_close(r0[k], single[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
