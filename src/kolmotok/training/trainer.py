"""The one training loop: AdamW + warm-up/cosine, gradient clipping, seeded, resumable.

Determinism and resume: the model is initialised from ``seed``; every step draws its
batch and its objective's randomness from a generator seeded by (seed, step). A run
resumed from the checkpoint at step s therefore sees exactly the data and budgets it
would have seen without the interruption.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..api import Tokenizer
from ..calibration import CALIBRATION_FILE
from ..checkpoint import (
    TRAIN_STATE,
    list_checkpoints,
    load_model,
    prune_checkpoints,
    read_meta,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from ..config import ModelConfig, RunConfig, from_dict, to_dict, validate
from ..data import eval_set, make_source
from ..evaluation.methods import method_for
from ..evaluation.metrics import l1_per_image
from ..io import write_json, write_text
from ..models import KARLTokenizer
from .distributed import ObjectiveModule, init_distributed, wrap
from .objective import Draws, LossOutput, build_objective

log = logging.getLogger(__name__)

Objective = Callable[[KARLTokenizer, torch.Tensor, torch.Generator], LossOutput]


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Generator for one step; stream 0 draws the batch, stream 1 the objective's randomness."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + stream)


class StepBatches(torch.utils.data.IterableDataset):
    """Batches for steps ``start..end-1``, each drawn from its own step generator.

    With W DataLoader workers, worker w makes the steps ``start + w, start + w + W, ...``
    and the loader returns them round-robin, so batches arrive in step order. Under DDP
    every rank draws the same global batch and keeps its own contiguous slice, so N
    processes see exactly the images one process would (at the cost of drawing it N times).
    """

    def __init__(self, source, batch_size: int, seed: int, start: int, end: int, rank: int = 0,
                 world: int = 1) -> None:
        self.source, self.batch_size, self.seed, self.start, self.end = source, batch_size, seed, start, end
        self.rank, self.world = rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, num = (info.id, info.num_workers) if info else (0, 1)
        local = self.batch_size // self.world
        for step in range(self.start + wid, self.end, num):
            batch = self.source.sample(self.batch_size, step_generator(self.seed, step, 0))
            yield batch[self.rank * local:(self.rank + 1) * local]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    def decays(name: str, p: torch.nn.Parameter) -> bool:  # weight matrices, not embeddings/biases/norms
        return p.ndim >= 2 and "pos" not in name and "token" not in name

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # not a frozen base autoencoder
    decay = [p for n, p in trainable if decays(n, p)]
    no_decay = [p for n, p in trainable if not decays(n, p)]
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


# model fields a fine-tune may switch on, and the weights (name prefixes) they add: the recurrent
# baseline's feedback layer, the direct eps term of the halting logits, the halting MLP
FINE_TUNE_ADDITIONS = {"recurrent_step": "feedback.", "halting_epsilon_gain": "halt_eps_gain",
                       "halting_hidden": "halt_mlp."}


def inherit_additions(cfg: RunConfig, path: str) -> RunConfig:
    """A fine-tune keeps the parts its start checkpoint has (a halting MLP, the eps term, ...):
    fields of :data:`FINE_TUNE_ADDITIONS` this run leaves off (0) take the checkpoint's value,
    so ``--init-from`` works on the shipped model or a ``fit-halting`` output as it is."""
    start = from_dict(ModelConfig, read_meta(resolve_checkpoint(path))["model"], where=f"{path}:model")
    return keep_additions(cfg, start, f"--init-from {path}")


def keep_additions(cfg: RunConfig, start: ModelConfig, why: str) -> RunConfig:
    """Fields of :data:`FINE_TUNE_ADDITIONS` that ``cfg`` leaves off (0) take ``start``'s value."""
    for field in FINE_TUNE_ADDITIONS:
        if not getattr(cfg.model, field) and getattr(start, field):
            log.info("%s: model.%s = %s, as in that checkpoint", why, field, getattr(start, field))
            setattr(cfg.model, field, getattr(start, field))
    return cfg


