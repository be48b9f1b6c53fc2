"""Training-time views of a full-size image: the eval resize rule or a random resized crop, plus a flip.

The random resized crop (Szegedy et al. 2015; the usual ImageNet recipe) takes a random
region of 35-100% of the image area with aspect ratio 3:4..4:3 and resizes it to the model's
size; it is used for presets of 128 px and more, where source images are much larger than
the model input. Smaller presets see the whole image by the documented resize rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .images import resize_center_crop

AUGMENT_MIN_SIZE = 128  # random resized crops from this model resolution up
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_resized_crop(arr: np.ndarray, size: int, g: torch.Generator) -> torch.Tensor:
    """(H, W, 3) array -> (3, size, size) tensor of a random region (falls back to a centre square)."""
    h, w = arr.shape[:2]
    for _ in range(10):
        area = h * w * _uniform(g, *CROP_SCALE)
        ratio = math.exp(_uniform(g, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(h - ch + 1, (1,), generator=g))
            left = int(torch.randint(w - cw + 1, (1,), generator=g))
            break
    else:
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = torch.from_numpy(np.ascontiguousarray(arr[top:top + ch, left:left + cw])).permute(2, 0, 1)[None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def training_view(arr: np.ndarray, size: int, g: torch.Generator) -> torch.Tensor:
    """(H, W, 3) array -> (3, size, size): random resized crop (size >= 128) or the resize rule; random flip."""
    if size >= AUGMENT_MIN_SIZE:
        view = random_resized_crop(arr, size, g)
    else:
        view = torch.from_numpy(np.ascontiguousarray(resize_center_crop(arr, size))).permute(2, 0, 1)
    return view.flip(-1) if bool(torch.rand((), generator=g) < 0.5) else view
