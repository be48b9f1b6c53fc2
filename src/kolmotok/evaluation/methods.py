"""Every tokenizer and codec that ``kolmotok bench`` compares, behind one small interface.

A :class:`Method` answers two questions about a batch of images:

* ``at_epsilon(images, eps)``: the representation it picks to reach l1 <= eps, and
* ``at_length(images, n)``: its reconstruction from exactly n tokens (None if it cannot),

each as a :class:`MethodOutput` that also counts the encoder and decoder passes spent on
every image, so the benchmark needs no per-method code. Methods (docs/DESIGN.md §6):

* ``karl``: one encoder + one decoder pass at any eps (``karl@0.9``: calibrated guarantee).
* ``oracle``: our KARL model in fixed-length mode, searched per image for the smallest
  budget that meets eps. Binary search over 1..T_max (the full budget is tried first; an
  image it cannot bring within eps stops there), one encoder + decoder pass per probe.
* ``prefix``: a nested-dropout model; one encoder pass of T_max tokens, then a binary
  search over prefix lengths, one decoder pass per probe.
* ``recurrent``: ALIT-style; rollout r re-encodes the image with the previous tokens and
  adds k, one encoder + decoder pass per rollout; stops at the first rollout meeting eps
  (a linear search: rollouts are sequential by construction).
* ``fixed-N``: one model trained at N tokens; always N.
* ``png`` (lossless), ``jpeg``, ``webp``: bytes; the quality is binary-searched per image
  for the smallest setting meeting eps, falling back to PNG (lossless, always meets eps
  down to 8-bit rounding) where even quality 100 misses.

Searches assume the error falls as the length (or quality) grows; where a model breaks that,
binary search may return a longer length than the shortest one meeting eps.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..api import Tokenizer
from ..data.images import to_uint8
from .metrics import encode_image, l1_per_image


@dataclass
class MethodOutput:
    recon: torch.Tensor  # (B, 3, H, W) in [0, 1]
    size: torch.Tensor  # (B,) float: tokens kept (token methods) or bytes (codecs)
    bits: torch.Tensor  # (B,) float: storage in bits (tokens x bits per token, or bytes x 8)
    encoder_passes: torch.Tensor  # (B,) long
    decoder_passes: torch.Tensor  # (B,) long


class Method:
    name: str = "method"
    unit: str = "tokens"

    def at_epsilon(self, images: torch.Tensor, epsilon: float) -> MethodOutput:
        raise NotImplementedError

    def at_length(self, images: torch.Tensor, n: int) -> MethodOutput | None:
        return None


def _meets(recon: torch.Tensor, images: torch.Tensor, epsilon: float) -> torch.Tensor:
    return l1_per_image(recon, images) <= epsilon


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.long)


class TokenMethod(Method):
    """A method backed by one of our tokenizers; sizes are in tokens."""

    def __init__(self, name: str, tok: Tokenizer) -> None:
        self.name, self.tok = name, tok

    @property
    def max_tokens(self) -> int:
        return self.tok.max_tokens

    def output(self, recon: torch.Tensor, lengths: torch.Tensor, enc_passes: torch.Tensor,
               dec_passes: torch.Tensor) -> MethodOutput:
        size = lengths.float().cpu()
        return MethodOutput(recon.cpu(), size, size * self.tok.bits_per_token, enc_passes.cpu(), dec_passes.cpu())

    def single_pass(self, images: torch.Tensor, epsilon: float, budget: int | None = None,
                    **kwargs) -> MethodOutput:
        enc = self.tok.encode(images, epsilon=epsilon, budget=budget, **kwargs)
        n = images.shape[0]
        extra = enc.reencoded.cpu() if enc.reencoded is not None else torch.zeros(n, dtype=torch.long)
        checks = _ones(n) if enc.reencoded is not None else torch.zeros(n, dtype=torch.long)
        return self.output(self.tok.decode(enc), enc.lengths, 1 + extra, 1 + checks + extra)


def shortest_meeting(images: torch.Tensor, epsilon: float, max_len: int,
                     probe: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image binary search for the shortest length in 1..max_len whose reconstruction meets eps.

    probe(indices, lengths) -> reconstructions of images[indices] at those lengths (one pass each).
    Returns (lengths, reconstructions, probes per image). The full length is probed first; an
    image that misses eps even there keeps it (1 probe).
    """
    B = images.shape[0]
    everyone = torch.arange(B)
    hi = torch.full((B,), max_len, dtype=torch.long)
    lo = torch.ones(B, dtype=torch.long)
    best = probe(everyone, hi).cpu()
    probes = torch.ones(B, dtype=torch.long)
    active = _meets(best, images, epsilon) & (lo < hi)
    while active.any():
        idx = active.nonzero().squeeze(1)
        mid = (lo[idx] + hi[idx]) // 2
        rec = probe(idx, mid).cpu()
        probes[idx] += 1
        ok = _meets(rec, images[idx], epsilon)
        hi[idx] = torch.where(ok, mid, hi[idx])
        lo[idx] = torch.where(ok, lo[idx], mid + 1)
        best[idx[ok]] = rec[ok]
        active[idx] = lo[idx] < hi[idx]
    return hi, best, probes


