"""Metrics and the learning-rate schedule against independent references."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import peak_signal_noise_ratio

from conftest import smooth_images
from kolmotok.data.shapes import draw
from kolmotok.evaluation.metrics import (
    l1_per_image,
    png_bytes,
    psnr_per_image,
    resample_baseline,
    spearman,
    ssim_per_image,
)
from kolmotok.training.trainer import lr_factor


def pairs():
    clean = smooth_images(4, 0, noise=0.0)
    g = torch.Generator().manual_seed(1)
    noisy = (clean + torch.randn(clean.shape, generator=g) * torch.tensor([0.01, 0.03, 0.1, 0.3])[:, None, None, None])
    return noisy.clamp(0, 1), clean


def test_l1_and_psnr_match_their_definitions():
    recon, images = pairs()
    for r, x, l1, p in zip(recon, images, l1_per_image(recon, images), psnr_per_image(recon, images)):
        assert l1.item() == pytest.approx(np.abs(r.numpy() - x.numpy()).mean(), rel=1e-5)
        assert p.item() == pytest.approx(peak_signal_noise_ratio(x.numpy(), r.numpy(), data_range=1.0), rel=1e-4)


def _ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 7, sigma: float = 1.5) -> float:
    """SSIM of Wang et al. (2004), one window position and channel at a time."""
    t = np.arange(size) - (size - 1) / 2
    w = np.exp(-t**2 / (2 * sigma**2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    c1, c2, values = 0.01**2, 0.03**2, []
    for c in range(3):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[c, i:i + size, j:j + size], y[c, i:i + size, j:j + size]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb, cov = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2, (w * a * b).sum() - ma * mb
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_window_by_window_reference():
    recon, images = pairs()
    got = ssim_per_image(recon, images)
    want = [_ssim_reference(r.double().numpy(), x.double().numpy()) for r, x in zip(recon, images)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert (got.diff() < 0).all(), "more noise, lower SSIM"
    torch.testing.assert_close(ssim_per_image(images, images), torch.ones(4))


def test_spearman_matches_scipy_with_ties_and_is_undefined_for_constants():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    b[:10] = b[10:20]  # ties in both
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones(40)))


def test_resampling_baseline_keeps_flat_images_and_improves_with_the_grid():
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(resample_baseline(flat, 4), flat)
    images = smooth_images(8, 2, size=32, noise=0.2)
    errors = [l1_per_image(resample_baseline(images, n), images).mean().item() for n in (2, 4, 8, 16, 32)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6


def test_learning_rate_warms_up_then_follows_a_cosine_to_its_floor():
    warm, total, floor = 10, 110, 0.05
    f = [lr_factor(s, warm, total, floor) for s in range(total + 20)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert f[warm] == pytest.approx(1.0) and f[warm + 50] == pytest.approx((1 + floor) / 2)
    assert f[total] == pytest.approx(floor) and f[-1] == pytest.approx(floor), "stays at the floor past the end"
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))


def test_shapes_complexity_orders_png_size():
    """The ground truth of `shapes` agrees with a classical codec: more primitives, more PNG
    bytes; flat images the fewest, noise the most. (Linear gradients, complexity 1, are the
    exception: PNG spends more on them than on a few primitives.)"""
    images, complexity = draw(200, 32, torch.Generator().manual_seed(0), "primitives")
    sizes = [png_bytes(im) for im in images]
    assert len(set(complexity.tolist())) == 8 and spearman(complexity.numpy(), sizes) > 0.7
    flat, noise = (draw(20, 32, torch.Generator().manual_seed(1), kind)[0] for kind in ("flat", "noise"))
    assert max(png_bytes(im) for im in flat) < min(sizes) and max(sizes) < min(png_bytes(im) for im in noise)


def test_luma_png_bytes_count_luminance_only():
    """The luminance PNG of a grey image is its grey PNG; a pattern in colour alone (R and B moved
    against each other so that 0.299 R + 0.587 G + 0.114 B stays put) costs RGB PNG bytes, not luma ones."""
    import io

    from PIL import Image

    grey = smooth_images(1, 3, size=32, noise=0.3)[0].mean(0, keepdim=True).expand(3, -1, -1)
    buf = io.BytesIO()
    Image.fromarray((grey[0].numpy() * 255 + 0.5).astype(np.uint8)).save(buf, "PNG", optimize=True, compress_level=9)
    assert png_bytes(grey, luma=True) == len(buf.getvalue())
    chroma = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0)) - 0.5
    tint = torch.cat([chroma * 0.114, torch.zeros_like(chroma), -chroma * 0.299]) * 2
    flat_tinted = torch.full((3, 32, 32), 0.5) + tint
    flat = torch.full((3, 32, 32), 0.5)
    assert png_bytes(flat_tinted) > 10 * png_bytes(flat)  # RGB PNG pays for the colour pattern
    assert png_bytes(flat_tinted, luma=True) < 2 * png_bytes(flat, luma=True)  # its luminance is (nearly) flat
