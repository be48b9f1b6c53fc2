"""Token quantizers. One small interface: ``vectors (B, T, d) -> Quantized``.

``FSQQuantizer`` wraps vector-quantize-pytorch's FSQ (finite scalar quantization,
Mentzer et al. 2023): no codebook to collapse, straight-through gradients, and each
token is one integer code in ``[0, prod(levels))``. ``ContinuousQuantizer`` is the
identity, for the continuous-token variant of KARL.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from vector_quantize_pytorch import FSQ


class Quantized(NamedTuple):
    vectors: torch.Tensor  # (B, T, d) float: what the decoder consumes
    codes: torch.Tensor  # (B, T) long for discrete quantizers, (B, T, d) float for continuous


class FSQQuantizer(nn.Module):
    discrete = True

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.fsq = FSQ(levels=list(levels))
        self.codebook_size = math.prod(levels)
        self.bits_per_token = math.log2(self.codebook_size)

    def forward(self, vectors: torch.Tensor) -> Quantized:
        quantized, indices = self.fsq(vectors.float())
        return Quantized(quantized.to(vectors.dtype), indices.long())

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(codes.clamp(min=0))


class ContinuousQuantizer(nn.Module):
    discrete = False
    codebook_size = 0
    bits_per_token = 32.0  # float32 per dimension; multiply by token_dim for a token

    def forward(self, vectors: torch.Tensor) -> Quantized:
        return Quantized(vectors, vectors)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return codes


def build_quantizer(kind: str, levels: tuple[int, ...]) -> nn.Module:
    return FSQQuantizer(levels) if kind == "fsq" else ContinuousQuantizer()
