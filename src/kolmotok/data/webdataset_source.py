"""``wds:PATTERN``: images streamed from WebDataset tar shards (the ``webdataset`` package).

Shards are resampled with replacement (an endless stream, as webdataset recommends for
training), split across DataLoader workers by webdataset, and shuffled in a buffer; each
sample's first image entry (jpg, jpeg, png, webp, ...) becomes a training view
(:mod:`kolmotok.data.augment`). Corrupt samples are skipped with a warning. A stream has no
step-indexed order: a resumed run continues from its checkpoint's weights and step, not from
the same images it would have seen.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image

from .augment import training_view
from .images import IMAGE_SUFFIXES, stack_images, to_rgb_array

log = logging.getLogger(__name__)

IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)


def _first_image(sample: dict) -> np.ndarray | None:
    for key, value in sample.items():
        if key.lower().rsplit(".", 1)[-1] in IMAGE_KEYS:
            with Image.open(io.BytesIO(value)) as img:
                img.load()
                return to_rgb_array(img)
    return None


class WebDatasetImages:
    def __init__(self, pattern: str, image_size: int, shuffle_buffer: int = 1000, seed: int = 0) -> None:
        try:
            import webdataset as wds
        except ImportError:
            raise ValueError("wds: data needs the webdataset package: pip install webdataset") from None
        self.name, self.pattern, self.image_size = f"wds:{pattern}", pattern, image_size
        self.dataset = (wds.WebDataset(pattern, resampled=True, shardshuffle=False, handler=wds.warn_and_continue,
                                       seed=seed,
                                       nodesplitter=None, empty_check=False)
                        .shuffle(shuffle_buffer))
        self._stream = None

    def _next_array(self) -> np.ndarray:
        if self._stream is None:
            self._stream = iter(self.dataset)
        for _ in range(1000):
            sample = next(self._stream)
            try:
                arr = _first_image(sample)
            except (OSError, ValueError, SyntaxError) as exc:
                log.warning("%s: skipping sample %s (%s)", self.name, sample.get("__key__"), exc)
                continue
            if arr is not None:
                return arr
        raise ValueError(f"{self.name}: 1000 samples in a row held no readable image")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return stack_images([training_view(self._next_array(), self.image_size, generator) for _ in range(n)],
                            self.image_size)
