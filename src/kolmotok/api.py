"""Public API: ``kolmotok.load()`` -> :class:`Tokenizer` with ``encode`` / ``decode``.

Inside, everything stays batched (padded tokens + lengths); :meth:`Encoding.to_list`
gives per-image variable-length sequences at the edge.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .calibration import (
    CONDITION_GRID,
    Calibration,
    calibrate_errors,
    check_alpha,
    check_guarantee,
    conformal_rank,
    load_calibrations,
    measure_conditions,
    save_calibrations,
)
from .checkpoint import load_model, resolve_checkpoint, resolve_device, shipped_checkpoint
from .data.images import load_images as _load_images
from .models import KARLTokenizer, prefix_mask

log = logging.getLogger(__name__)


@dataclass(eq=False)  # tensors have no single truth value: Encodings compare by identity
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

    @property
    def mask(self) -> torch.Tensor:
        """(B, budget) bool, True at each image's kept tokens: the padding mask a downstream
        model reads the padded ``tokens`` with (``src_key_padding_mask=~enc.mask`` in torch)."""
        return prefix_mask(self.lengths, self.budget)

    def take(self, indices) -> Encoding:
        """The images at ``indices`` (a long tensor or list), their tokens cut to the longest
        kept among them: a downstream batch padded only as far as its own images need
        (:func:`kolmotok.length_batches` groups images so that this is little). The result's
        ``budget`` is that length; it decodes to the same images as the full encoding."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.lengths.device)
        if idx.dim() != 1 or not len(idx):
            raise ValueError(f"take(indices): a non-empty 1-D list of image indices, got shape {tuple(idx.shape)}")
        if int(idx.min()) < -len(self.lengths) or int(idx.max()) >= len(self.lengths):
            raise ValueError(f"take(indices): indices must be in 0..{len(self.lengths) - 1}")
        lengths = self.lengths[idx]
        width = int(lengths.max())
        optional = {name: None if getattr(self, name) is None else getattr(self, name)[idx]
                    for name in ("condition", "guaranteed", "reencoded")}
        return replace(self, tokens=self.tokens[idx, :width], lengths=lengths, epsilon=self.epsilon[idx],
                       budget=width, **optional)


def as_index(value) -> int | None:
    """An integer int / numpy / torch scalar as an int; None for anything else (bools too)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _as_tensor(value, name: str) -> torch.Tensor:
    """A tensor, numpy array or nested list -> tensor; ValueError naming ``name`` otherwise."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor or array of numbers, got {type(value).__name__} {value!r:.60}"
                         ) from None


def _path_list(paths) -> list[str | os.PathLike]:
    """One path or an iterable of paths -> a list of paths; ValueError naming anything else."""
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    if isinstance(paths, (bytes, bytearray)):
        raise ValueError("paths must be str or Path file paths, got bytes (decode with os.fsdecode)")
    if not isinstance(paths, Iterable):
        raise ValueError(f"paths must be an image file path or a list of them, got {type(paths).__name__}")
    items = list(paths)
    for i, p in enumerate(items):
        if not isinstance(p, (str, os.PathLike)):
            raise ValueError(f"paths[{i}] must be a file path (str or Path), got {type(p).__name__} {p!r:.60}")
    return items