def init_weights(model: KARLTokenizer, path: str) -> None:
    """Fine-tuning start: load a checkpoint's weights. Its model config must match, except for
    fields that only add a freshly initialised part (:data:`FINE_TUNE_ADDITIONS`) or hold no weights."""
    start_model, meta = load_model(path, "cpu")
    # compare resolved configs: a checkpoint written before a field existed has that field's default
    ignored = {field: None for field in (*FINE_TUNE_ADDITIONS, "halting_threshold")}
    changes = dict_changes(dict(to_dict(start_model.cfg), **ignored), dict(to_dict(model.cfg), **ignored), "model")
    if changes:
        raise ValueError(f"--init-from {path}: its model config differs from this run's ({describe_changes(changes)})")
    try:
        model.load_own_state_dict(start_model.own_state_dict(), allow_missing=tuple(FINE_TUNE_ADDITIONS.values()))
    except ValueError as exc:
        raise ValueError(f"--init-from {path}: {exc}") from None
    log.info("initialised from %s (step %s)", path, meta.get("step"))


class MetricsLog:
    """Append-only JSONL; on resume, rows past the checkpoint's step are dropped (rewritten
    atomically), and so is a last line cut off by a crash mid-write."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in self._rows(path) if json.loads(line).get("step", 0) <= resume_step]
            write_text(path, "".join(r + "\n" for r in kept))
        self.file = path.open("a")

    @staticmethod
    def _rows(path: Path) -> list[str]:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                if i < len(lines) - 1:
                    raise ValueError(f"{path}: line {i + 1} is not JSON ({exc})") from None
                log.warning("%s: dropping its last line, cut off mid-write", path)
                continue
            rows.append(line)
        return rows

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _ignore_interrupt(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM (sent to the whole process group by a
    scheduler) to the training process, which checkpoints and then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopOnInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM (what a cluster scheduler sends before it preempts a job) while
    training: finish the current step, write a checkpoint, then raise KeyboardInterrupt, so
    ``--resume`` continues from that very step. A second signal stops at once. Active in a single
    process's main thread only (torchrun manages its workers' signals)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool) -> None:
        self.active, self.requested, self.previous = active, False, {}

    def __enter__(self) -> StopOnInterrupt:
        if self.active:  # (a signal the parent process ignores stays ignored)
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                             if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: finishing this step and writing a checkpoint (a second signal stops at once)",
                    "interrupted" if signum == signal.SIGINT else "terminated")

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# what a resumed run may change: its length, where and how fast it runs, its monitoring; not what
# it learns (model, objective, optimizer, batch, seed, data), which would silently mix two recipes
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "train.device", "train.threads", "train.data_workers", "train.precision", "train.compile",
    "train.grad_accum", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.eval_data",
    "train.eval_images", "train.pca_init_images"})


def describe_changes(changes: dict[str, tuple]) -> str:
    """{"section.key": (old, new)} -> "section.key old -> new; ..." for error messages."""
    return "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def config_changes(old: RunConfig, new: RunConfig, sections=("model", "objective", "optim", "train")
                   ) -> dict[str, tuple]:
    """{"section.key": (old value, new value)} for every setting that differs."""
    a, b = to_dict(old), to_dict(new)
    return {key: change for sec in sections for key, change in dict_changes(a[sec], b[sec], sec).items()}


def dict_changes(old: dict, new: dict, section: str) -> dict[str, tuple]:
    """{"section.key": (old value, new value)} for every key of one config section that differs."""
    return {f"{section}.{k}": (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def run_config(ckpt: Path) -> RunConfig:
    """The config a training checkpoint was trained with."""
    return from_dict(RunConfig, read_meta(ckpt, required=("model", "run"))["run"], where=str(ckpt))


def saved_run_config(out_dir: str | Path) -> RunConfig | None:
    """The config a run directory's latest checkpoint was trained with (None if it has none)."""
    existing = list_checkpoints(Path(out_dir))
    return run_config(existing[-1]) if existing else None


