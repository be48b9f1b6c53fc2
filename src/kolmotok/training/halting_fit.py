"""Refit a trained KARL model's halting head to exact labels, with the backbone frozen.

KARL's phase 2 labels an image with one point of its error curve per step: the error eps_T
that one random budget T reached (plus our shortest-sufficient-prefix probe). Once a model is
trained, the whole curve of a training image can be measured instead: decode every prefix of
its eps = 0 tokens. For any target eps the exact label is then known -- the shortest prefix
whose error is within eps, or "every token" where none is. This stage does that for a fixed
set of training images and fits only the halting parameters (``halt_head``,
``halt_eps_gain``, ``halt_mlp``) to those labels for targets drawn log-uniformly over
``epsilon_range``; the encoder, decoder and tokens do not change, so reconstructions at any
length are exactly the input model's. Inference stays one encoder pass and one decoder pass.

Stages: :func:`exact_label_set` (:func:`prefix_error_curves`, :func:`shortest_sufficient`,
:func:`exact_halting_labels`, :func:`collect_features`) -> :func:`fit_head`; :func:`fit_halting`
runs them and writes the checkpoint. docs/DESIGN.md §4 has the numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_model, require_karl, save_checkpoint
from ..config import to_dict
from ..data import make_source
from ..models import KARLTokenizer
from .trainer import FINE_TUNE_ADDITIONS

HALTING_PREFIXES = ("halt_head.", "halt_eps_gain", "halt_mlp.")


log = logging.getLogger(__name__)


@dataclass
class HaltingFitConfig:
    data: str = "photos@3+shapes"  # training data only: never the calib or test photographs
    images: int = 3072  # training images whose error curves are measured
    targets_per_image: int = 6  # targets eps drawn per image
    epsilon_min: float = 0.005  # targets are log-uniform in [epsilon_min, epsilon_max]
    epsilon_max: float = 0.25
    steps: int = 3000
    batch_size: int = 512  # (image, target) pairs per step
    lr: float = 2e-3
    weight_decay: float = 0.01
    hidden: int = 64  # width of the halting MLP added to a model that has none (needs its linear path)
    seed: int = 0
    inference_batch: int = 256

    def validate(self) -> None:
        if not 0 < self.epsilon_min < self.epsilon_max:
            raise ValueError(f"need 0 < epsilon_min < epsilon_max, got {self.epsilon_min}, {self.epsilon_max}")
        for name in ("images", "targets_per_image", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0: no halting MLP is added), got {self.hidden}")


@torch.no_grad()
def prefix_error_curves(model: KARLTokenizer, images: torch.Tensor, batch: int = 256,
                        progress: bool = False) -> torch.Tensor:
    """(N, 3, H, W) -> (N, T_max): l1 of the reconstruction from the first t of the eps = 0 tokens."""
    T, curves = model.cfg.max_tokens, []
    for start in tqdm(range(0, len(images), batch), desc="error curves", disable=not progress):
        x = images[start:start + batch]
        vectors = model.quantize(model.encode(x, torch.zeros(len(x), device=x.device), T)).vectors
        curves.append(model.prefix_l1(x, vectors).cpu())
    return torch.cat(curves)


def shortest_sufficient(curves: torch.Tensor, epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) error curves, (N,) targets -> (lengths, reachable): the shortest prefix within eps,
    or T where no prefix is (reachable False)."""
    T = curves.shape[1]
    ok = curves <= epsilon[:, None]
    lengths = torch.where(ok, torch.arange(1, T + 1), T).min(1).values
    return lengths, ok.any(1)


def exact_halting_labels(lengths: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) lengths -> (N, T) halt labels (halt from ``length`` on; none halt when the length is
    T, which also covers unreachable targets) and weights (position 0 never halts: no label)."""
    position = torch.arange(T)[None, :]
    labels = (position >= lengths[:, None]).float()
    weights = torch.ones_like(labels)
    weights[:, 0] = 0.0
    return labels, weights


@torch.no_grad()
def collect_features(model: KARLTokenizer, images: torch.Tensor, epsilon: torch.Tensor, batch: int = 256,
                     progress: bool = False, pairs: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen-encoder inputs of the halting head for each (image, eps) pair: latents (N, T, D)
    in half precision and the linear path's prefix errors (N, T) (None without a linear path).
    Pair i is image ``pairs[i]`` (default: image i), indexed a batch at a time, so the images
    are never copied once per target."""
    T, latents, errors = model.cfg.max_tokens, [], []
    index = torch.arange(len(images)) if pairs is None else pairs
    for start in tqdm(range(0, len(index), batch), desc="features", disable=not progress):
        x, e = images[index[start:start + batch].to(images.device)], epsilon[start:start + batch]
        lat = model.encode(x, e, T)
        latents.append(lat.latents.half().cpu())
        if model.linear_path is not None:
            errs = lat.linear_errors  # encode computed them already if its halting head reads them
            errors.append((errs if errs is not None else model.linear_path.prefix_errors(x, lat.direct)).cpu())
    return torch.cat(latents), (torch.cat(errors) if errors else None)


def halting_parameters(model: KARLTokenizer) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith(HALTING_PREFIXES)]


