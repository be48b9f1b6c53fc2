"""Building blocks: transformer layers, the pixel stem/head and the epsilon embedding.

Only torch is imported here; nothing about data, training or logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); key_mask: (B, N) bool, True where a key may be attended to."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


def _num_halvings(patch_size: int) -> int:
    return int(round(math.log2(patch_size)))


class PixelStem(nn.Module):
    """Images (B, 3, H, W) -> 2D tokens (B, G*G, D), G = H / patch_size.

    ``conv``: a 3x3 conv then one stride-2 conv per halving; the locality prior makes
    the tokens informative much earlier in training than a linear patchify (docs/DESIGN.md).
    ``linear``: the plain ViT patch embedding.
    """

    def __init__(self, kind: str, patch_size: int, channels: int, width: int, in_channels: int = 3) -> None:
        super().__init__()
        if kind == "linear":
            self.net = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        else:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.GELU()]
            for _ in range(_num_halvings(patch_size)):
                layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.GELU()]
            layers.append(nn.Conv2d(channels, width, 1))
            self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)  # (B, G*G, D)


class PixelHead(nn.Module):
    """2D tokens (B, G*G, D) -> images (B, 3, H, W); mirror of :class:`PixelStem`."""

    def __init__(self, kind: str, patch_size: int, channels: int, width: int, out_channels: int = 3) -> None:
        super().__init__()
        self.patch_size, self.kind, self.out_channels = patch_size, kind, out_channels
        if kind == "linear":
            self.net = nn.Linear(width, out_channels * patch_size * patch_size)
        else:
            layers: list[nn.Module] = [nn.Conv2d(width, channels, 1)]
            c = channels
            for _ in range(_num_halvings(patch_size)):
                c_next = max(c // 2, 16)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_next, 3, padding=1),
                           nn.GELU()]
                c = c_next
            layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
            self.net = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Module:
        return self.net[-1] if isinstance(self.net, nn.Sequential) else self.net

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = tokens.shape
        G = int(round(math.sqrt(N)))
        if self.kind == "linear":
            p = self.patch_size
            C = self.out_channels
            x = self.net(tokens).view(B, G, G, C, p, p)
            return x.permute(0, 3, 1, 4, 2, 5).reshape(B, C, G * p, G * p)
        return self.net(tokens.transpose(1, 2).reshape(B, D, G, G))


class EpsilonEmbedding(nn.Module):
    """Target error eps (B,) -> one token (B, 1, D).

    A continuous embedding of log(eps) (instead of one learned embedding per eps bin): eps is
    clamped to ``floor`` (so eps = 0, "do your best", maps to the floor), rescaled to
    [0, 1] and expanded in Fourier features before an MLP.
    """

    def __init__(self, width: int, floor: float, num_freqs: int = 8) -> None:
        super().__init__()
        self.log_floor = math.log(floor)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs + 1, width), nn.GELU(), nn.Linear(width, width))

    def log_epsilon(self, epsilon: torch.Tensor) -> torch.Tensor:
        """(B,) log(eps), eps clamped to the floor."""
        return epsilon.float().clamp(min=math.exp(self.log_floor)).log()

    def forward(self, epsilon: torch.Tensor) -> torch.Tensor:
        e = (self.log_epsilon(epsilon) - self.log_floor) / -self.log_floor
        angles = e[:, None] * self.freqs  # (B, F)
        feats = torch.cat([e[:, None], angles.sin(), angles.cos()], dim=-1)
        return self.mlp(feats)[:, None, :]