class KARLMethod(TokenMethod):
    """Single pass; with ``guarantee`` the calibrated condition, with ``verify`` the checked variant."""

    def __init__(self, name: str, tok: Tokenizer, guarantee: float | None = None, verify: bool = False) -> None:
        super().__init__(name, tok)
        self.options = {"guarantee": guarantee, "verify": verify}

    def at_epsilon(self, images, epsilon):
        return self.single_pass(images, epsilon, **self.options)

    def at_length(self, images, n):
        return self.single_pass(images, 0.0, budget=n)


class OracleMethod(TokenMethod):
    """Our model in fixed-length mode, searched per image: each probe is 1 encoder + 1 decoder pass."""

    def _probe(self, images: torch.Tensor, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(idx), *images.shape[1:])
        for n in lengths.unique().tolist():  # the encoder's budget is per batch: group by length
            sel = (lengths == n).nonzero().squeeze(1)
            out[sel] = self.tok.decode(self.tok.encode(images[idx[sel]], epsilon=0.0, budget=n)).cpu()
        return out

    def at_epsilon(self, images, epsilon):
        lengths, recon, probes = shortest_meeting(images, epsilon, self.max_tokens,
                                                  lambda idx, n: self._probe(images, idx, n))
        return self.output(recon, lengths, probes, probes)

    def at_length(self, images, n):
        return self.single_pass(images, 0.0, budget=n)


class PrefixMethod(TokenMethod):
    """Nested-dropout model: 1 encoder pass of T_max tokens, then one decoder pass per probed prefix."""

    def at_epsilon(self, images, epsilon):
        enc = self.tok.encode(images, epsilon=0.0)
        lengths, recon, probes = shortest_meeting(
            images, epsilon, self.max_tokens,
            lambda idx, n: self.tok.decode(enc.tokens[idx.to(enc.tokens.device)], n))
        return self.output(recon, lengths, _ones(len(images)), probes)

    def at_length(self, images, n):
        enc = self.tok.encode(images, epsilon=0.0)
        lengths = torch.full((len(images),), n, dtype=torch.long)
        return self.output(self.tok.decode(enc.tokens, lengths), lengths, _ones(len(images)), _ones(len(images)))