def fit_bce(forward, params: list[torch.nn.Parameter], latents: torch.Tensor, linear_errors: torch.Tensor | None,
            epsilon: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, cfg: HaltingFitConfig,
            progress: bool = False, device: torch.device | str = "cpu") -> list[float]:
    """Fit ``params`` of ``forward(latents, epsilon, linear_errors) -> (B, T) halt logits`` by
    weighted BCE on random batches of (image, target) pairs (AdamW, cosine decay).
    Returns the loss every 100 steps and at the last."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(range(cfg.steps), desc="fit halting", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        errs = None if linear_errors is None else linear_errors[idx].to(device)
        logits = forward(latents[idx].to(device).float(), epsilon[idx].to(device), errs)
        w = weights[idx].to(device)
        bce = F.binary_cross_entropy_with_logits(logits, labels[idx].to(device), reduction="none")
        loss = (bce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append(loss.item())
            bar.set_postfix(bce=f"{loss.item():.4f}")
    return history


def fit_head(model: KARLTokenizer, latents: torch.Tensor, linear_errors: torch.Tensor | None,
             epsilon: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, cfg: HaltingFitConfig,
             progress: bool = False) -> list[float]:
    """Fit the model's halting parameters (:func:`fit_bce`); every other weight stays as it is."""
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(HALTING_PREFIXES))
    history = fit_bce(model.halting_logits, halting_parameters(model), latents, linear_errors, epsilon, labels,
                      weights, cfg, progress, next(model.parameters()).device)
    for n, p in model.named_parameters():
        p.requires_grad_(frozen[n])
    return history


class LabelSet(NamedTuple):
    """Exact halting labels for (image, target) pairs and the frozen encoder's features for them."""
    epsilon: torch.Tensor  # (N,) targets
    labels: torch.Tensor  # (N, T) halt labels
    weights: torch.Tensor  # (N, T) label weights
    latents: torch.Tensor  # (N, T, D) half precision
    linear_errors: torch.Tensor | None  # (N, T)


def exact_label_set(model: KARLTokenizer, images: torch.Tensor, cfg: HaltingFitConfig, g: torch.Generator,
                    progress: bool = False) -> LabelSet:
    """Measure each image's error curve, draw ``targets_per_image`` targets log-uniformly in
    [epsilon_min, epsilon_max], label each pair exactly, and collect the halting head's inputs."""
    curves = prefix_error_curves(model, images, cfg.inference_batch, progress)
    lo, hi = math.log(cfg.epsilon_min), math.log(cfg.epsilon_max)
    epsilon = torch.exp(lo + (hi - lo) * torch.rand(len(images) * cfg.targets_per_image, generator=g))
    pairs = torch.arange(len(images)).repeat(cfg.targets_per_image)
    labels, weights = exact_halting_labels(shortest_sufficient(curves[pairs], epsilon)[0], model.cfg.max_tokens)
    latents, linear_errors = collect_features(model, images, epsilon.to(images.device), cfg.inference_batch,
                                              progress, pairs)
    return LabelSet(epsilon, labels, weights, latents, linear_errors)


def with_halting_mlp(model: KARLTokenizer, hidden: int, seed: int) -> KARLTokenizer:
    """The same model with a freshly initialised halting MLP when it has none (and a linear path)."""
    if model.halt_mlp is not None or model.linear_path is None or hidden <= 0:
        return model
    torch.manual_seed(seed)
    grown = KARLTokenizer(replace(model.cfg, halting_hidden=hidden))
    grown.load_own_state_dict(model.own_state_dict(), allow_missing=(FINE_TUNE_ADDITIONS["halting_hidden"],))
    return grown.to(next(model.parameters()).device)


def fit_halting(ckpt: str | Path, out: str | Path, cfg: HaltingFitConfig | None = None,
                device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Load ``ckpt``, refit its halting head on training data, write the result to ``out`` (a new
    directory, or an empty one: the checkpoint replaces the whole directory)."""
    cfg = cfg or HaltingFitConfig()
    cfg.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {str(out)!r} exists and is not an empty directory; fit-halting writes a whole "
                         "checkpoint there, so give a new directory")
    start = time.time()
    model, meta = load_model(ckpt, device)
    require_karl(meta, f"fit-halting --ckpt {ckpt}")
    model = with_halting_mlp(model, cfg.hidden, cfg.seed).eval()
    if cfg.hidden != model.cfg.halting_hidden:  # the record says what was fitted
        log.warning("the halting MLP is %d wide (%s); hidden %d does not apply", model.cfg.halting_hidden,
                    "the checkpoint's own" if model.cfg.halting_hidden else "none: the model has no linear path",
                    cfg.hidden)
        cfg = replace(cfg, hidden=model.cfg.halting_hidden)
    g = torch.Generator().manual_seed(cfg.seed)
    images = make_source(cfg.data, model.cfg.image_size).sample(cfg.images, g).to(device)
    data = exact_label_set(model, images, cfg, g, progress)
    history = fit_head(model, data.latents, data.linear_errors, data.epsilon, data.labels, data.weights, cfg,
                       progress)
    meta = dict(meta)
    meta["model"] = to_dict(model.cfg)
    meta["halting_fit"] = {"from": str(ckpt), "config": asdict(cfg), "bce_first": history[0],
                           "bce_last": history[-1], "seconds": round(time.time() - start, 1)}
    return save_checkpoint(out, model, meta)
