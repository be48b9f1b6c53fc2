"""Built-in and user data, addressed by a spec string.

* ``photos`` / ``photos:train`` / ``photos:calib`` / ``photos:test``: crops of scikit-image's photographs
* ``shapes`` / ``shapes:KIND``: procedural images of known complexity, all kinds or one
  (:mod:`kolmotok.data.shapes`)
* ``folder:PATH``: every image file under PATH, read lazily (see :mod:`kolmotok.data.images` for the
  resize rule and :mod:`kolmotok.data.augment` for training views)
* ``wds:PATTERN``: WebDataset tar shards, streamed (``/data/train-{000000..000146}.tar``)
* ``A@w+B@v``: a mixture, each image drawn from A or B with odds w:v (default weight 1)

Training draws batches with :meth:`sample`, fully determined by a ``torch.Generator``;
evaluation uses :func:`eval_set`, a fixed set of images for a spec.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from . import shapes as shapes_mod
from .augment import training_view
from .images import ImageLoadError, list_images, load_image, load_images, read_rgb, stack_images
from .photos import PhotoCrops
from .shapes import Shapes

log = logging.getLogger(__name__)

__all__ = ["make_source", "eval_set", "EvalSet", "ImageLoadError", "load_image", "load_images", "list_images"]


class Source(Protocol):
    name: str

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


class FolderImages:
    """Every image under a directory (ImageFolder-style trees of any size): the file list is made
    once, files are read when drawn (so DataLoader workers share the work). An unreadable file is
    reported once and replaced by another random draw."""

    MAX_REDRAWS = 50

    def __init__(self, root: str, image_size: int) -> None:
        self.name, self.image_size = f"folder:{root}", image_size
        self.paths = list_images(root)
        if not self.paths:
            raise ValueError(f"folder:{root}: no image files found")
        self.bad: set[Path] = set()

    def _one(self, generator: torch.Generator) -> torch.Tensor:
        for _ in range(self.MAX_REDRAWS):
            path = self.paths[int(torch.randint(len(self.paths), (1,), generator=generator))]
            if path in self.bad:
                continue
            try:
                return training_view(read_rgb(path, self.image_size), self.image_size, generator)
            except ImageLoadError as exc:
                log.warning("skipping %s", exc)
                self.bad.add(path)
        raise ValueError(f"{self.name}: {self.MAX_REDRAWS} draws in a row were unreadable files")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return stack_images([self._one(generator) for _ in range(n)], self.image_size)


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


def folder_path(path: str | Path) -> str:
    """The PATH of ``folder:PATH``, checked: ``folder:`` alone is an error, not the current
    directory; a leading ``~`` is the home directory (no shell expands it after ``folder:``)."""
    path = str(path)
    if not path:
        raise ValueError("folder: needs a path, e.g. folder:/data/images")
    return os.path.expanduser(path)


def _whole_folder(spec: str) -> bool:
    """``folder:PATH`` naming an existing directory is that folder, even where PATH holds the
    ``+`` or ``@`` of a mixture. Inside a mixture a folder's path cannot hold ``+``, and one
    holding ``@`` needs its weight written out (``folder:shots@2x@1``)."""
    kind, _, arg = spec.partition(":")
    return kind == "folder" and bool(arg) and os.path.isdir(os.path.expanduser(arg))


def _single(spec: str, image_size: int) -> Source:
    kind, _, arg = spec.partition(":")
    if kind == "photos":
        return PhotoCrops(arg or "train", image_size)
    if kind == "shapes":
        return Shapes(image_size, arg or None)
    if kind == "folder":
        return FolderImages(folder_path(arg), image_size)
    if kind == "wds":
        if not arg:
            raise ValueError("wds: needs a shard pattern, e.g. wds:/data/train-{000000..000146}.tar")
        from .webdataset_source import WebDatasetImages

        return WebDatasetImages(arg, image_size)
    hint = f" (a folder? write folder:{spec})" if os.path.isdir(os.path.expanduser(spec)) else ""
    raise ValueError(f"unknown data spec {spec!r}{hint}; use photos[:split], shapes[:kind], folder:PATH, "
                     "wds:PATTERN or A@w+B@v")


def spec_parts(spec: str) -> list[tuple[str, float | None]]:
    """A data spec's sources with their mixture weights: [(source, None)] for a single source."""
    if _whole_folder(spec):
        return [(spec, None)]
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise ValueError("empty data spec")
    if len(parts) == 1 and "@" not in parts[0]:
        return [(parts[0], None)]
    weighted = []
    for part in parts:
        # the weight is last: folder:shots@2x@3 is shots@2x at 3
        name, w = part.rsplit("@", 1) if "@" in part else (part, "")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"data spec {spec!r}: weight {w!r} is not a number") from None
        if weight <= 0:
            raise ValueError(f"data spec {spec!r}: weight of {name!r} must be positive")
        weighted.append((name, weight))
    return weighted


