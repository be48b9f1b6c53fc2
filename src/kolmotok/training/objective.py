"""Training objectives. The trainer calls ``objective(model, images, draws)`` (a
:class:`Draws`, or a plain ``torch.Generator`` for a whole batch);
:func:`build_objective` picks one by ``objective.kind``. Baselines (same backbone, own
objective): :class:`FixedObjective`, :class:`PrefixObjective`, :class:`RecurrentObjective`.

:class:`KARLObjective` is the two-phase "upside-down RL" objective of KARL (paper §3), run on every batch:

1. *Estimate Image Complexity*: a random budget T, condition eps = 0 ("do your best"),
   all T tokens active; the per-image l1 it achieves, eps_T, is recorded (detached).
2. *Learn to Tokenize Complexity*: budget T_max, condition eps_T; halting labels are
   keep for the first T tokens and halt for the rest (BCE); the decoder reconstructs
   from the tokens the model itself keeps.

Two additions of ours. *Shortest sufficient prefix*: phase 1 also decodes a random
shorter prefix T' < T of the same tokens (no gradient); where it is already within
``shorter_prefix_tolerance`` of eps_T, the halting label length is T' instead of T. Without
it, an image whose error stops falling early (a flat colour reaches its error with one
token) is taught "T tokens" for a random T, and keeps far more tokens than it needs.
*Stricter* (and optionally *looser*) *targets*: a share of phase-2 images is conditioned on
a target below eps_T. For them only "at least T tokens" is known, so tokens past T get
no halting label (censored). With T = T_max it teaches "an unreachable target keeps
every token", which is what makes pure noise use the whole budget. *Gap targets*
(``gap_target_prob``): where the shorter prefix T' is clearly worse than T, a share of images is
conditioned on a target drawn log-uniformly between eps_T and eps_T'; then T' tokens are
known to be too few and T enough, and the positions in between get no label. Without them a
target is always some image's achieved error, and an image whose error jumps between two
lengths (a linear gradient: one and two tokens give the same l1, three give half of it) is
never shown a target inside the jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ObjectiveConfig, RunConfig
from ..evaluation.metrics import l1_per_image
from ..models import KARLTokenizer


class Draws:
    """The objective's random draws for one optimizer step, the same however the batch is split.

    Every micro-batch (gradient accumulation) of every process (DDP) replays the step's
    generator from its start: scalar draws (a budget T) agree everywhere, and per-image draws are
    made for the whole global batch of ``total`` images, of which this call keeps rows
    ``start .. start + count``. A step split over processes and micro-batches therefore draws
    what the one batch would have drawn. Losses normalised by a count over the batch take the
    global count times :attr:`share` (the trainer averages its equal slices), as KARL's halting
    BCE does.
    """

    def __init__(self, generator: torch.Generator, start: int, count: int, total: int) -> None:
        self.generator, self.start, self.count, self.total = generator, start, count, total

    @classmethod
    def of(cls, g: torch.Generator | Draws, batch: int) -> Draws:
        """``g`` as draws for a batch of ``batch`` images (a generator: the whole batch)."""
        draws = g if isinstance(g, Draws) else cls(g, 0, batch, batch)
        if draws.count != batch:
            raise ValueError(f"draws for {draws.count} images, batch of {batch}")
        return draws

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """This call's rows of a (total, ...) tensor made for the global batch."""
        return values[self.start:self.start + self.count]

    @property
    def share(self) -> float:
        """This call's share of the global batch."""
        return self.count / self.total

    def uniform(self, everyone: bool = False) -> torch.Tensor:
        """(count,) uniform [0, 1) draws, one per image; with ``everyone`` all (total,) of them."""
        values = torch.rand(self.total, generator=self.generator)
        return values if everyone else self.rows(values)

    def integers(self, low: int, high: int) -> torch.Tensor:
        """(count,) integers in low..high-1, one per image."""
        return self.rows(torch.randint(low, high, (self.total,), generator=self.generator))


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    metrics: dict[str, float]  # detached scalars for logging


def sample_budget(max_tokens: int, full_budget_prob: float, g: torch.Generator) -> int:
    if float(torch.rand((), generator=g)) < full_budget_prob:
        return max_tokens
    return int(torch.randint(1, max_tokens + 1, (1,), generator=g))


