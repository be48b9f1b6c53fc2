"""Public API: ``kolmotok.load()`` -> :class:`Tokenizer` with ``encode`` / ``decode``.

Inside, everything stays batched (padded tokens + lengths); :meth:`Encoding.to_list`
gives per-image variable-length sequences at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch

from .calibration import (
    CONDITION_GRID,
    Calibration,
    calibrate_errors,
    load_calibrations,
    measure_conditions,
    save_calibrations,
)
from .checkpoint import load_model, resolve_checkpoint
from .data.images import load_images as _load_images
from .models import KARLTokenizer

DEFAULT_CHECKPOINT = "tiny"


@dataclass
class Encoding:
    """The output of one encoder pass.

    tokens: (B, budget) long codes padded with -1 (discrete models), or (B, budget, d)
        float vectors padded with zeros (continuous models).
    lengths: (B,) long, tokens kept per image: KARL's complexity estimate.
    epsilon: (B,) the target l1 error each image was encoded for (0 = fixed length).
    condition: (B,) the target the model was conditioned on: ``epsilon`` itself, or the
        calibrated condition when a guarantee was applied.
    guarantee: the calibrated share of images promised to meet ``epsilon`` (None: no promise).
    guaranteed: (B,) bool, False where the calibration could not promise it (eps below the
        calibrated range, or beyond what the full budget reaches); None without a guarantee.
    reencoded: (B,) with ``verify=True``: how many times each image was re-encoded at a
        tighter condition after missing eps (0 for most); None without verification.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    epsilon: torch.Tensor
    budget: int
    condition: torch.Tensor | None = None
    guarantee: float | None = None
    guaranteed: torch.Tensor | None = None
    reencoded: torch.Tensor | None = None

    @property
    def num_reencoded(self) -> int:
        """Images that verification had to re-encode (0 without ``verify``)."""
        return 0 if self.reencoded is None else int((self.reencoded > 0).sum())

    def to_list(self) -> list[torch.Tensor]:
        """Per-image token sequences without padding."""
        return [t[: int(n)] for t, n in zip(self.tokens, self.lengths)]


def shipped_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    path = Path(str(resources.files("kolmotok") / "weights" / name))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from the installed package ({path})")
    return path


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _calibration_summary(cal: Calibration) -> dict:
    attainable = [e for e, ok in zip(cal.epsilons, cal.attainable) if ok]
    return {"guarantee": cal.guarantee, "data": cal.data, "images": cal.num_images,
            "guaranteed_from_epsilon": min(attainable) if attainable else None}


