"""Checkpoints: a directory with ``model.safetensors`` + ``config.json`` (+ ``train_state.pt``).

``config.json`` holds plain JSON (the model config, the resolved run config, the step),
so a checkpoint loads without any training code. Training checkpoints live in
``RUN/checkpoints/step_NNNNNNN``; each appears by one atomic directory rename, so a
directory that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict
from .io import write_json
from .models import KARLTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
STEP_PREFIX = "step_"


def save_checkpoint(directory: Path, model: torch.nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint to ``directory`` atomically (tmp dir + rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = model.own_state_dict() if hasattr(model, "own_state_dict") else model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(state, str(tmp / WEIGHTS))
    write_json(tmp / CONFIG, meta)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    if directory.exists():
        old = directory.parent / f".old-{directory.name}-{os.getpid()}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:
        os.rename(tmp, directory)
    return directory


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete training checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
                  and (p / WEIGHTS).is_file() and (p / CONFIG).is_file())


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete temporary directories a killed run left behind (never complete checkpoints)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if (path / WEIGHTS).is_file() and (path / CONFIG).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise FileNotFoundError(f"{path}: neither a checkpoint ({WEIGHTS} + {CONFIG}) nor a run directory with checkpoints")


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / CONFIG).read_text())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[KARLTokenizer, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` (no pickles)."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    model = KARLTokenizer(from_dict(ModelConfig, meta["model"], where=f"{ckpt / CONFIG}:model"))
    model.load_own_state_dict(load_file(str(ckpt / WEIGHTS)))
    return model.to(device).eval(), meta
