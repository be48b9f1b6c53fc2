"""``wds:PATTERN``: images streamed from WebDataset tar shards (the ``webdataset`` package).

Shards are resampled with replacement (an endless stream, as webdataset recommends for
training), split across DataLoader workers by webdataset, and shuffled in a buffer; each
sample's first image entry (jpg, jpeg, png, webp, ...) becomes a training view
(:mod:`kolmotok.data.augment`). Corrupt samples and unreadable shards are skipped with a
warning, within bounds: local shards that do not exist are an error up front, and a stream that
reads :attr:`WebDatasetImages.MISSES_PER_SHARD` times as many shards as the pattern names
without getting one sample (every shard unreadable or empty) is an error instead of a hang. A
stream has no step-indexed order: a resumed run continues from its checkpoint's weights and
step, not from the same images it would have seen.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from .augment import training_view
from .images import IMAGE_SUFFIXES, decode_rgb, stack_images

log = logging.getLogger(__name__)

IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)


def _first_image(sample: dict, size: int) -> np.ndarray | None:
    for key, value in sample.items():
        if key.lower().rsplit(".", 1)[-1] in IMAGE_KEYS:
            with Image.open(io.BytesIO(value)) as img:
                return decode_rgb(img, size)
    return None


def _missing_local(urls: list[str]) -> list[str]:
    """The shards in ``urls`` that are local files (no URL scheme, or file:) and do not exist."""
    return [u for u in urls if urlparse(u).scheme in ("", "file") and not Path(urlparse(u).path).is_file()]


class WebDatasetImages:
    MISSES_PER_SHARD = 10  # shard reads without a sample, per shard in the pattern, before giving up

    def __init__(self, pattern: str, image_size: int, shuffle_buffer: int = 1000, seed: int = 0) -> None:
        try:
            import webdataset as wds
        except ImportError:
            raise ValueError("wds: data needs the webdataset package: pip install webdataset") from None
        self.name, self.pattern, self.image_size = f"wds:{pattern}", pattern, image_size
        urls = wds.shardlists.expand_urls(pattern)
        missing = _missing_local(urls)
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} of its {len(urls)} shards do not exist: "
                             + ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else ""))
        self.max_misses, self.misses, self.last_error = self.MISSES_PER_SHARD * len(urls), 0, None
        self.reported: set[str] = set()
        self.dataset = wds.DataPipeline(
            wds.ResampledShards(urls, seed=seed),
            wds.split_by_worker,
            self._count_shards,
            wds.tarfile_to_samples(handler=self._skip_error),
            self._count_samples,
            wds.shuffle(shuffle_buffer),
        )
        self._stream = None

    def _count_shards(self, shards):
        """Pass shards on, giving up after ``max_misses`` in a row that gave no sample."""
        for shard in shards:
            if self.misses >= self.max_misses:
                raise ValueError(f"{self.name}: {self.misses} shard reads in a row gave no sample (unreadable or "
                                 f"empty tar files?); last error: {self.last_error or 'none'}")
            self.misses += 1
            yield shard

    def _count_samples(self, samples):
        for sample in samples:
            self.misses = 0
            yield sample

    def _skip_error(self, exc: Exception) -> bool:
        """webdataset handler: log an unreadable shard or sample and go on (bounded by _count_shards)."""
        self.last_error = f"{exc.__class__.__name__}: {exc}"
        if self.last_error not in self.reported:  # a resampled bad shard comes back again and again
            self.reported.add(self.last_error)
            log.warning("%s: skipping unreadable data (%s)", self.name, self.last_error)
        return True

    def _next_array(self) -> np.ndarray:
        if self._stream is None:
            self._stream = iter(self.dataset)
        for _ in range(1000):
            sample = next(self._stream)
            try:
                arr = _first_image(sample, self.image_size)
            except (OSError, ValueError, SyntaxError) as exc:
                log.warning("%s: skipping sample %s (%s)", self.name, sample.get("__key__"), exc)
                continue
            if arr is not None:
                return arr
        raise ValueError(f"{self.name}: 1000 samples in a row held no readable image")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return stack_images([training_view(self._next_array(), self.image_size, generator) for _ in range(n)],
                            self.image_size)