class Objective:
    """Base: holds the config and the shared reconstruction loss."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg

    def reconstruction(self, recon: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-image l1): mean l1, plus the optional squared-error term."""
        err = l1_per_image(recon, images)
        loss = err.mean()
        if self.cfg.mse_weight:
            loss = loss + self.cfg.mse_weight * F.mse_loss(recon, images)
        return loss, err

    def reconstruct(self, model: KARLTokenizer, images: torch.Tensor, vectors: torch.Tensor,
                    lengths: torch.Tensor) -> LossOutput:
        """Decode ``lengths`` tokens per image and score it: the whole loss of the baselines."""
        loss, err = self.reconstruction(model.decode(vectors, lengths), images)
        return LossOutput(loss, {"loss": loss.item(), "l1": err.mean().item(),
                                 "kept": lengths.float().mean().item()})


class FixedObjective(Objective):
    """TiTok-style: always exactly ``fixed_length`` tokens (eps = 0 mode)."""

    def __call__(self, model: KARLTokenizer, images: torch.Tensor, g: torch.Generator | Draws) -> LossOutput:
        B, n = images.shape[0], self.cfg.fixed_length
        vectors = model.quantize(model.encode(images, torch.zeros(B, device=images.device), n)).vectors
        return self.reconstruct(model, images, vectors, torch.full((B,), n, device=images.device))


class PrefixObjective(Objective):
    """Nested dropout / tail drop (One-D-Piece, FlexTok): encode T_max tokens, keep a random
    prefix per image (the full budget with probability ``full_budget_prob``) and decode it."""

    def __call__(self, model: KARLTokenizer, images: torch.Tensor, g: torch.Generator | Draws) -> LossOutput:
        B, T, dev = images.shape[0], model.cfg.max_tokens, images.device
        draws = Draws.of(g, B)
        vectors = model.quantize(model.encode(images, torch.zeros(B, device=dev), T)).vectors
        lengths = draws.integers(1, T + 1)
        lengths = torch.where(draws.uniform() < self.cfg.full_budget_prob, T, lengths)
        return self.reconstruct(model, images, vectors, lengths.to(dev))


