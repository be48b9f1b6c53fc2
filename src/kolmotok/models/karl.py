"""KARL: single-pass adaptive image tokenizer (Duggal et al. 2025, arXiv 2507.07995).

Stages, each a method, wired by :meth:`KARLTokenizer.tokenize` and :meth:`detokenize`::

    images, eps --encode--> latents, halt_logits --halt--> lengths
                --quantize--> codes --decode(codes, lengths)--> images

Variable length stays batched: tokens are a padded ``(B, T, ...)`` tensor plus
``lengths`` (B,); the kept tokens always form a prefix.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .base_ae import PREFIX as BASE_PREFIX
from .base_ae import BaseAutoencoder
from .blocks import EpsilonEmbedding, PixelHead, PixelStem, Transformer
from .quantizers import Quantized, build_quantizer

log = logging.getLogger(__name__)

# principal components whose singular value is below this share of the largest carry no variance
# of the data, only rounding noise: whitening them would multiply that noise by ~1e6
PCA_RANK_TOLERANCE = 1e-4

EPS_REFERENCE = 0.05  # where the direct eps term of the halting logits is zero


def full_precision(t: torch.Tensor):
    """Context in which mixed-precision autocast is off, for work on ``t``'s device that must
    stay fp32 (the quantizer; the linear path's whitened PCA weights and exact errors)."""
    return torch.autocast(t.device.type, enabled=False)


class Latents(NamedTuple):
    latents: torch.Tensor  # (B, T, D) encoder outputs at the latent-token positions
    halt_logits: torch.Tensor  # (B, T) logit of P(token is unnecessary)
    direct: torch.Tensor | None  # (B, T, code_dim) linear-path contribution, or None
    linear_errors: torch.Tensor | None = None  # (B, T) the linear path's prefix errors, when halting reads them


class LinearPath(nn.Module):
    """A linear token path beside the transformers, initialised by PCA (:meth:`init_pca`).

    Why: a 1D tokenizer whose only route is attention (grid -> latents -> mask tokens)
    learns very slowly from scratch: at first every latent sees the mean of the grid and
    every mask token the mean of the latents, so for thousands of steps it predicts a
    blur and extra tokens do not help (docs/DESIGN.md has the curves). This path starts
    the model as the best linear tokenizer -- token i holds principal components
    i*d .. i*d+d-1 of the training images, so tokens are ordered coarse to fine and a
    prefix is a truncated PCA -- and the transformers learn the non-linear residual.

    encode: images (B, 3, H, W) -> (B, T_max, d) added to the token projection before quantizing.
    decode: token vectors (B, T_max, d), halted ones zero -> a base image (B, 3, H, W) that
    the decoder's output is added to.
    """

    def __init__(self, resolution: int, max_tokens: int, code_dim: int) -> None:
        super().__init__()
        self.resolution, self.max_tokens, self.code_dim = resolution, max_tokens, code_dim
        pixels, k = 3 * resolution * resolution, max_tokens * code_dim
        # Buffers, not parameters: the PCA basis stays fixed during training. Trained with
        # AdamW its whitened (large-gain) weights were knocked off within ~100 steps.
        self.register_buffer("enc_weight", torch.zeros(k, pixels))
        self.register_buffer("enc_bias", torch.zeros(k))
        self.register_buffer("dec_weight", torch.zeros(pixels, k))
        self.register_buffer("dec_bias", torch.full((pixels,), 0.5))

    def _small(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.resolution:
            return images.flatten(1)
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="area").flatten(1)

    # every method runs in fp32, under mixed precision too: the whitened weights have large gains,
    # and the prefix errors feed the halting head the exact values it sees at inference

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with full_precision(images):
            return F.linear(self._small(images.float()), self.enc_weight, self.enc_bias).view(
                -1, self.max_tokens, self.code_dim)

    def decode(self, vectors: torch.Tensor, size: int) -> torch.Tensor:
        r = self.resolution
        with full_precision(vectors):
            base = F.linear(vectors.flatten(1).float(), self.dec_weight, self.dec_bias).view(-1, 3, r, r)
            return base if size == r else F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def prefix_errors(self, images: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(B, T, d) token vectors -> (B, T) mean l1 of this path's reconstruction (clamped to
        [0, 1]) from the first t tokens, t = 1..T, against the image at this path's resolution.
        The tokens are added in order, one small matrix product each; no decoder pass."""
        T = vectors.shape[1]
        weight = self.dec_weight.view(-1, self.max_tokens, self.code_dim)[:, :T]
        weight = weight.permute(1, 2, 0).float().contiguous()  # (T, d, P)
        with full_precision(images):  # addmm would otherwise accumulate in bf16 / fp16
            target = self._small(images.float())
            recon = self.dec_bias.float().expand_as(target)
            errors = []
            for t in range(T):  # a loop keeps the working set at (B, P): 3x faster on CPU than one (B, T, P) tensor
                recon = torch.addmm(recon, vectors[:, t].float(), weight[t])  # (out of place: FLOP counters see it)
                errors.append((recon.clamp(0.0, 1.0) - target).abs().mean(-1))
        return torch.stack(errors, 1)

    @torch.no_grad()
    def init_pca(self, images: torch.Tensor, quantizer: nn.Module) -> None:
        """Encoder <- whitened top principal components; decoder <- least-squares read-out of
        the *quantized* codes (so FSQ rounding is accounted for). images: (N, 3, H, W)."""
        x = self._small(images.float())
        mean = x.mean(0)
        _, s, v = torch.linalg.svd(x - mean, full_matrices=False)  # v: (min(N, P), P)
        k = self.max_tokens * self.code_dim
        comps = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
        n = int((s[:k] > PCA_RANK_TOLERANCE * s[0]).sum()) if len(s) else 0  # components with variance
        if n < k:
            log.warning("linear path: the %d initialisation images span only %d of %d principal components "
                        "(too few or too similar training images); its linear part is whole for the first %d "
                        "tokens only and starts empty beyond them", len(x), n, k, n // self.code_dim)
        std = s[:n] / max(1, len(x) - 1) ** 0.5
        comps[:n] = v[:n] / std[:, None]  # whitened: every coefficient ~ unit variance, what FSQ expects
        self.enc_weight.copy_(comps)
        self.enc_bias.copy_(-(comps @ mean))
        codes = quantizer(self.encode(images.float())).vectors.flatten(1)  # (N, k)
        design = torch.cat([codes, torch.ones(len(codes), 1, dtype=codes.dtype, device=codes.device)], 1)
        ridge = 1e-3 * torch.eye(design.shape[1], dtype=design.dtype, device=design.device)
        sol = torch.linalg.solve(design.T @ design + ridge, design.T @ x)  # (k + 1, P)
        self.dec_weight.copy_(sol[:-1].T)
        self.dec_bias.copy_(sol[-1])


class Tokens(NamedTuple):
    codes: torch.Tensor  # (B, T) long codes (FSQ) or (B, T, d) vectors (continuous); padded past length
    vectors: torch.Tensor  # (B, T, d) quantized vectors the decoder reads
    lengths: torch.Tensor  # (B,) long, 1 <= length <= T
    halt_logits: torch.Tensor  # (B, T)


def prefix_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True for positions < length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def lengths_from_halting(halt_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """First-halted-token semantics (KARL's halting).

    A token halts when sigmoid(logit) > threshold; the representation stops at the
    first halted token, so every representation is a prefix. The first token is
    always kept (length >= 1). halt_logits: (B, T) -> lengths (B,) long.
    """
    halted = torch.sigmoid(halt_logits.float()) > threshold  # (B, T)
    halted[:, 0] = False
    T = halted.shape[1]
    first = torch.where(halted, torch.arange(T, device=halted.device), T)  # index or T if none
    return first.min(dim=1).values.long()


class KARLTokenizer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D, G2, T = cfg.width, cfg.grid_size**2, cfg.max_tokens
        # optional frozen base autoencoder: the 2D tokens come from its latent grid (KARL's setting)
        self.base = BaseAutoencoder(cfg.base_autoencoder) if cfg.base_autoencoder else None
        C = cfg.base_channels if self.base is not None else 3
        # encoder: [eps-token, 2D tokens, first T of T_max latent tokens]
        self.stem = PixelStem(cfg.stem, cfg.patch_size, cfg.stem_channels, D, in_channels=C)
        self.enc_pos = nn.Parameter(torch.zeros(1, G2, D))
        self.latent_tokens = nn.Parameter(torch.zeros(1, T, D))
        self.eps_embed = EpsilonEmbedding(D, cfg.epsilon_floor)
        self.encoder = Transformer(D, cfg.encoder_layers, cfg.num_heads, cfg.mlp_ratio)
        # heads on the latent outputs: halting, and factorized projection to the token space
        self.halt_head = nn.Linear(D, 1)
        # optional direct eps path into the halting logits (see halting_logits)
        self.halt_eps_gain = (nn.Parameter(torch.tensor(math.log(math.expm1(cfg.halting_epsilon_gain))))
                              if cfg.halting_epsilon_gain else None)
        # optional MLP over [latent, log(e_t / eps), log(eps / EPS_REFERENCE)] (see halting_logits)
        H = cfg.halting_hidden
        self.halt_mlp = nn.Sequential(nn.Linear(D + 2, H), nn.GELU(), nn.Linear(H, 1)) if H else None
        self.to_token = nn.Linear(D, cfg.code_dim)
        self.quantizer = build_quantizer(cfg.quantizer, cfg.fsq_levels)
        # decoder: [mask tokens for every grid position, kept latent tokens + index embedding]
        self.from_token = nn.Linear(cfg.code_dim, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dec_pos = nn.Parameter(torch.zeros(1, G2, D))
        self.index_embed = nn.Parameter(torch.zeros(1, T, D))
        self.linear_path = LinearPath(cfg.linear_path_resolution, T, cfg.code_dim) if cfg.linear_path else None
        self.decoder = Transformer(D, cfg.decoder_layers, cfg.num_heads, cfg.mlp_ratio)
        self.head = PixelHead(cfg.stem, cfg.patch_size, cfg.stem_channels, D, out_channels=C)
        # recurrent baseline (ALIT-style) only: the tokens of the previous rollout, fed back
        self.feedback = nn.Linear(cfg.code_dim, D) if cfg.recurrent_step else None
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.enc_pos, self.latent_tokens, self.mask_token, self.dec_pos, self.index_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith(BASE_PREFIX):  # the base autoencoder stays as loaded
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # variance-preserving init where signal must pass at full scale from step one (FSQ
        # rounds small values to its zero level, so a 0.02-scale token projection passes nothing)
        nn.init.xavier_uniform_(self.from_token.weight)
        if self.linear_path is not None:
            # the model starts as the linear (PCA) tokenizer: the transformer branches begin at
            # zero and learn the residual (call init_linear_path before training)
            for m in (self.to_token, self.head.output_layer):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        else:
            nn.init.xavier_uniform_(self.to_token.weight)
        # start with P(halt) small so early phase-2 decodes see most tokens
        nn.init.constant_(self.halt_head.bias, -2.0)
        if self.feedback is not None:  # zero: a rollout starts as a plain encode at its budget
            nn.init.zeros_(self.feedback.weight)

    # ------------------------------------------------------------------ stages
    def encode(self, images: torch.Tensor, epsilon: torch.Tensor, num_tokens: int,
               previous: torch.Tensor | None = None) -> Latents:
        """images (B, 3, H, W) in [0, 1], epsilon (B,), num_tokens T -> Latents with (B, T, ...).

        previous (recurrent models only): (B, P, code_dim) token vectors of the previous
        rollout, P < T, added to the first P latent inputs; the rollout re-encodes them with
        the image and outputs all T tokens (ALIT-style).
        """
        B = images.shape[0]
        pixels_or_latents = images * 2.0 - 1.0 if self.base is None else self.base.encode(images)
        grid = self.stem(pixels_or_latents) + self.enc_pos  # (B, G*G, D)
        eps = self.eps_embed(epsilon)  # (B, 1, D)
        latents = self.latent_tokens[:, :num_tokens].expand(B, -1, -1)  # (B, T, D)
        if previous is not None:
            if self.feedback is None:
                raise ValueError("previous tokens given to a model without recurrent_step")
            latents = latents + F.pad(self.feedback(previous), (0, 0, 0, num_tokens - previous.shape[1]))
        x = self.encoder(torch.cat([eps, grid, latents], dim=1))
        out = x[:, -num_tokens:]  # (B, T, D)
        direct = None if self.linear_path is None else self.linear_path.encode(images)[:, :num_tokens]
        linear_errors = None if self.halt_mlp is None else self.linear_path.prefix_errors(images, direct)
        return Latents(out, self.halting_logits(out, epsilon, linear_errors), direct, linear_errors)

    def halting_logits(self, latents: torch.Tensor, epsilon: torch.Tensor,
                       linear_errors: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D), (B,) -> (B, T) logits of P(halt).

        KARL's head reads eps only through the eps-token's effect on each latent. With
        ``halting_epsilon_gain`` the logit also gets g * log(eps / EPS_REFERENCE), g = softplus(a) > 0
        learned: a looser target can only make halting more likely, and targets outside the
        range seen in training (a flat image asked for 0.05 after being trained on its own
        0.005) extrapolate in the right direction.

        With ``halting_hidden`` an MLP adds a term read from each latent together with
        log(e_t / eps), where ``linear_errors`` e_t (B, T) is the linear path's l1 error with the
        first t tokens (:meth:`LinearPath.prefix_errors`): the error curve of the part of the
        model that carries most of the reconstruction, which the latents alone describe only
        roughly. It is computed inside the encoder pass, without decoding.
        """
        logits = self.halt_head(latents).squeeze(-1)
        log_eps = self.eps_embed.log_epsilon(epsilon)  # (B,)
        shift = log_eps - math.log(EPS_REFERENCE)
        if self.halt_eps_gain is not None:
            logits = logits + F.softplus(self.halt_eps_gain) * shift[:, None].to(logits.dtype)
        if self.halt_mlp is not None:
            if linear_errors is None:
                raise ValueError("this model's halting head needs the linear path's prefix errors")
            ratio = linear_errors.clamp(min=1e-6).log() - log_eps[:, None]  # (B, T)
            features = torch.stack([ratio, shift[:, None].expand_as(ratio)], -1).to(latents.dtype)
            logits = logits + self.halt_mlp(torch.cat([latents, features], -1)).squeeze(-1)
        return logits

    def halt(self, halt_logits: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
        """Lengths (B,) from halting; epsilon == 0 disables adaptivity (all tokens kept)."""
        lengths = lengths_from_halting(halt_logits, self.cfg.halting_threshold)
        return torch.where(epsilon > 0, lengths, halt_logits.shape[1])

    def quantize(self, latents: Latents) -> Quantized:
        """Latents (B, T, D) -> Quantized with vectors (B, T, code_dim)."""
        pre = self.to_token(latents.latents)
        if latents.direct is not None:
            pre = pre + latents.direct
        with full_precision(pre):
            return self.quantizer(pre.float())

    def decode(self, vectors: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """vectors (B, T, code_dim), lengths (B,) -> images (B, 3, H, W), unclamped.

        Halted tokens are dropped: the batch is cut to the longest kept prefix and the
        rest are hidden by the attention key mask, so the decoder never reads them.
        """
        B = vectors.shape[0]
        L = int(lengths.max())
        keep = prefix_mask(lengths, L)  # (B, L)
        tokens = self.from_token(vectors[:, :L]) + self.index_embed[:, :L]
        tokens = torch.where(keep[..., None], tokens, torch.zeros_like(tokens))
        grid = (self.mask_token + self.dec_pos).expand(B, -1, -1)  # (B, G*G, D)
        G2 = grid.shape[1]
        key_mask = torch.cat([keep.new_ones(B, G2), keep], dim=1)
        x = self.decoder(torch.cat([grid, tokens], dim=1), key_mask)
        out = self.head(x[:, :G2])
        if self.base is not None:  # predicted latent grid -> pixels through the frozen decoder
            out = self.base.decode(out)
        if self.linear_path is not None:
            kept = vectors[:, :L] * keep[..., None]  # halted tokens are zeros here
            out = out + self.linear_path.decode(F.pad(kept, (0, 0, 0, self.cfg.max_tokens - L)), self.cfg.image_size)
        return out

    # ------------------------------------------------------------------ weights
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint: everything except the frozen base autoencoder (stored elsewhere)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BASE_PREFIX)}

    def load_own_state_dict(self, state: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> None:
        """Load :meth:`own_state_dict` output; only the base autoencoder (and ``allow_missing``
        prefixes) may be absent."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith((BASE_PREFIX, *allow_missing))]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")

    @torch.no_grad()
    def init_linear_path(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation (PCA) of the linear token path; see :class:`LinearPath`."""
        if self.linear_path is not None:
            self.linear_path.init_pca(images, self.quantizer)

    def rollout(self, images: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Recurrent models: one rollout (one encoder pass, eps = 0) -> token vectors
        (B, P + recurrent_step, code_dim), the previous rollout's P tokens re-encoded plus new ones."""
        count = (0 if previous is None else previous.shape[1]) + self.cfg.recurrent_step
        zeros = torch.zeros(images.shape[0], device=images.device)
        return self.quantize(self.encode(images, zeros, count, previous)).vectors

    # ------------------------------------------------------------------ wiring
    def tokenize(self, images: torch.Tensor, epsilon: torch.Tensor, budget: int) -> Tokens:
        """One encoder pass: images -> kept tokens (prefix of length lengths[b] <= budget)."""
        lat = self.encode(images, epsilon, budget)
        lengths = self.halt(lat.halt_logits, epsilon)
        q = self.quantize(lat)
        keep = prefix_mask(lengths, budget)
        if q.codes.dim() == 2:
            codes = torch.where(keep, q.codes, -1)
        else:
            codes = q.codes * keep[..., None]
        return Tokens(codes, q.vectors * keep[..., None], lengths, lat.halt_logits)

    def prefix_l1(self, images: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, T, d) token vectors -> (B, T): l1 of the reconstruction from the
        first t of them, t = 1..T (one decoder pass per length)."""
        from ..evaluation.metrics import l1_per_image

        B, T = vectors.shape[:2]
        return torch.stack([l1_per_image(self.decode(vectors, torch.full((B,), t, device=vectors.device))
                                         .clamp(0.0, 1.0), images) for t in range(1, T + 1)], 1)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes_to_vectors(codes)

    def detokenize(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One decoder pass: padded codes + lengths -> images (B, 3, H, W) clamped to [0, 1]."""
        return self.decode(self.codes_to_vectors(codes), lengths).clamp(0.0, 1.0)