def make_source(spec: str, image_size: int) -> Source:
    parts = spec_parts(spec)
    if parts[0][1] is None:
        return _single(parts[0][0], image_size)
    return Mixture([_single(name, image_size) for name, _ in parts], [w for _, w in parts])


def shared_sources(spec: str, other: str, other_cwd: str | None) -> list[str]:
    """The sources of ``spec`` that may share images with ``other``: the same source (``photos``
    is ``photos:train``), or a ``folder:`` that is, holds or lies inside a folder of ``other``.
    Relative folders of ``other`` are taken from ``other_cwd`` (skipped if None), those of
    ``spec`` from the working directory; specs that cannot be parsed share nothing."""
    def sources(s: str) -> list[str]:
        try:
            return [name for name, _ in spec_parts(s)]
        except ValueError:
            return []

    def folder(name: str, cwd: str | None) -> Path | None:
        path = Path(folder_path(name.partition(":")[2]))
        if not path.is_absolute() and cwd is None:
            return None
        return (Path(cwd or ".") / path).resolve()

    def is_folder(name: str) -> bool:  # (an empty folder: names nothing)
        return name.startswith("folder:") and bool(name.partition(":")[2])

    def same_source(name: str) -> str:
        return "photos:train" if name == "photos" else name

    theirs = sources(other)
    their_folders = [f for n in theirs if is_folder(n) and (f := folder(n, other_cwd)) is not None]
    their_others = {same_source(n) for n in theirs if not n.startswith("folder:")}
    shared = []
    for name in sources(spec):
        if is_folder(name):
            mine = folder(name, os.getcwd())
            if any(mine == f or mine in f.parents or f in mine.parents for f in their_folders):
                shared.append(str(mine))
        elif not name.startswith("folder:") and same_source(name) in their_others:
            shared.append(name)
    return shared


@dataclass
class EvalSet:
    name: str
    images: torch.Tensor  # (N, 3, S, S)
    labels: torch.Tensor | None = None  # ground-truth complexity (shapes only)
    names: list[str] | None = None  # where each image came from: its file (folders), its photograph (photos)
    scales: list[float] | None = None  # photos: each crop's side over the image size (CROP_FACTORS)

    @property
    def sources(self) -> list[str] | None:
        """Each image's source for per-source breakdowns: its photograph (``photos:``), or the
        subfolder of its file below the folder root, ``.`` for the root itself (``folder:``)."""
        if self.names is None:
            return None
        if self.name.startswith("folder:"):
            root = self.name.partition(":")[2]
            return [os.path.relpath(Path(n).parent, root) for n in self.names]
        return list(self.names)


def folder_subset(files: list[Path], num_images: int, g: torch.Generator) -> list[Path]:
    """All files if there are at most ``num_images`` (or it is 0), else a seeded random subset
    of that many, in the folder's sorted order (evaluation holds its images in memory)."""
    if not num_images or len(files) <= num_images:
        return files
    keep = torch.randperm(len(files), generator=g)[:num_images].sort().values
    log.info("%d image files; evaluating a fixed random %d of them (--num-images 0 for all)", len(files), num_images)
    return [files[int(i)] for i in keep]


def eval_set(spec: str, image_size: int, num_images: int = 256, seed: int = 1234) -> EvalSet:
    """A fixed, seeded evaluation set of ``num_images`` images for ``spec``. A folder gives all
    of its images if it has at most ``num_images`` (or ``num_images`` is 0), else a fixed
    random subset of that many files."""
    is_folder = spec.startswith("folder:")
    if num_images < (0 if is_folder else 1):
        raise ValueError(f"{spec}: number of images must be >= {0 if is_folder else 1}, got {num_images}"
                         + ("" if is_folder else " (0 = all files applies to folder: data only)"))
    g = torch.Generator().manual_seed(seed)
    if spec == "shapes" or spec.startswith("shapes:"):
        images, labels = shapes_mod.draw(num_images, image_size, g, spec.partition(":")[2] or None)
        return EvalSet(spec, images, labels)
    if is_folder:
        root = folder_path(spec.partition(":")[2])
        files = folder_subset(list_images(root), num_images, g)
        loaded = load_images(files, image_size)
        if not loaded.paths:
            raise ValueError(f"{spec}: no readable images found")
        return EvalSet(f"folder:{root}", loaded.images, names=[str(p) for p in loaded.paths])
    source = make_source(spec, image_size)
    if isinstance(source, PhotoCrops):
        images, photos, scales = source.sample_with_sources(num_images, g)
        return EvalSet(spec, images, names=photos, scales=scales)
    return EvalSet(spec, source.sample(num_images, g))