def _resolve_run(cfg: RunConfig, out_dir: Path, resume: bool) -> tuple[RunConfig, list[Path]]:
    """On --resume, ``cfg`` may differ from the saved run only in :data:`RESUME_MAY_CHANGE`."""
    existing = list_checkpoints(out_dir)
    if existing and not resume:
        raise ValueError(f"{out_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if resume and not existing:  # kept usable for jobs that always pass --resume, but said aloud
        log.warning("--resume: %s holds no checkpoint yet; starting a new run there", out_dir)
    if not (resume and existing):
        return cfg, []
    saved = run_config(existing[-1])
    if saved.train.init_from:  # a fine-tune kept its start's halting parts: the same config, asked again, means them
        cfg = keep_additions(cfg, saved.model, f"--resume of a run initialised from {saved.train.init_from}")
    fixed = {k: v for k, v in config_changes(saved, cfg).items() if k not in RESUME_MAY_CHANGE}
    if fixed:
        raise ValueError(f"--resume: {existing[-1]} was trained with other settings ({describe_changes(fixed)}). "
                         f"A resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}; start a new "
                         "--out for the rest")
    if (existing[-1] / CALIBRATION_FILE).exists():
        log.warning("%s carries a calibration; training on changes the model, so the new checkpoints have none "
                    "(run kolmotok calibrate on the result)", existing[-1])
    return cfg, existing


def _check_scale_settings(tc, world: int) -> None:
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(f"batch_size {tc.batch_size} must be divisible by processes ({world}) x "
                         f"grad_accum ({tc.grad_accum})")
    if tc.precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {sorted(PRECISIONS)}, got {tc.precision!r}")


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, objective: Objective | None = None,
          progress: bool = True, on_step_end: Callable[[int, torch.nn.Module], None] | None = None) -> Path:
    """Train ``cfg`` into ``out_dir``; returns the final checkpoint directory.

    Under torchrun every process calls this; rank 0 alone logs and writes checkpoints.
    on_step_end(step, model), if given, runs on every rank after each optimizer step. Called
    from the main thread of a single process, it handles SIGINT and SIGTERM while it runs
    (:class:`StopOnInterrupt`: checkpoint, then KeyboardInterrupt) and puts their handlers back.
    """
    out_dir = Path(out_dir)
    validate(cfg)
    cfg, existing = _resolve_run(cfg, out_dir, resume)
    if cfg.train.init_from and not existing:
        cfg = inherit_additions(cfg, cfg.train.init_from)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ddp, device = init_distributed(tc.device)
    ddp.check_same(existing[-1].name if existing else None, "the checkpoint to resume from",
                   f"--out {out_dir} must be a folder that every node sees (a shared filesystem)")
    _check_scale_settings(tc, ddp.world)
    torch.manual_seed(tc.seed)
    model = KARLTokenizer(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.optim.warmup_steps, tc.steps, cfg.optim.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    objective = objective or build_objective(cfg)
    start, trained_seconds = 0, 0.0
    source = make_source(tc.data, cfg.model.image_size)
    if tc.init_from and not existing:
        init_weights(model, tc.init_from)
    elif not existing:
        log.info("fitting the linear token path (PCA) on %d images of %s", tc.pca_init_images, source.name)
        pca_images = source.sample(tc.pca_init_images, step_generator(tc.seed, -1, 0))
        model.init_linear_path(pca_images.to(device))
    if existing:
        from safetensors.torch import load_file

        model.load_own_state_dict(load_file(str(existing[-1] / "model.safetensors"), device=str(device)))
        state = torch.load(existing[-1] / TRAIN_STATE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):  # fp16 loss scale (a run resumed in fp16 from fp32: fresh)
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        if tc.steps < start:
            raise ValueError(f"--resume: {existing[-1]} is at step {start}, past --steps {tc.steps}; give --steps "
                             f"{start} or more (the number of steps of the whole run, not of the steps to add)")
        trained_seconds = float(state.get("time", 0.0))
        log.info("resumed %s at step %d", existing[-1], start)
    if tc.compile:
        for block in (model.encoder, model.decoder):
            block.compile()  # in place: state_dict keys stay the same
    step_module = wrap(ObjectiveModule(model, objective), ddp, device)
    autocast = torch.autocast(device.type, dtype=PRECISIONS[tc.precision], enabled=tc.precision != "fp32")
    monitor, metrics = None, None
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(out_dir)
        write_json(out_dir / "config.json", to_dict(cfg))
        monitor = eval_set(tc.eval_data, cfg.model.image_size, tc.eval_images) if tc.eval_every else None
        metrics = MetricsLog(out_dir / "metrics.jsonl", start)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %.2fM parameters on %s x %d, data %s", n_params / 1e6, device, ddp.world, source.name)
    if ddp.main and tc.steps < cfg.optim.warmup_steps:
        log.warning("the run's %d steps end inside the %d-step warm-up: the learning rate reaches %.0f%% of "
                    "optim.lr and never decays (fewer warm-up steps: --set optim.warmup_steps=N)", tc.steps,
                    cfg.optim.warmup_steps, 100 * lr_factor(tc.steps - 1, cfg.optim.warmup_steps, tc.steps, 0.0))

    def checkpoint(step: int) -> Path:
        path = out_dir / "checkpoints" / f"step_{step:07d}"
        if ddp.main:
            # train_cwd: where relative paths in the run's data specs point (calibrate's overlap check)
            meta = {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": step, "train_cwd": os.getcwd()}
            train_state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "time": time.time() - t0}
            save_checkpoint(path, model, meta, train_state)
            prune_checkpoints(out_dir, tc.keep_checkpoints)
        ddp.barrier()
        return path

    model.train()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not (progress and ddp.main),
               desc="train", dynamic_ncols=True)
    t0, last = time.time() - trained_seconds, None  # "time" in metrics: training seconds, across resumes
    loader = torch.utils.data.DataLoader(
        StepBatches(source, tc.batch_size, tc.seed, start, tc.steps, ddp.rank, ddp.world), batch_size=None,
        num_workers=tc.data_workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if tc.data_workers else None, persistent_workers=False, worker_init_fn=_ignore_interrupt)
    with StopOnInterrupt(ddp.world == 1 and threading.current_thread() is threading.main_thread()) as stop:
        for step, batch in zip(bar, loader):
            t_step = time.time()
            draws = partial(step_draws, tc.seed, step, tc.batch_size, ddp.rank * (tc.batch_size // ddp.world))
            out = train_step(step_module, batch.to(device, non_blocking=True), draws, tc.grad_accum, autocast, scaler)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            out = ddp.mean(out)
            speed = tc.batch_size / max(1e-9, time.time() - t_step)
            if ddp.main:
                row = {"step": done, **out, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                       "images_per_s": round(speed, 1), "time": round(time.time() - t0, 2)}
                if monitor is not None and (done % tc.eval_every == 0 or done == tc.steps):
                    T_max = cfg.model.max_tokens
                    lengths = sorted({max(1, T_max // 8), T_max, cfg.objective.fixed_length} - {0})
                    for T, err in held_out_l1(model, cfg, monitor.images, lengths).items():
                        row[f"eval_l1_T{T}"] = err
                metrics.write(row)
                bar.set_postfix(loss=f"{out['loss']:.4f}", l1=f"{out['l1']:.4f}", kept=f"{out['kept']:.1f}",
                                img_s=f"{speed:.0f}", refresh=False)
            if on_step_end is not None:
                on_step_end(done, model)
            if done % tc.checkpoint_every == 0 or done == tc.steps or stop.requested:
                last = checkpoint(done)
            if stop.requested:
                log.warning("stopped at step %d; checkpoint %s; continue with --resume", done, last)
                raise KeyboardInterrupt
    if metrics is not None:
        metrics.close()
    if last is None:  # nothing left to train: the latest checkpoint is the result
        last = existing[-1] if existing else checkpoint(start)
    log.info("done: %s", last)
    return last


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_draws(seed: int, step: int, total: int, offset: int, start: int, count: int) -> Draws:
    """The objective's draws for rows ``offset + start ..`` of step ``step``'s global batch of ``total``."""
    return Draws(step_generator(seed, step, 1), offset + start, count, total)


def train_step(step_module: torch.nn.Module, images: torch.Tensor, draws: Callable[[int, int], Draws], accum: int,
               autocast, scaler) -> dict[str, float]:
    """Forward + backward over ``accum`` micro-batches (gradients synced on the last one only).
    ``draws(start, count)`` gives the objective's random draws for rows start.. of ``images``."""
    sums: dict[str, float] = {}
    chunks = images.chunk(accum)
    start = 0
    for i, chunk in enumerate(chunks):
        sync = i == len(chunks) - 1 or not hasattr(step_module, "no_sync")
        with contextlib.nullcontext() if sync else step_module.no_sync():
            with autocast:
                loss, metrics = step_module(chunk, draws(start, len(chunk)))
            scaler.scale(loss / len(chunks)).backward()
        start += len(chunk)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v / len(chunks)
    return sums
