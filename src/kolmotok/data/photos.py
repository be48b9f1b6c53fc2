"""``photos``: crops of the photographs shipped inside the scikit-image package.

The split is by source photograph, so test (and calibration) crops come from
photographs never trained on. The lists below are the documented, fixed split.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import to_rgb_array

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut.png", "camera.png", "cell.png", "chessboard_RGB.png", "clock_motion.png",
              "color.png", "grass.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png",
              "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
              "page.png", "phantom.png", "retina.jpg"),
    "calib": ("chelsea.png", "gravel.png", "text.png"),
    "test": ("coffee.png", "rocket.jpg", "brick.png", "coins.png"),
}

# crop side = image_size * factor (capped by the photo), then resized to image_size
CROP_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("the built-in 'photos' data needs scikit-image: pip install scikit-image")
    return Path(spec.origin).parent / "data"


@functools.lru_cache(maxsize=8)
def load_photos(split: str) -> tuple[torch.Tensor, ...]:
    """The split's photographs as (3, H, W) float tensors in [0, 1]."""
    if split not in SPLITS:
        raise ValueError(f"photos:{split}: unknown split; available: {sorted(SPLITS)}")
    root = skimage_data_dir()
    out = []
    for name in SPLITS[split]:
        with Image.open(root / name) as img:
            arr = to_rgb_array(img)
        out.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous())
    return tuple(out)


class PhotoCrops:
    """Random crops (several scales, horizontal flips) of one split's photographs."""

    def __init__(self, split: str, image_size: int) -> None:
        self.split = split
        self.image_size = image_size
        self.photos = load_photos(split)
        self.name = f"photos:{split}"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3, S, S) crops, fully determined by ``generator``."""
        return self.sample_with_sources(n, generator)[0]

    def sample_with_sources(self, n: int, generator: torch.Generator
                            ) -> tuple[torch.Tensor, list[str], list[float]]:
        """:meth:`sample`, plus the file name of the photograph each crop was cut from and its
        scale (the ``CROP_FACTORS`` entry drawn: crop side / image size, before the cap)."""
        R = self.image_size
        out = torch.empty(n, 3, R, R)
        sources, scales = [], []
        for i in range(n):
            index = int(torch.randint(len(self.photos), (1,), generator=generator))
            sources.append(SPLITS[self.split][index])
            photo = self.photos[index]
            _, H, W = photo.shape
            factor = CROP_FACTORS[int(torch.randint(len(CROP_FACTORS), (1,), generator=generator))]
            scales.append(factor)
            side = max(1, min(H, W, round(R * factor)))
            top = int(torch.randint(H - side + 1, (1,), generator=generator))
            left = int(torch.randint(W - side + 1, (1,), generator=generator))
            crop = photo[None, :, top:top + side, left:left + side]
            if side != R:
                crop = F.interpolate(crop, size=(R, R), mode="bilinear", antialias=True, align_corners=False)
            if bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(-1)
            out[i] = crop[0].clamp(0.0, 1.0)
        return out, sources, scales
