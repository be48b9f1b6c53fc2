"""Optional frozen base 2D autoencoder (KARL's latent-distillation setting), from diffusers.

The tokenizer's encoder then reads the autoencoder's latent grid instead of pixels, its
decoder predicts that latent grid, and the frozen autoencoder decoder turns the prediction
into pixels, so the loss and eps stay in pixel l1. Only local directories are read
(``save_pretrained`` output of ``diffusers.AutoencoderKL`` or ``diffusers.VQModel``); nothing is
downloaded. Its weights are not part of our checkpoints: ``config.json`` records the path.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

KINDS = ("AutoencoderKL", "VQModel")
PREFIX = "base."  # state_dict prefix of the frozen autoencoder inside KARLTokenizer


def describe(path: str) -> tuple[int, int]:
    """(latent channels, downsampling factor) from the autoencoder's config.json, without loading it."""
    from ..config import BASE_REQUIRED

    if path == BASE_REQUIRED:
        raise ValueError("this preset tokenizes a base autoencoder's latents: pass --base-autoencoder DIR "
                         "(a local diffusers AutoencoderKL/VQModel directory)")
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"model.base_autoencoder {path!r}: no config.json there; expected a local directory "
                         f"written by diffusers' AutoencoderKL/VQModel.save_pretrained")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("_class_name") not in KINDS:
        raise ValueError(f"model.base_autoencoder {path!r}: a {cfg.get('_class_name')!r}, expected one of {KINDS}")
    channels = cfg.get("vq_embed_dim") or cfg["latent_channels"]
    return int(channels), 2 ** (len(cfg["block_out_channels"]) - 1)


class BaseAutoencoder(nn.Module):
    """Frozen diffusers autoencoder: images in [0, 1] <-> scaled latent grids."""

    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            import diffusers
        except ImportError:
            raise ValueError("model.base_autoencoder needs diffusers: pip install diffusers") from None
        describe(path)
        kind = json.loads((Path(path) / "config.json").read_text())["_class_name"]
        self.kind = kind
        self.ae = getattr(diffusers, kind).from_pretrained(path, local_files_only=True).eval()
        self.ae.requires_grad_(False)
        self.scale = float(getattr(self.ae.config, "scaling_factor", 1.0) or 1.0)

    def train(self, mode: bool = True) -> BaseAutoencoder:
        return super().train(False)  # always frozen, eval behaviour

    @staticmethod
    def _no_fp16(t: torch.Tensor):
        """Several autoencoders (SDXL's, for one) overflow in fp16 and give inf / NaN: under fp16
        autocast this one runs in fp32 instead. bf16 has fp32's range and stays on."""
        device = t.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
            return torch.autocast(device, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with self._no_fp16(images):
            x = images.float() * 2.0 - 1.0
            if self.kind == "AutoencoderKL":
                z = self.ae.encode(x).latent_dist.mode()
            else:
                z = self.ae.encode(x).latents
            return z * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable (the tokenizer's decoder learns through it); output roughly in [0, 1]."""
        with self._no_fp16(latents):
            return (self.ae.decode(latents.float() / self.scale).sample + 1.0) / 2.0