def _refit_summary(record: dict | None) -> str | None:
    """A ``fit-halting`` record as one line (None: the halting head is the one trained with the model)."""
    if not isinstance(record, dict):
        return None
    cfg = record.get("config", {})
    return (f"from {record.get('from')}, {cfg.get('steps')} steps on {cfg.get('images')} images of "
            f"{cfg.get('data')}")


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
        self._warned_budgets: set[int] = set()

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
            "halting_refit": _refit_summary(self.meta.get("halting_fit")),
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

    def _check_epsilon(self, epsilon: float | Sequence[float] | torch.Tensor, batch: int | None = None
                       ) -> torch.Tensor:
        """(batch,) eps on the model's device (batch None: any number of values, as given)."""
        try:
            eps = torch.as_tensor(epsilon).detach()
            if eps.dtype == torch.bool or eps.dim() > 1:
                raise TypeError
            eps = eps.to(torch.float32).flatten().clone()  # the Encoding keeps its own copy
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"epsilon must be a number or a 1-D list of one number per image, "
                             f"got {epsilon!r:.60}") from None
        if not eps.numel() or (batch is not None and eps.numel() not in (1, batch)):
            raise ValueError(f"epsilon must be one number or one per image{f' ({batch})' if batch else ''}, "
                             f"got {eps.numel()} values")
        if not torch.isfinite(eps).all() or (eps < 0).any() or (eps > 1).any():
            raise ValueError(f"epsilon must be in [0, 1], a mean absolute error of pixels in [0, 1] "
                             f"(0 = fixed-length mode), got {epsilon!r}")
        return (eps if batch is None else eps.expand(batch)).to(self.device)

    def _check_budget(self, budget: int | None) -> int:
        if budget is None:
            return self.max_tokens
        value = as_index(budget)
        if value is None or not 1 <= value <= self.max_tokens:
            raise ValueError(f"budget must be an integer in 1..{self.max_tokens}, got {budget!r}")
        return value

    def check_options(self, epsilon: float | Sequence[float] | torch.Tensor = 0.05, budget: int | None = None,
                      guarantee: float | None = None) -> None:
        """Raise ValueError for options :meth:`encode` would refuse, before any image is read
        (the CLI checks its flags with this, so a bad flag costs no work)."""
        self._check_epsilon(epsilon)
        self._check_budget(budget)
        if guarantee is not None:
            self.calibration_for(guarantee)

    # ------------------------------------------------------------------ inference
    def calibration_for(self, guarantee: float) -> Calibration:
        """The stored calibration promising ``guarantee`` (= 1 - alpha); ValueError if there is none."""
        guarantee = check_guarantee(guarantee)
        for alpha, cal in self.calibrations.items():
            if abs(alpha - (1 - guarantee)) < 1e-6:
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
            The calibration is measured at the full budget: below it nothing is guaranteed.
        verify: one extra decoder pass checks each image; those that miss epsilon are
            re-encoded at tighter conditions (half, a quarter, then the full budget), stopping
            at the first that meets it or keeps the full budget (nothing tighter exists).
        """
        x = self._check_images(images)
        eps = self._check_epsilon(epsilon, x.shape[0])
        T = self._check_budget(budget)
        cond, guaranteed = eps, None
        if guarantee is not None:
            guarantee = check_guarantee(guarantee)
            cond, guaranteed = self.calibration_for(guarantee).lookup(eps)
            cond = torch.where(eps > 0, cond, 0.0)
            if T < self.max_tokens:  # calibrated with every token available: a smaller budget voids it
                if T not in self._warned_budgets:  # once per budget, not once per batch
                    self._warned_budgets.add(T)
                    log.warning("the calibration assumes the full budget of %d tokens; at budget %d nothing is "
                                "guaranteed (enc.guaranteed is False)", self.max_tokens, T)
                guaranteed = torch.zeros_like(guaranteed)
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

    @torch.no_grad()
    def error_curve(self, images: torch.Tensor, epsilon: float | Sequence[float] | torch.Tensor = 0.0,
                    budget: int | None = None) -> torch.Tensor:
        """Why an image got its count: (B, budget) l1 of the reconstruction from the first t
        tokens, t = 1..budget, of one encoding at ``epsilon`` (per image allowed, e.g. an
        encoding's ``condition``), so ``curve[i, lengths[i] - 1]`` is what ``decode`` gives and
        the shortest t within eps is what halting aimed for. One encoder pass and ``budget``
        decoder passes: for explaining and checking, not for production."""
        x = self._check_images(images)
        eps = self._check_epsilon(epsilon, x.shape[0])
        T = self._check_budget(budget)
        return self.model.prefix_l1(x, self.model.quantize(self.model.encode(x, eps, T)).vectors)

    def calibrate(self, images: torch.Tensor, alpha: float = 0.1, data: str = "images given to tok.calibrate",
                  progress: bool = False) -> Calibration:
        """Split-conformal calibration on held-out ``images`` (never the training or test set):
        afterwards ``encode(..., guarantee=1 - alpha)`` meets eps on at least 1 - alpha of
        images like these. See :mod:`kolmotok.calibration`; :meth:`save_calibration` stores it."""
        return self.calibrate_alphas(images, [alpha], data, progress)[0]

    def calibrate_alphas(self, images: torch.Tensor, alphas: Sequence[float],
                         data: str = "images given to tok.calibrate", progress: bool = False) -> list[Calibration]:
        """:meth:`calibrate` for several miss rates, measuring the images once."""
        from .evaluation.evaluate import run_batched

        if not isinstance(alphas, (list, tuple)) or not alphas:
            raise ValueError(f"alphas must be a non-empty list of miss rates in (0, 1), got {alphas!r:.60}")
        alphas = [check_alpha(a) for a in alphas]
        x = self._check_images(images)
        for alpha in alphas:  # before any measuring
            conformal_rank(len(x), alpha)
        errors = measure_conditions(lambda c: run_batched(self, x, c, quality=False).l1, CONDITION_GRID, progress)
        cals = [calibrate_errors(errors, CONDITION_GRID, alpha, data) for alpha in alphas]
        self.calibrations.update((c.alpha, c) for c in cals)
        return cals

    def save_calibration(self, directory: str | Path | None = None) -> Path:
        """Write every calibration of this tokenizer to ``directory/calibration.json`` (atomic).
        Default: beside the weights it was loaded from, where :func:`load` finds it; a run
        directory means its latest checkpoint. Another directory is written as asked, with a
        warning that ``load`` will not read it from there."""
        directory = self.check_calibration_target(directory)
        return save_calibrations(directory, self.calibrations)

    def check_calibration_target(self, directory: str | Path | None) -> Path:
        """Where :meth:`save_calibration` would write (``directory`` resolved), or ValueError: a
        file, or a checkpoint other than the one this tokenizer was loaded from (a calibration
        holds only for the weights it was measured on). A plain directory gets a warning."""
        if directory is None:
            if self.path is None:
                raise ValueError("save_calibration(): this tokenizer was not loaded from a checkpoint; "
                                 "give the checkpoint directory to write calibration.json into")
            directory = self.path
        if Path(directory).is_file():
            raise ValueError(f"save_calibration({directory}): a file; give the checkpoint directory "
                             "(calibration.json is written inside it)")
        try:
            resolved = resolve_checkpoint(directory)
        except FileNotFoundError:
            log.warning("%s is not a checkpoint directory: kolmotok.load() will not find the calibration there",
                        directory)
            return Path(directory)
        if self.path is not None and resolved.resolve() != Path(self.path).resolve():
            raise ValueError(f"save_calibration({directory}): another checkpoint than the one calibrated "
                             f"({self.path}); a calibration holds only for the weights it was measured on")
        return resolved

    @torch.no_grad()
    def decode(self, encoding: Encoding | torch.Tensor | Sequence[torch.Tensor],
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One decoder pass -> images (B, 3, S, S), from an :class:`Encoding`, from padded tokens +
        lengths (tensors or numpy arrays laid out as in an Encoding), or from a list of per-image
        token sequences (:meth:`Encoding.to_list`). Tokens that do not fit this model raise ValueError."""
        tokens, lengths = self._decode_inputs(encoding, lengths)
        return self.model.detokenize(tokens, lengths)

    def _decode_inputs(self, encoding, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        """decode's arguments -> checked (tokens, lengths) on the model's device."""
        if isinstance(encoding, Encoding):
            if lengths is not None:
                raise ValueError("decode(encoding): an Encoding carries its own lengths; pass lengths only with tokens")
            tokens, lengths = encoding.tokens, encoding.lengths
        elif isinstance(encoding, (list, tuple)):
            if lengths is not None:
                raise ValueError("decode(sequences): a list of per-image token sequences carries its own lengths; "
                                 "pass lengths only with a padded tokens tensor")
            tokens, lengths = self._pad_sequences(encoding)
        elif isinstance(encoding, (torch.Tensor, np.ndarray)):
            if lengths is None:
                raise ValueError("decode(tokens, lengths): lengths are required with a padded tokens tensor "
                                 "(or pass the Encoding itself, or enc.to_list())")
            tokens = encoding
        else:
            raise ValueError("decode() takes an Encoding, padded tokens + lengths, or a list of per-image token "
                             f"sequences, got {type(encoding).__name__}")
        tokens = self._check_tokens(tokens)
        lengths = self._check_lengths(lengths, tokens.shape[0], tokens.shape[1])
        self._check_token_values(tokens, lengths)
        if not self.discrete:  # padding is masked out, but inf or NaN there would still poison the arithmetic
            past = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= lengths[:, None]
            tokens = tokens.masked_fill(past[..., None], 0.0)
        return tokens, lengths

    def _token_spec(self, batched: bool) -> str:
        """What this model's tokens look like: "(B, T, 6) float vectors", "(T,) integer codes in 0..999"."""
        dims = ["B"] * batched + ["T"] + ([] if self.discrete else [str(self.model.cfg.code_dim)])
        shape = f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"
        kind = f"integer codes in 0..{self.model.quantizer.codebook_size - 1}" if self.discrete else "float vectors"
        return f"{shape} {kind}"

    def _check_tokens(self, tokens, name: str = "tokens", batched: bool = True) -> torch.Tensor:
        """Padded tokens (B, T[, d]), or one image's (T[, d]) when not ``batched``, of this model's
        kind (integer codes or float vectors) -> long / float32 on the model's device."""
        tokens = _as_tensor(tokens, name)
        rank = 1 + batched + (not self.discrete)
        right_kind = _is_integer(tokens) if self.discrete else tokens.is_floating_point()
        right_shape = tokens.dim() == rank and (self.discrete or tokens.shape[-1] == self.model.cfg.code_dim)
        if not (right_kind and right_shape):
            raise ValueError(f"{name} must be {self._token_spec(batched)} for this model, "
                             f"got {tuple(tokens.shape)} {_dtype_name(tokens)}")
        if not 1 <= tokens.shape[int(batched)] <= self.max_tokens or tokens.shape[0] < 1:
            raise ValueError(f"{name} must hold 1..{self.max_tokens} tokens per image"
                             f"{' and at least one image' if batched else ''}, got shape {tuple(tokens.shape)}")
        return tokens.to(self.device, torch.long if self.discrete else torch.float32)

    def _pad_sequences(self, sequences: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image token sequences (as from :meth:`Encoding.to_list`) -> padded tokens + lengths."""
        if not sequences:
            raise ValueError("decode() got an empty list of token sequences")
        items = [self._check_tokens(seq, f"tokens[{i}]", batched=False) for i, seq in enumerate(sequences)]
        tokens = pad_sequence(items, batch_first=True, padding_value=-1 if self.discrete else 0.0)
        return tokens, torch.tensor([len(t) for t in items], device=self.device)

    def _check_lengths(self, lengths, batch: int, width: int) -> torch.Tensor:
        lengths = _as_tensor(lengths, "lengths")
        if not _is_integer(lengths) or lengths.shape != (batch,) or (lengths < 1).any() or (lengths > width).any():
            raise ValueError(f"lengths must be ({batch},) integers in 1..{width} (tokens kept per image), "
                             f"got {tuple(lengths.shape)} {_dtype_name(lengths)} {lengths.tolist()!r:.60}")
        return lengths.to(self.device, torch.long)

    def _check_token_values(self, tokens: torch.Tensor, lengths: torch.Tensor) -> None:
        """Continuous tokens must be finite; discrete codes within each image's length must exist."""
        kept = tokens[torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]]  # never read: past it
        if not self.discrete:
            if not torch.isfinite(kept).all():
                raise ValueError("tokens contain NaN or infinite values within the images' lengths")
            return
        bad = kept[(kept < 0) | (kept >= self.model.quantizer.codebook_size)]
        if len(bad):
            raise ValueError(f"tokens must be {self._token_spec(True)} within each image's length, "
                             f"got code {int(bad[0])}")

    def load_images(self, paths: str | Path | Sequence[str | Path]) -> torch.Tensor:
        """Image files (a list of paths, or one path) -> (B, 3, S, S) tensor by the documented
        resize rule (see kolmotok.data.images).

        An unreadable file raises :class:`kolmotok.data.ImageLoadError` naming it.
        """
        return _load_images(_path_list(paths), self.image_size, skip_errors=False).images


def load(path: str | Path | None = None, device: str | torch.device | None = None) -> Tokenizer:
    """Load a tokenizer: the shipped default checkpoint, or a checkpoint / run directory.
    ``device``: "cpu", "cuda", "cuda:1", ... (default: CUDA if available; see :func:`resolve_device`).
    A broken checkpoint or an unusable device raises ValueError naming it; a path holding no
    checkpoint raises FileNotFoundError."""
    device = resolve_device(device)
    ckpt = resolve_checkpoint(shipped_checkpoint() if path is None else path)
    model, meta = load_model(ckpt, device)
    return Tokenizer(model, meta, load_calibrations(ckpt), path=ckpt)