class Tokenizer:
    """A trained KARL tokenizer ready for inference (see :func:`load`)."""

    def __init__(self, model: KARLTokenizer, meta: dict | None = None,
                 calibrations: dict[float, Calibration] | None = None, path: Path | None = None) -> None:
        self.model = model.eval()
        self.meta = meta or {}
        self.calibrations: dict[float, Calibration] = dict(calibrations or {})  # keyed by alpha
        self.path = path  # the checkpoint directory it was loaded from, if any

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def max_tokens(self) -> int:
        return self.model.cfg.max_tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def discrete(self) -> bool:
        return bool(self.model.quantizer.discrete)

    @property
    def bits_per_token(self) -> float:
        q = self.model.quantizer
        return q.bits_per_token if q.discrete else q.bits_per_token * self.model.cfg.token_dim

    def describe(self) -> dict:
        """What this tokenizer is: checkpoint, model, training and calibrations (``kolmotok info``)."""
        cfg, run = self.model.cfg, self.meta.get("run", {})
        train = run.get("train", {})
        return {
            "checkpoint": str(self.path) if self.path else None,
            "image_size": self.image_size, "max_tokens": self.max_tokens,
            "tokens": (f"FSQ codes, {self.bits_per_token:.1f} bits" if self.discrete
                       else f"continuous, {cfg.token_dim} float32 numbers"),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "width": cfg.width, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
            "objective": run.get("objective", {}).get("kind"),
            "steps_in_last_run": self.meta.get("step"), "training_data": train.get("data"),
            "initialised_from": train.get("init_from") or None,
            "halting_refit": "halting_fit" in self.meta,
            "calibrations": [_calibration_summary(c) for _, c in sorted(self.calibrations.items())],
        }

    # ------------------------------------------------------------------ validation
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 3:
            images = images[None]
        S = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != S or images.shape[3] != S:
            raise ValueError(f"images must have shape (B, 3, {S}, {S}), got {tuple(images.shape)}; "
                             f"use tok.load_images(paths) to read and resize files")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        return images.clamp(0, 1).float().to(self.device)

    def _check_epsilon(self, epsilon: float | Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
        eps = torch.as_tensor(epsilon, dtype=torch.float32).flatten()
        if eps.numel() == 1:
            eps = eps.expand(batch)
        if eps.numel() != batch:
            raise ValueError(f"epsilon must be one number or one per image ({batch}), got {eps.numel()} values")
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(f"epsilon must be finite and >= 0 (0 = fixed-length mode), got {epsilon!r}")
        return eps.to(self.device)

    def _check_budget(self, budget: int | None) -> int:
        if budget is None:
            return self.max_tokens
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= self.max_tokens:
            raise ValueError(f"budget must be an integer in 1..{self.max_tokens}, got {budget!r}")
        return budget

    def check_options(self, epsilon: float | Sequence[float] | torch.Tensor = 0.05, budget: int | None = None,
                      guarantee: float | None = None) -> None:
        """Raise ValueError for options :meth:`encode` would refuse, before any image is read
        (the CLI checks its flags with this, so a bad flag costs no work)."""
        self._check_epsilon(epsilon, torch.as_tensor(epsilon).numel())
        self._check_budget(budget)
        if guarantee is not None:
            self.calibration_for(guarantee)

    # ------------------------------------------------------------------ inference
    def calibration_for(self, guarantee: float) -> Calibration:
        """The stored calibration promising ``guarantee`` (= 1 - alpha); ValueError if there is none."""
        if isinstance(guarantee, bool) or not isinstance(guarantee, (int, float)) or not 0 < guarantee < 1:
            raise ValueError(f"guarantee must be a share in (0, 1), e.g. 0.9, got {guarantee!r}")
        for alpha, cal in self.calibrations.items():
            if abs(alpha - (1 - guarantee)) < 1e-9:
                return cal
        have = sorted(round(c.guarantee, 6) for c in self.calibrations.values()) or "none"
        raise ValueError(f"no calibration for guarantee {guarantee} (have: {have}); run `kolmotok calibrate "
                         f"--ckpt ... --alpha {1 - guarantee:.3g}` or tok.calibrate(images, alpha=...)")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, epsilon: float | Sequence[float] | torch.Tensor = 0.05,
               budget: int | None = None, guarantee: float | None = None, verify: bool = False) -> Encoding:
        """One encoder pass: images (B, 3, S, S) in [0, 1] -> :class:`Encoding`.

        epsilon: target mean absolute error per image (one value or one per image);
            0 disables adaptivity, keeping exactly ``budget`` tokens.
        budget: most tokens to use, 1..max_tokens (default max_tokens).
        guarantee: e.g. 0.9 -- encode at the calibrated condition that makes at least this share
            of images meet epsilon (needs a calibration for alpha = 1 - guarantee; see calibrate).
        verify: one extra decoder pass checks each image; those that miss epsilon are
            re-encoded at tighter conditions (half, a quarter, then the full budget), stopping
            at the first that meets it or keeps the full budget (nothing tighter exists).
        """
        x = self._check_images(images)
        eps = self._check_epsilon(epsilon, x.shape[0])
        T = self._check_budget(budget)
        cond, guaranteed = eps, None
        if guarantee is not None:
            cond, guaranteed = self.calibration_for(guarantee).lookup(eps)
            cond = torch.where(eps > 0, cond, 0.0)
        out = self.model.tokenize(x, cond, T)
        enc = Encoding(out.codes, out.lengths, eps, T, cond, guarantee, guaranteed)
        return self._verify(x, enc) if verify else enc

    def _verify(self, x: torch.Tensor, enc: Encoding) -> Encoding:
        from .evaluation.metrics import l1_per_image

        tokens, lengths, cond = enc.tokens.clone(), enc.lengths.clone(), enc.condition.clone()
        reencoded = torch.zeros_like(lengths)
        # an image that already keeps the whole budget cannot do better: it is not re-encoded
        miss = ((l1_per_image(self.model.detokenize(tokens, lengths), x) > enc.epsilon) & (enc.epsilon > 0)
                & (lengths < enc.budget))
        for factor in (0.5, 0.25, 0.0):  # 0: every token of the budget, so the last try always ends
            idx = miss.nonzero().squeeze(1)
            if not len(idx):
                break
            c = enc.condition[idx] * factor
            out = self.model.tokenize(x[idx], c, enc.budget)
            reencoded[idx] += 1
            err = l1_per_image(self.model.detokenize(out.codes, out.lengths), x[idx])
            ok = (err <= enc.epsilon[idx]) | (out.lengths == enc.budget)
            tokens[idx[ok]], lengths[idx[ok]], cond[idx[ok]] = out.codes[ok], out.lengths[ok], c[ok]
            miss[idx[ok]] = False
        return replace(enc, tokens=tokens, lengths=lengths, condition=cond, reencoded=reencoded)

    def calibrate(self, images: torch.Tensor, alpha: float = 0.1, data: str = "images",
                  progress: bool = False) -> Calibration:
        """Split-conformal calibration on held-out ``images`` (never the training or test set):
        afterwards ``encode(..., guarantee=1 - alpha)`` meets eps on at least 1 - alpha of
        images like these. See :mod:`kolmotok.calibration`; :meth:`save_calibration` stores it."""
        return self.calibrate_alphas(images, [alpha], data, progress)[0]

    def calibrate_alphas(self, images: torch.Tensor, alphas: Sequence[float], data: str = "images",
                         progress: bool = False) -> list[Calibration]:
        """:meth:`calibrate` for several miss rates, measuring the images once."""
        from .evaluation.evaluate import run_batched

        x = self._check_images(images)
        errors = measure_conditions(lambda c: run_batched(self, x, c, quality=False).l1, CONDITION_GRID, progress)
        cals = [calibrate_errors(errors, CONDITION_GRID, alpha, data) for alpha in alphas]
        self.calibrations.update((c.alpha, c) for c in cals)
        return cals

    def save_calibration(self, directory: str | Path) -> Path:
        """Write every calibration of this tokenizer to ``directory/calibration.json`` (atomic)."""
        return save_calibrations(directory, self.calibrations)

    @torch.no_grad()
    def decode(self, encoding: Encoding | torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One decoder pass: an :class:`Encoding` (or padded tokens + lengths) -> images (B, 3, S, S)."""
        if isinstance(encoding, Encoding):
            tokens, lengths = encoding.tokens, encoding.lengths
        else:
            tokens = encoding
            if lengths is None:
                raise ValueError("decode(tokens, lengths): lengths are required when tokens are a tensor")
        if tokens.dim() < 2 or tokens.shape[1] < 1 or tokens.shape[1] > self.max_tokens:
            raise ValueError(f"tokens must be (B, T, ...) with 1 <= T <= {self.max_tokens}, got {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths, device=self.device).long()
        if lengths.shape != tokens.shape[:1] or (lengths < 1).any() or (lengths > tokens.shape[1]).any():
            raise ValueError(f"lengths must be (B,) with values in 1..{tokens.shape[1]}")
        if self.discrete and tokens.is_floating_point():
            raise ValueError("this tokenizer is discrete: tokens must be integer codes")
        return self.model.detokenize(tokens.to(self.device), lengths)

    def load_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """Image files -> (B, 3, S, S) tensor by the documented resize rule (see kolmotok.data.images).

        An unreadable file raises :class:`kolmotok.data.ImageLoadError` naming it.
        """
        return _load_images(list(paths), self.image_size, skip_errors=False).images


def load(path: str | Path | None = None, device: str | torch.device | None = None) -> Tokenizer:
    """Load a tokenizer: the shipped default checkpoint, or a checkpoint / run directory."""
    ckpt = resolve_checkpoint(shipped_checkpoint() if path is None else Path(path))
    model, meta = load_model(ckpt, device or _default_device())
    return Tokenizer(model, meta, load_calibrations(ckpt), path=ckpt)

