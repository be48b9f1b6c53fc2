"""KARL: single-pass adaptive image tokenizer (Duggal et al. 2025, arXiv 2507.07995).

Stages, each a method, wired by :meth:`KARLTokenizer.tokenize` and :meth:`detokenize`::

    images, eps --encode--> latents, halt_logits --halt--> lengths
                --quantize--> codes --decode(codes, lengths)--> images

Variable length stays batched: tokens are a padded ``(B, T, ...)`` tensor plus
``lengths`` (B,); the kept tokens always form a prefix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import EpsilonEmbedding, PixelHead, PixelStem, Transformer
from .quantizers import Quantized, build_quantizer


class Latents(NamedTuple):
    latents: torch.Tensor  # (B, T, D) encoder outputs at the latent-token positions
    halt_logits: torch.Tensor  # (B, T) logit of P(token is unnecessary)


class Tokens(NamedTuple):
    codes: torch.Tensor  # (B, T) long codes (FSQ) or (B, T, d) vectors (continuous); padded past length
    vectors: torch.Tensor  # (B, T, d) quantized vectors the decoder reads
    lengths: torch.Tensor  # (B,) long, 1 <= length <= T
    halt_logits: torch.Tensor  # (B, T)


def prefix_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True for positions < length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def lengths_from_halting(halt_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """First-halted-token semantics (KARL.md "The length").

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
        # encoder: [eps-token, 2D tokens, first T of T_max latent tokens]
        self.stem = PixelStem(cfg.stem, cfg.patch_size, cfg.stem_channels, D)
        self.enc_pos = nn.Parameter(torch.zeros(1, G2, D))
        self.latent_tokens = nn.Parameter(torch.zeros(1, T, D))
        self.eps_embed = EpsilonEmbedding(D, cfg.epsilon_floor)
        self.encoder = Transformer(D, cfg.encoder_layers, cfg.num_heads, cfg.mlp_ratio)
        # heads on the latent outputs: halting, and factorized projection to the token space
        self.halt_head = nn.Linear(D, 1)
        self.to_token = nn.Linear(D, cfg.code_dim)
        self.quantizer = build_quantizer(cfg.quantizer, cfg.fsq_levels)
        # decoder: [mask tokens for every grid position, kept latent tokens + index embedding]
        self.from_token = nn.Linear(cfg.code_dim, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dec_pos = nn.Parameter(torch.zeros(1, G2, D))
        self.index_embed = nn.Parameter(torch.zeros(1, T, D))
        self.decoder = Transformer(D, cfg.decoder_layers, cfg.num_heads, cfg.mlp_ratio)
        self.head = PixelHead(cfg.stem, cfg.patch_size, cfg.stem_channels, D)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.enc_pos, self.latent_tokens, self.mask_token, self.dec_pos, self.index_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # start with P(halt) small so early phase-2 decodes see most tokens
        nn.init.constant_(self.halt_head.bias, -2.0)

    # ------------------------------------------------------------------ stages
    def encode(self, images: torch.Tensor, epsilon: torch.Tensor, num_tokens: int) -> Latents:
        """images (B, 3, H, W) in [0, 1], epsilon (B,), num_tokens T -> Latents with (B, T, ...)."""
        B = images.shape[0]
        grid = self.stem(images * 2.0 - 1.0) + self.enc_pos  # (B, G*G, D)
        eps = self.eps_embed(epsilon)  # (B, 1, D)
        latents = self.latent_tokens[:, :num_tokens].expand(B, -1, -1)  # (B, T, D)
        x = self.encoder(torch.cat([eps, grid, latents], dim=1))
        out = x[:, -num_tokens:]  # (B, T, D)
        return Latents(out, self.halt_head(out).squeeze(-1))

    def halt(self, halt_logits: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
        """Lengths (B,) from halting; epsilon == 0 disables adaptivity (all tokens kept)."""
        lengths = lengths_from_halting(halt_logits, self.cfg.halting_threshold)
        return torch.where(epsilon > 0, lengths, halt_logits.shape[1])

    def quantize(self, latents: torch.Tensor) -> Quantized:
        """(B, T, D) -> Quantized with vectors (B, T, code_dim)."""
        return self.quantizer(self.to_token(latents))

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
        return self.head(x[:, :G2])

    # ------------------------------------------------------------------ wiring
    def tokenize(self, images: torch.Tensor, epsilon: torch.Tensor, budget: int) -> Tokens:
        """One encoder pass: images -> kept tokens (prefix of length lengths[b] <= budget)."""
        lat = self.encode(images, epsilon, budget)
        lengths = self.halt(lat.halt_logits, epsilon)
        q = self.quantize(lat.latents)
        keep = prefix_mask(lengths, budget)
        if q.codes.dim() == 2:
            codes = torch.where(keep, q.codes, -1)
        else:
            codes = q.codes * keep[..., None]
        return Tokens(codes, q.vectors * keep[..., None], lengths, lat.halt_logits)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes_to_vectors(codes)

    def detokenize(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One decoder pass: padded codes + lengths -> images (B, 3, H, W) clamped to [0, 1]."""
        return self.decode(self.codes_to_vectors(codes), lengths).clamp(0.0, 1.0)
