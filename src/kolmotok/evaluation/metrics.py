"""Image-quality and rank metrics, per image, in torch/numpy."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import to_uint8


def l1_per_image(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) x2 -> (B,) mean absolute error (the eps of KARL)."""
    return (recon - images.to(recon.device)).abs().flatten(1).mean(1)


def psnr_per_image(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    mse = (recon - images.to(recon.device)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim_per_image(recon: torch.Tensor, images: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """SSIM (Wang et al. 2004) with a Gaussian window, averaged over channels and valid positions.

    A 7x7 window (not the usual 11x11) because the tiny preset's images are 32x32.
    """
    x, y = recon.float(), images.to(recon.device).float()
    w = _gaussian_window(window, sigma, x.device)
    c1, c2 = 0.01**2, 0.03**2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def rankdata(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as for Spearman's rho."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(a, b) -> float:
    ra, rb = rankdata(np.asarray(a)), rankdata(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def encode_image(array: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """(H, W, 3) or (H, W) uint8 array -> the file bytes of Pillow's encoder: PNG at maximum compression,
    or JPEG / WebP at ``quality``."""
    buf = io.BytesIO()
    options = {"optimize": True, "compress_level": 9} if fmt == "PNG" else {"quality": quality}
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def luminance_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W) uint8 luminance (Pillow's ITU-R 601 grey conversion)."""
    return np.asarray(Image.fromarray(to_uint8(image)).convert("L"))


def png_bytes(image: torch.Tensor, luma: bool = False) -> int:
    """Size of the image (3, H, W) in [0, 1] as an 8-bit PNG at maximum compression; with
    ``luma``, of its luminance alone as a grey PNG."""
    return len(encode_image(luminance_uint8(image) if luma else to_uint8(image), "PNG"))


def resample_baseline(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Classical reference: area-downsample to grid x grid, bilinear upsample back (3*grid^2 numbers)."""
    small = F.interpolate(images, size=(grid, grid), mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
