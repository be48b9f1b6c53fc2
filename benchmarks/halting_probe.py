"""What limits the halting head? Fit halting heads of several kinds on a trained model's
frozen encoder to exact labels, and compare their token counts with the oracle's.

Each head is fitted on the same training images and targets (exact shortest-sufficient-prefix
labels, as in ``kolmotok fit-halting``) and evaluated on ``--eval-data`` (default
``photos:calib``: not trained on, not the test split). Heads:

* ``as trained``: the checkpoint's own halting head, untouched;
* ``linear refit``: KARL's linear head on the latents (plus the direct eps term), refitted;
* ``mlp(latents)``: an MLP on each latent and log eps;
* ``mlp(linear errors)``: an MLP on log(e_t / eps) and log eps only, e_t the linear path's
  l1 error with the first t tokens;
* ``mlp(latents + linear errors)``: both, the head ``fit-halting`` gives a model.

Usage: python benchmarks/halting_probe.py [--ckpt DIR] [--images 3072] [--steps 3000]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import kolmotok
from kolmotok.cli import report_errors
from kolmotok.data import eval_set, make_source
from kolmotok.models import lengths_from_halting
from kolmotok.models.karl import EPS_REFERENCE
from kolmotok.training.halting_fit import (
    HaltingFitConfig,
    collect_features,
    exact_label_set,
    fit_bce,
    prefix_error_curves,
    shortest_sufficient,
)

EVAL_EPSILONS = (0.03, 0.05, 0.08, 0.12)


class ProbeHead(nn.Module):
    """An MLP over [latent?, log(e_t / eps)?, log eps] per position."""

    def __init__(self, width: int, latents: bool, errors: bool, hidden: int = 128) -> None:
        super().__init__()
        self.latents, self.errors = latents, errors
        size = (width if latents else 0) + (1 if errors else 0) + 1
        self.net = nn.Sequential(nn.Linear(size, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, latents, epsilon, errors):
        log_eps = epsilon.log()[:, None, None].expand(-1, latents.shape[1], 1)
        parts = ([latents] if self.latents else []) + ([errors.log()[..., None] - log_eps] if self.errors else [])
        return self.net(torch.cat(parts + [log_eps], -1)).squeeze(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped tiny one)")
    ap.add_argument("--images", type=int, default=3072)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-data", default="photos:calib")
    ap.add_argument("--threshold", type=float, default=None, help="default: the model's halting threshold")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = kolmotok.load(args.ckpt, device="cpu").model
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = HaltingFitConfig(images=args.images, steps=args.steps)
    threshold = args.threshold or model.cfg.halting_threshold
    g = torch.Generator().manual_seed(cfg.seed)
    images = make_source(cfg.data, model.cfg.image_size).sample(cfg.images, g)
    data = exact_label_set(model, images, cfg, g, progress=True)

    held = eval_set(args.eval_data, model.cfg.image_size).images
    held_curves = prefix_error_curves(model, held)
    held_feats = {e: collect_features(model, held, torch.full((len(held),), e)) for e in EVAL_EPSILONS}

    def model_head(lat, eps, err):
        return model.halting_logits(lat, eps, err)

    def linear_head(lat, eps, err):
        logits = linear(lat).squeeze(-1)
        if model.halt_eps_gain is not None:
            shift = model.eps_embed.log_epsilon(eps) - math.log(EPS_REFERENCE)
            logits = logits + F.softplus(gain) * shift[:, None]
        return logits

    linear = nn.Linear(model.cfg.width, 1)
    linear.load_state_dict(model.halt_head.state_dict())
    gain = nn.Parameter(model.halt_eps_gain.detach().clone()) if model.halt_eps_gain is not None else None
    heads = {"as trained": (model_head, None),
             "linear refit": (linear_head, list(linear.parameters()) + ([gain] if gain is not None else []))}
    for name, use_lat, use_err in (("mlp(latents)", True, False), ("mlp(linear errors)", False, True),
                                   ("mlp(latents + linear errors)", True, True)):
        head = ProbeHead(model.cfg.width, use_lat, use_err)
        heads[name] = (head, list(head.parameters()))

    print(f"{len(images)} training images x {cfg.targets_per_image} targets, eps log-uniform in "
          f"[{cfg.epsilon_min}, {cfg.epsilon_max}]; evaluated on {args.eval_data} ({len(held)} images), "
          f"halting threshold {threshold}")
    full = "  ".join(f"{e}: {100 * float((held_curves <= e).any(1).float().mean()):.1f}%" for e in EVAL_EPSILONS)
    print(f"full budget meets eps on: {full}")
    header = " | ".join(f"eps {e}: tokens / oracle = ratio, meet" for e in EVAL_EPSILONS)
    print(f"{'head':30s} | {'bce':>6s} | {header}")
    for name, (head, params) in heads.items():
        bce = (fit_bce(head, params, data.latents, data.linear_errors, data.epsilon, data.labels, data.weights,
                       cfg)[-1] if params else float("nan"))
        cells = []
        for e in EVAL_EPSILONS:
            lat, err = held_feats[e]
            eps = torch.full((len(held),), e)
            with torch.no_grad():
                lengths = lengths_from_halting(head(lat.float(), eps, err), threshold)
            oracle = shortest_sufficient(held_curves, eps)[0].float().mean()
            met = (held_curves[torch.arange(len(held)), lengths - 1] <= e).float().mean()
            cells.append(f"{lengths.float().mean():5.2f} / {oracle:5.2f} = {lengths.float().mean() / oracle:4.2f}, "
                         f"{100 * met:5.1f}%")
        print(f"{name:30s} | {bce:6.4f} | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
