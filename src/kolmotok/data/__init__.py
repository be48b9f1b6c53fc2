"""Built-in and user data, addressed by a spec string.

* ``photos`` / ``photos:train`` / ``photos:calib`` / ``photos:test``: crops of scikit-image's photographs
* ``shapes``: procedural images of known complexity (:mod:`kolmotok.data.shapes`)
* ``folder:PATH``: every image file under PATH (see :mod:`kolmotok.data.images` for the resize rule)
* ``A@w+B@v``: a mixture, each image drawn from A or B with odds w:v (default weight 1)

Training draws batches with :meth:`sample`, fully determined by a ``torch.Generator``;
evaluation uses :func:`eval_set`, a fixed set of images for a spec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from . import shapes as shapes_mod
from .images import ImageLoadError, list_images, load_image, load_images
from .photos import PhotoCrops
from .shapes import Shapes

log = logging.getLogger(__name__)

__all__ = ["make_source", "eval_set", "EvalSet", "ImageLoadError", "load_image", "load_images", "list_images"]


class Source(Protocol):
    name: str

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


class FolderImages:
    """All images under a directory, loaded once; unreadable files are reported and skipped."""

    def __init__(self, root: str, image_size: int) -> None:
        self.name = f"folder:{root}"
        loaded = load_images(list_images(root), image_size)
        if len(loaded.paths) == 0:
            raise ValueError(f"folder:{root}: no readable images found")
        self.images, self.paths, self.failures = loaded.images, loaded.paths, loaded.failures

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.images), (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        batch = self.images[idx]
        return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


class Mixture:
    def __init__(self, sources: list[Source], weights: list[float]) -> None:
        self.sources = sources
        self.weights = torch.tensor(weights, dtype=torch.float)
        self.name = "+".join(f"{s.name}@{w:g}" for s, w in zip(sources, weights))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        parts = [s.sample(int((which == i).sum()), generator) for i, s in enumerate(self.sources)]
        out = torch.cat(parts)
        order = torch.cat([torch.nonzero(which == i).flatten() for i in range(len(self.sources))])
        result = torch.empty_like(out)
        result[order] = out
        return result


def _single(spec: str, image_size: int) -> Source:
    kind, _, arg = spec.partition(":")
    if kind == "photos":
        return PhotoCrops(arg or "train", image_size)
    if kind == "shapes":
        return Shapes(image_size)
    if kind == "folder":
        if not arg:
            raise ValueError("folder: needs a path, e.g. folder:/data/images")
        return FolderImages(arg, image_size)
    raise ValueError(f"unknown data spec {spec!r}; use photos[:split], shapes, folder:PATH or A@w+B@v")


def make_source(spec: str, image_size: int) -> Source:
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise ValueError("empty data spec")
    if len(parts) == 1 and "@" not in parts[0]:
        return _single(parts[0], image_size)
    sources, weights = [], []
    for part in parts:
        name, _, w = part.partition("@")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"data spec {spec!r}: weight {w!r} is not a number") from None
        if weight <= 0:
            raise ValueError(f"data spec {spec!r}: weight of {name!r} must be positive")
        sources.append(_single(name, image_size))
        weights.append(weight)
    return Mixture(sources, weights)


@dataclass
class EvalSet:
    name: str
    images: torch.Tensor  # (N, 3, S, S)
    labels: torch.Tensor | None = None  # ground-truth complexity (shapes only)
    names: list[str] | None = None  # file names (folders only)


def eval_set(spec: str, image_size: int, num_images: int = 256, seed: int = 1234) -> EvalSet:
    """A fixed, seeded evaluation set for ``spec`` (a folder gives all of its images)."""
    g = torch.Generator().manual_seed(seed)
    if spec == "shapes":
        images, labels = shapes_mod.draw(num_images, image_size, g)
        return EvalSet(spec, images, labels)
    if spec.startswith("folder:"):
        src = FolderImages(spec.partition(":")[2], image_size)
        return EvalSet(spec, src.images, names=[str(p) for p in src.paths])
    source = make_source(spec, image_size)
    return EvalSet(spec, source.sample(num_images, g))