class RecurrentObjective(Objective):
    """ALIT-style recurrent allocation: R rollouts (R uniform in 1..T_max/k, the last one
    with gradient; earlier ones are the detached input it refines), then decode its R*k tokens."""

    def __call__(self, model: KARLTokenizer, images: torch.Tensor, g: torch.Generator | Draws) -> LossOutput:
        k, T = model.cfg.recurrent_step, model.cfg.max_tokens
        rollouts = int(torch.randint(1, T // k + 1, (1,), generator=Draws.of(g, images.shape[0]).generator))
        previous = None
        with torch.no_grad():
            for _ in range(rollouts - 1):
                previous = model.rollout(images, previous)
        vectors = model.rollout(images, previous)
        return self.reconstruct(model, images, vectors, torch.full((images.shape[0],), vectors.shape[1],
                                                                   device=images.device))


def halting_labels(label_len: torch.Tensor, T: int, short: int, stricter: torch.Tensor, looser: torch.Tensor,
                   gap: torch.Tensor, T_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max) halt labels (1 = halt) and their weights (0 = no label, :func:`label_weights`).

    Position p halted means a length of p. Halt from ``label_len`` on.
    """
    position = torch.arange(T_max, device=label_len.device)[None, :]
    halt_label = (position >= label_len[:, None]).float()
    return halt_label, label_weights(T, short, stricter, looser, gap, T_max)


def label_weights(T: int, short: int, stricter: torch.Tensor, looser: torch.Tensor, gap: torch.Tensor,
                  T_max: int) -> torch.Tensor:
    """(B, T_max) weights of the halting labels: 0 at censored positions, 1 elsewhere.

    A stricter target only says "more than T" (nothing past T); a looser one only "T is enough"
    (nothing before T); a gap target "more than ``short``, T is enough" (nothing strictly between).
    """
    position = torch.arange(T_max, device=stricter.device)[None, :]
    unknown = ((stricter[:, None] & (position >= T)) | (looser[:, None] & (position < T))
               | (gap[:, None] & (position > short) & (position < T)))
    return torch.where(unknown, 0.0, 1.0)


class KARLObjective(Objective):

    @torch.no_grad()
    def shorter_prefix(self, model: KARLTokenizer, images: torch.Tensor, vectors: torch.Tensor,
                       g: torch.Generator) -> tuple[int, torch.Tensor] | None:
        """A random shorter prefix T' < T of the phase-1 tokens and its per-image l1 (no gradient);
        None where there is none (T = 1) or the refinement is off."""
        B, T = vectors.shape[:2]
        if T == 1 or self.cfg.shorter_prefix_tolerance < 0:
            return None
        short = int(torch.randint(1, T, (1,), generator=g))
        lengths = torch.full((B,), short, device=images.device, dtype=torch.long)
        return short, l1_per_image(model.decode(vectors, lengths), images)

    def __call__(self, model: KARLTokenizer, images: torch.Tensor, g: torch.Generator | Draws) -> LossOutput:
        cfg, dev = self.cfg, images.device
        B, T_max = images.shape[0], model.cfg.max_tokens
        draws = Draws.of(g, B)
        g = draws.generator  # scalar draws

        # Phase 1: Estimate Image Complexity -- budget T, eps = 0, all T tokens kept.
        T = sample_budget(T_max, cfg.full_budget_prob, g)
        lat1 = model.encode(images, torch.zeros(B, device=dev), T)
        vec1 = model.quantize(lat1).vectors
        rec1 = model.decode(vec1, torch.full((B,), T, device=dev))
        loss_rec1, err1 = self.reconstruction(rec1, images)
        err = err1.detach()
        probe = self.shorter_prefix(model, images, vec1.detach(), g)
        short, err_short = probe if probe is not None else (T, err)
        # shortest sufficient prefix: T' is the label where it is already within tolerance of eps_T
        sufficient = err_short <= err * (1 + cfg.shorter_prefix_tolerance)
        label_len = torch.where(sufficient, short, T)
        bce1 = F.binary_cross_entropy_with_logits(lat1.halt_logits, torch.zeros_like(lat1.halt_logits))

        # Phase 2: Learn to Tokenize Complexity -- budget T_max, condition on eps_T.
        target = err.clamp(min=model.cfg.epsilon_floor)
        stricter_all = draws.uniform(everyone=True) < cfg.stricter_target_prob  # (whole batch: see labelled)
        stricter = draws.rows(stricter_all).to(dev)
        factor = (cfg.stricter_target_min + (1 - cfg.stricter_target_min) * draws.uniform()).to(dev)
        target = torch.where(stricter, target * factor, target)
        looser_all = ~stricter_all & (draws.uniform(everyone=True) < cfg.looser_target_prob)
        looser = draws.rows(looser_all).to(dev)
        scale = torch.exp(draws.uniform() * math.log(cfg.looser_target_max)).to(dev)
        target = torch.where(looser, target * scale, target)
        if cfg.gap_target_prob > 0:  # (no draws otherwise: runs without it keep their random stream)
            gap = ~stricter & ~looser & ~sufficient & (draws.uniform() < cfg.gap_target_prob).to(dev)
            u = draws.uniform().to(dev)
            between = torch.exp(torch.lerp(target.log(), err_short.clamp(min=model.cfg.epsilon_floor).log(), u))
            target = torch.where(gap, between, target)
        else:
            gap = torch.zeros_like(stricter)
        lat2 = model.encode(images, target, T_max)
        halt_label, label_weight = halting_labels(label_len, T, short, stricter, looser, gap, T_max)
        # the count of labelled positions (at least 1: a batch with none has a BCE sum of 0)
        if cfg.gap_target_prob > 0:  # which images get gap targets depends on this slice's errors
            labelled = label_weight.sum().clamp(min=1)
        else:  # this slice's share of the global batch's count: the same however it is split (equally)
            nothing = torch.zeros_like(stricter_all)
            everyone = label_weights(T, short, stricter_all, looser_all, nothing, T_max).sum().clamp(min=1)
            labelled = everyone.to(dev) * draws.share
        bce2 = F.binary_cross_entropy_with_logits(lat2.halt_logits, halt_label, weight=label_weight,
                                                  reduction="sum") / labelled
        lengths = model.halt(lat2.halt_logits.detach(), target)
        rec2 = model.decode(model.quantize(lat2).vectors, lengths)
        loss_rec2, err2 = self.reconstruction(rec2, images)

        loss = loss_rec1 + loss_rec2 + cfg.halting_weight * (bce1 + bce2)
        metrics = {"loss": loss.item(), "l1": err1.mean().item(), "l1_p2": err2.mean().item(),
                   "bce": bce2.item(), "budget": float(T), "label_len": label_len.float().mean().item(),
                   "kept": lengths.float().mean().item()}
        return LossOutput(loss, metrics)


def build_objective(cfg: RunConfig) -> Objective:
    kinds = {"karl": KARLObjective, "fixed": FixedObjective, "prefix": PrefixObjective,
             "recurrent": RecurrentObjective}
    return kinds[cfg.objective.kind](cfg.objective)
