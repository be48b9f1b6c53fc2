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
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict
from .io import atomic_directory, write_json
from .models import KARLTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
STEP_PREFIX = "step_"


def require_karl(meta: dict[str, Any], what: str) -> None:
    """ValueError where a checkpoint's record says it was trained as a baseline (fixed, prefix,
    recurrent): those have no halting to calibrate, refit or bench as KARL."""
    kind = (meta.get("run") or {}).get("objective", {}).get("kind", "karl")
    if kind != "karl":
        raise ValueError(f"{what}: a {kind!r} baseline, not a KARL model (its halting was never trained); "
                         f"baselines go to `kolmotok bench --baselines DIR`")


def save_checkpoint(directory: Path, model: torch.nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint to ``directory`` atomically (tmp dir + rename)."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:  # an error or an interrupt leaves no half-written directory
        weights = model.own_state_dict() if hasattr(model, "own_state_dict") else model.state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        save_file(state, str(tmp / WEIGHTS))
        write_json(tmp / CONFIG, meta)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device: None or "auto" = CUDA if available, else the CPU. ValueError
    naming it for a name torch does not know or a device this machine does not have."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r}: not a device name (expected auto, cpu, cuda, cuda:N, mps, ...)"
                         ) from None
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.mps, torch.xpu: is_available / device_count
    if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
        raise ValueError(f"device {str(device)!r} requested but {dev.type.upper()} is not available")
    if dev.index is not None and hasattr(backend, "device_count") and dev.index >= backend.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {backend.device_count()} {dev.type} device(s)")
    return dev


DEFAULT_CHECKPOINT = "tiny"
SHIPPED_PREFIX = "shipped"  # "shipped" or "shipped:NAME" names a checkpoint inside the installed package


def _shipped_root() -> Path:
    """The folder inside the installed package that holds the shipped checkpoints."""
    return Path(str(resources.files("kolmotok") / "weights"))


def shipped_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    path = _shipped_root() / name
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from the installed package ({path})")
    return path


def shipped_name(path: str | Path | None) -> str | None:
    """NAME if ``path`` names a shipped checkpoint (None, ``shipped`` or ``shipped:NAME``, where
    no such local directory exists), else None."""
    if path is None:
        return DEFAULT_CHECKPOINT
    prefix, colon, rest = str(path).partition(":")
    if prefix != SHIPPED_PREFIX or Path(path).exists():
        return None
    return rest if colon else DEFAULT_CHECKPOINT


def checkpoint_label(path: str | Path | None) -> str:
    """One spelling per checkpoint for records (``shipped:tiny`` however it was asked for)."""
    shipped = shipped_name(path)
    return str(path) if shipped is None else f"{SHIPPED_PREFIX}:{shipped}"


def checkpoint_record(directory: str | Path | None) -> str | None:
    """How tokens record the checkpoint directory that made them, for decoding them later with the
    same weights: ``shipped:NAME`` for one shipped with the package (it moves with the install),
    else the absolute directory; None for a model not loaded from a checkpoint."""
    if directory is None:
        return None
    directory = Path(directory).resolve()
    if directory.parent == _shipped_root().resolve():
        return f"{SHIPPED_PREFIX}:{directory.name}"
    return str(directory)


def same_checkpoint(a: str | Path, b: str | Path) -> bool:
    """Whether two checkpoint names (directories, run directories, shipped[:NAME], records) are one."""
    try:
        return checkpoint_record(resolve_checkpoint(a)) == checkpoint_record(resolve_checkpoint(b))
    except (ValueError, OSError):
        return checkpoint_label(a) == checkpoint_label(b)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, a run directory (-> its latest checkpoint), or ``shipped`` /
    ``shipped:NAME`` (a checkpoint shipped inside the package, where no such directory exists)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"checkpoint path must be a directory (str or Path), got {type(path).__name__} {path!r}")
    shipped = shipped_name(path)
    if shipped is not None:
        return shipped_checkpoint(shipped)
    path = Path(path)
    if (path / WEIGHTS).is_file() and (path / CONFIG).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise FileNotFoundError(f"{path}: neither a checkpoint ({WEIGHTS} + {CONFIG}) nor a run directory with checkpoints")


def read_meta(ckpt: Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """A checkpoint's ``config.json``: a JSON object holding the ``required`` sections; ValueError
    naming the file otherwise."""
    path = Path(ckpt) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in required if key not in meta]
    if missing:
        raise ValueError(f"{path}: no {', '.join(map(repr, missing))} section; not a kolmotok checkpoint config")
    return meta


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's ``model.safetensors``; ValueError naming the file if it is not readable."""
    path = Path(ckpt) / WEIGHTS
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def _build_model(ckpt: Path, meta: dict[str, Any]) -> KARLTokenizer:
    cfg = from_dict(ModelConfig, meta["model"], where=f"{ckpt / CONFIG}:model")
    try:
        cfg.validate()
    except ValueError as exc:
        raise ValueError(f"{ckpt / CONFIG}: {exc}") from None
    return KARLTokenizer(cfg)


def _shape_mismatches(model: KARLTokenizer, state: dict[str, torch.Tensor]) -> list[str]:
    own = model.own_state_dict()
    return [f"{k} is {tuple(v.shape)}, the config needs {tuple(own[k].shape)}"
            for k, v in state.items() if k in own and v.shape != own[k].shape]


def _weights_mismatch(ckpt: Path, detail: str) -> ValueError:
    return ValueError(f"{ckpt}: the weights in {WEIGHTS} do not match its {CONFIG}: {detail}")


def _load_weights(model: KARLTokenizer, ckpt: Path) -> None:
    """``model.safetensors`` into ``model``; ValueError naming the checkpoint if the weights were
    made for another model config."""
    state = read_weights(ckpt)
    wrong = _shape_mismatches(model, state)
    if wrong:
        raise _weights_mismatch(ckpt, f"{len(wrong)} tensor(s) of another shape, first {wrong[0]}")
    try:
        model.load_own_state_dict(state)
    except ValueError as exc:
        raise _weights_mismatch(ckpt, str(exc)) from None


def load_model(path: str | Path, device: str | torch.device | None = "cpu") -> tuple[KARLTokenizer, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` (no pickles).
    ``device``: see :func:`resolve_device`. A broken checkpoint raises ValueError naming its file."""
    device = resolve_device(device)
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    model = _build_model(ckpt, meta)
    _load_weights(model, ckpt)
    return model.to(device).eval(), meta
