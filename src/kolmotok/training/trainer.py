"""The one training loop: AdamW + warm-up/cosine, gradient clipping, seeded, resumable.

Determinism and resume: the model is initialised from ``seed``; every step draws its
batch and its objective's randomness from a generator seeded by (seed, step). A run
resumed from the checkpoint at step s therefore sees exactly the data and budgets it
would have seen without the interruption.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..api import Tokenizer
from ..checkpoint import (
    TRAIN_STATE,
    list_checkpoints,
    load_model,
    prune_checkpoints,
    read_meta,
    remove_partial_checkpoints,
    save_checkpoint,
)
from ..config import RunConfig, from_dict, to_dict, validate
from ..data import eval_set, make_source
from ..evaluation.methods import method_for
from ..evaluation.metrics import l1_per_image
from ..io import write_json
from ..models import KARLTokenizer
from .objective import LossOutput, build_objective

log = logging.getLogger(__name__)

Objective = Callable[[KARLTokenizer, torch.Tensor, torch.Generator], LossOutput]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Generator for one step; stream 0 draws the batch, stream 1 the objective's randomness."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + stream)


class StepBatches(torch.utils.data.IterableDataset):
    """Batches for steps ``start..end-1``, each drawn from its own step generator.

    With W DataLoader workers, worker w makes the steps ``start + w, start + w + W, ...``
    and the loader returns them round-robin, so batches arrive in step order.
    """

    def __init__(self, source, batch_size: int, seed: int, start: int, end: int) -> None:
        self.source, self.batch_size, self.seed, self.start, self.end = source, batch_size, seed, start, end

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, num = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start + wid, self.end, num):
            yield self.source.sample(self.batch_size, step_generator(self.seed, step, 0))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    def decays(name: str, p: torch.nn.Parameter) -> bool:  # weight matrices, not embeddings/biases/norms
        return p.ndim >= 2 and "pos" not in name and "token" not in name

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, fused=device.type == "cuda")


@torch.no_grad()
def held_out_l1(model: KARLTokenizer, cfg: RunConfig, images: torch.Tensor, lengths: list[int]) -> dict[int, float]:
    """Mean l1 at each token count, decoded the way this run's method decodes (the bench's
    ``at_length``: fixed-length mode for KARL, a prefix for nested dropout, rollouts for the
    recurrent model; a fixed-N model only at N)."""
    was_training = model.training
    method = method_for(cfg.objective.kind, "monitor", Tokenizer(model), cfg.objective.fixed_length)
    out = {}
    for n in lengths:
        rec = method.at_length(images, n)
        if rec is not None:
            out[n] = float(l1_per_image(rec.recon, images).mean())
    model.train(was_training)
    return out


def init_weights(model: KARLTokenizer, path: str) -> None:
    """Fine-tuning start: load a checkpoint's weights. Its model config must match, except that a
    recurrent baseline may start from a plain model (its feedback layer keeps its zero init)."""
    start_model, meta = load_model(path, "cpu")
    theirs, ours = dict(meta["model"], recurrent_step=0), dict(to_dict(model.cfg), recurrent_step=0)
    if theirs != ours:
        raise ValueError(f"--init-from {path}: its model config differs from this run's")
    missing, unexpected = model.load_state_dict(start_model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("feedback.") for k in missing):
        raise ValueError(f"--init-from {path}: weights do not fit (missing {missing}, unexpected {unexpected})")
    log.info("initialised from %s (step %s)", path, meta.get("step"))


class MetricsLog:
    """Append-only JSONL; on resume, rows past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if json.loads(r).get("step", 0) <= resume_step]
            path.write_text("".join(r + "\n" for r in kept))
        self.file = path.open("a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, objective: Objective | None = None,
          progress: bool = True) -> Path:
    """Train ``cfg`` into ``out_dir``; returns the final checkpoint directory."""
    out_dir = Path(out_dir)
    validate(cfg)
    tc = cfg.train
    existing = list_checkpoints(out_dir)
    if existing and not resume:
        raise ValueError(f"{out_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if resume and existing:
        saved = from_dict(RunConfig, read_meta(existing[-1])["run"], where=str(existing[-1]))
        if to_dict(saved.model) != to_dict(cfg.model):
            raise ValueError(f"--resume: the model config differs from the one in {existing[-1]}")
        saved.train.steps, saved.train.device = tc.steps, tc.device  # may extend a run or move it
        cfg, tc = saved, saved.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    torch.manual_seed(tc.seed)
    model = KARLTokenizer(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.optim.warmup_steps, tc.steps, cfg.optim.min_lr_ratio))
    objective = objective or build_objective(cfg)
    start = 0
    source = make_source(tc.data, cfg.model.image_size)
    if tc.init_from and not (resume and existing):
        init_weights(model, tc.init_from)
    elif not (resume and existing):
        pca_images = source.sample(tc.pca_init_images, step_generator(tc.seed, -1, 0))
        model.init_linear_path(pca_images.to(device))
    if resume and existing:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(existing[-1] / "model.safetensors"), device=str(device)))
        state = torch.load(existing[-1] / TRAIN_STATE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        log.info("resumed %s at step %d", existing[-1], start)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(out_dir)
    write_json(out_dir / "config.json", to_dict(cfg))
    monitor = eval_set(tc.eval_data, cfg.model.image_size, tc.eval_images) if tc.eval_every else None
    metrics = MetricsLog(out_dir / "metrics.jsonl", start)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %.2fM parameters on %s, data %s", n_params / 1e6, device, source.name)

    def checkpoint(step: int) -> Path:
        meta = {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": step}
        train_state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        path = save_checkpoint(out_dir / "checkpoints" / f"step_{step:07d}", model, meta, train_state)
        prune_checkpoints(out_dir, tc.keep_checkpoints)
        return path

    model.train()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not progress, desc="train",
               dynamic_ncols=True)
    t0, last = time.time(), None
    loader = torch.utils.data.DataLoader(
        StepBatches(source, tc.batch_size, tc.seed, start, tc.steps), batch_size=None,
        num_workers=tc.data_workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if tc.data_workers else None, persistent_workers=False)
    for step, batch in zip(bar, loader):
        images = batch.to(device, non_blocking=True)
        out = objective(model, images, step_generator(tc.seed, step, 1))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        row = {"step": done, **out.metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
               "time": round(time.time() - t0, 2)}
        if monitor is not None and (done % tc.eval_every == 0 or done == tc.steps):
            T_max = cfg.model.max_tokens
            lengths = sorted({max(1, T_max // 8), T_max, cfg.objective.fixed_length} - {0})
            for T, err in held_out_l1(model, cfg, monitor.images, lengths).items():
                row[f"eval_l1_T{T}"] = err
        metrics.write(row)
        bar.set_postfix(loss=f"{out.metrics['loss']:.4f}", l1=f"{out.metrics['l1']:.4f}",
                        kept=f"{out.metrics['kept']:.1f}", refresh=False)
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            last = checkpoint(done)
    metrics.close()
    if last is None:  # nothing left to train: the latest checkpoint is the result
        last = list_checkpoints(out_dir)[-1] if list_checkpoints(out_dir) else checkpoint(start)
    log.info("done: %s", last)
    return last