class RecurrentMethod(TokenMethod):
    """ALIT-style: rollouts of k tokens, each 1 encoder + 1 decoder pass, until eps is met."""

    @torch.no_grad()
    def at_epsilon(self, images, epsilon, rollouts: int | None = None):
        model, k = self.tok.model, self.tok.model.cfg.recurrent_step
        x = images.to(self.tok.device)
        B = len(x)
        rollouts = rollouts or self.max_tokens // k
        lengths = torch.full((B,), rollouts * k, dtype=torch.long)
        recon = torch.empty(images.shape)
        passes = torch.zeros(B, dtype=torch.long)
        active, previous = torch.arange(B), None
        for r in range(1, rollouts + 1):
            vectors = model.rollout(x[active.to(x.device)], previous)
            rec = model.decode(vectors, torch.full((len(active),), r * k, device=x.device)).clamp(0, 1).cpu()
            passes[active] += 1
            done = _meets(rec, images[active], epsilon) | (r == rollouts)
            lengths[active[done]] = r * k
            recon[active[done]] = rec[done]
            active, previous = active[~done], vectors[~done.to(x.device)]
            if not len(active):
                break
        return self.output(recon, lengths, passes, passes)

    def at_length(self, images, n):
        k = self.tok.model.cfg.recurrent_step
        if n % k:
            return None
        return self.at_epsilon(images, -1.0, rollouts=n // k)  # eps < 0: never met, run all n/k rollouts


class FixedMethod(TokenMethod):
    """A model trained at one length: always ``length`` tokens, one pass each way."""

    def __init__(self, name: str, tok: Tokenizer, length: int) -> None:
        super().__init__(name, tok)
        self.length = length

    def at_epsilon(self, images, epsilon):
        return self.single_pass(images, 0.0, budget=self.length)

    def at_length(self, images, n):
        return self.single_pass(images, 0.0, budget=n) if n == self.length else None


def method_for(kind: str, name: str, tok: Tokenizer, fixed_length: int = 0) -> Method:
    """The inference method of a model trained with objective ``kind`` (config.OBJECTIVES)."""
    if kind == "fixed":
        return FixedMethod(name, tok, fixed_length)
    return {"karl": KARLMethod, "prefix": PrefixMethod, "recurrent": RecurrentMethod}[kind](name, tok)


# ------------------------------------------------------------------ classical codecs
def codec_roundtrip(array: np.ndarray, fmt: str, quality: int | None = None) -> tuple[torch.Tensor, int]:
    """Encode an (H, W, 3) uint8 array with Pillow and decode it -> ((3, H, W) in [0, 1], bytes)."""
    data = encode_image(array, fmt, quality)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded).permute(2, 0, 1).contiguous(), len(data)


class CodecMethod(Method):
    """PNG, or JPEG / WebP at the lowest quality meeting eps (binary search over 1..100)."""

    unit = "bytes"

    def __init__(self, fmt: str) -> None:
        self.fmt, self.name = fmt.upper(), fmt.lower()
        if self.fmt == "WEBP":
            from PIL import features

            if not features.check("webp"):
                raise ValueError("this Pillow build has no WebP support; drop 'webp' from --methods")

    def _one(self, image: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, int, int]:
        array = to_uint8(image)
        if self.fmt == "PNG":
            recon, size = codec_roundtrip(array, "PNG")
            return recon, size, 1
        lo, hi, tries, best = 1, 100, 0, None
        while lo <= hi:
            q = (lo + hi) // 2
            recon, size = codec_roundtrip(array, self.fmt, q)
            tries += 1
            if float((recon - image).abs().mean()) <= epsilon:
                best, hi = (recon, size), q - 1
            else:
                lo = q + 1
        if best is None:  # even quality 100 misses: lossless
            recon, size = codec_roundtrip(array, "PNG")
            return recon, size, tries + 1
        return best[0], best[1], tries

    def at_epsilon(self, images, epsilon):
        rows = [self._one(im, epsilon) for im in images.cpu()]
        recon = torch.stack([r[0] for r in rows])
        size = torch.tensor([float(r[1]) for r in rows])
        tries = torch.tensor([r[2] for r in rows], dtype=torch.long)
        return MethodOutput(recon, size, size * 8, tries, tries)
