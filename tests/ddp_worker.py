"""Run by test_distributed.py under torchrun: train a few steps, save this rank's parameters."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import small_config  # noqa: E402
from kolmotok.training import train  # noqa: E402

out, *overrides = sys.argv[1:]


def dump(step, model):
    if step == model_steps:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(out) / f"rank{rank}.safetensors"))


cfg = small_config(*overrides)
model_steps = cfg.train.steps
train(cfg, Path(out) / "run", progress=False, on_step_end=dump)
