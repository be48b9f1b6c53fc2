"""Reading image files into tensors, with one documented resize rule.

Resize rule (used everywhere a file becomes a model input): the image is turned upright by
its EXIF orientation tag, converted to RGB (grayscale replicated, alpha composited on white,
palette expanded, 16-bit and float images scaled to [0, 1]), its shorter side is resized to
``size`` with antialiased bicubic filtering, and the centre ``size x size`` square is kept.
An image whose shorter side is at least ``2 * REDUCE_MARGIN * size`` (16x) is first shrunk,
in its own 8-bit precision, to exactly ``REDUCE_MARGIN`` times the size the rule gives it (a
JPEG is decoded at 1/2, 1/4 or 1/8 scale, no smaller than twice that, then resized with the
same antialiased bicubic filter), so the rule's geometry is kept and a 24-megapixel photo
costs a fraction of a second and little memory. For a photograph at 2100x1590, 6000x4000
and 4000x6000, saved as PNG and as JPEG and read at size 32, the result differs from resizing
the full image by 0.0001 on average (the largest pixel difference 0.0029;
``python benchmarks/resize_shrink.py``, output in ``benchmarks/results/``). Palette, 1-bit,
16- and 32-bit, float images and those with a transparent colour key are read whole.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..io import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REDUCE_MARGIN = 8  # large images are pre-shrunk to this many times the size the resize rule gives them
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK")  # 8-bit modes a resize filters without distortion


class ImageLoadError(ValueError):
    """A file that is not a readable image; the message names the file and the reason."""


@dataclass
class LoadedImages:
    images: torch.Tensor  # (N, 3, size, size) float in [0, 1]
    paths: list[Path]  # the files that loaded, in order
    failures: list[tuple[Path, str]]  # files that did not, with the reason


def decode_rgb(img: Image.Image, size: int | None = None) -> np.ndarray:
    """An opened, not yet loaded PIL image -> float32 (H, W, 3) array in [0, 1], upright by
    its EXIF orientation. With ``size`` (the model's side), a large image is first shrunk to
    exactly ``REDUCE_MARGIN`` times the size the resize rule will give it (module docstring),
    so the rule's geometry is unchanged."""
    orientation = _orientation(img)
    target = _shrink_target(img, size) if size else None
    if target is not None:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, no smaller than twice the target
        img.draft(img.mode, (2 * target[0], 2 * target[1]))
    img.load()
    if target is not None:
        img = img.resize(target, Image.BICUBIC)  # antialiased, as the resize rule itself
    if orientation in EXIF_TRANSPOSES:
        img = img.transpose(EXIF_TRANSPOSES[orientation])
    return to_rgb_array(img)


# EXIF orientation tag (0x0112) -> the transpose that shows the image as a viewer does
EXIF_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                   7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored); a malformed EXIF block counts as none rather
    than making the image unreadable."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception as exc:  # noqa: BLE001 -- any damage in EXIF data: ignore the tag, keep the pixels
        log.debug("ignoring unreadable EXIF data: %s", exc)
        return 1


def resized_dims(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) an h x w image takes in the resize rule: shorter side ``size``."""
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def _shrink_target(img: Image.Image, size: int) -> tuple[int, int] | None:
    """(width, height) to shrink to before the resize rule, or None to read the image whole:
    images under ``2 * REDUCE_MARGIN * size`` on the shorter side, and modes whose values a filter
    would distort (palette, 1-bit, 16-bit and 32-bit, float, a transparent colour key)."""
    w, h = img.size
    if img.mode not in REDUCIBLE_MODES or "transparency" in img.info or min(w, h) < 2 * REDUCE_MARGIN * size:
        return None
    nh, nw = resized_dims(h, w, size)
    return REDUCE_MARGIN * nw, REDUCE_MARGIN * nh


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 (H, W, 3) array in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if raw.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        arr = np.clip(raw / peak, 0.0, 1.0)
        key = img.info.get("transparency")
        if isinstance(key, int):  # a transparent grey value (PNG tRNS): composited on white like alpha
            arr[raw == key] = 1.0
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr = np.clip(arr, 0.0, 1.0) if lo >= 0 and hi <= 1 else (arr - lo) / max(hi - lo, 1e-12)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float -> (size, size, 3): shorter side to ``size`` (bicubic, antialiased), centre crop."""
    nh, nw = resized_dims(*arr.shape[:2], size)
    channels = [Image.fromarray(arr[..., c], mode="F").resize((nw, nh), Image.BICUBIC) for c in range(3)]
    out = np.stack([np.asarray(c) for c in channels], axis=-1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.clip(out[top:top + size, left:left + size], 0.0, 1.0)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """One file -> (3, size, size) float tensor by the resize rule; ImageLoadError if unreadable."""
    arr = read_rgb(path, size)
    return torch.from_numpy(np.ascontiguousarray(resize_center_crop(arr, size))).permute(2, 0, 1)


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """One file -> (H, W, 3) float32 array in [0, 1], upright, at its own size (or, given the
    model's ``size``, pre-shrunk as :func:`decode_rgb` does); ImageLoadError if unreadable."""
    path = Path(path)
    if path.is_dir():
        raise ImageLoadError(f"{path}: a directory, not an image file (folder:{path} reads every image in it)")
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            arr = decode_rgb(img, size)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise ImageLoadError(f"{path}: empty image of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ImageLoadError(f"{path}: pixel values that are not finite (NaN or infinite)")
    return arr


def load_images(paths: list[str | Path], size: int, skip_errors: bool = True,
                log_failures: bool = True) -> LoadedImages:
    """Files -> batch. Unreadable files are skipped and listed in ``failures`` (logged by name
    unless ``log_failures`` is False), or raised if not ``skip_errors``."""
    images, ok, failures = [], [], []
    for p in paths:
        try:
            images.append(load_image(p, size))
            ok.append(Path(p))
        except ImageLoadError as exc:
            if not skip_errors:
                raise
            if log_failures:
                log.warning("skipping %s", exc)
            failures.append((Path(p), str(exc)))
    batch = stack_images(images, size)
    return LoadedImages(batch, ok, failures)


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted), by suffix. Symbolic links to files
    and to folders are followed; a folder reached twice (a link loop) is read once. A link to
    nothing is listed, so that reading it reports it like any other unreadable file."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder:{root}: not a directory")
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        # a folder reachable by several paths is read once, under the first one met in this
        # depth-first walk, which visits each folder's real subfolders before its links, by name
        subfolders.sort(key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        found += [Path(folder, f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file() or p.is_symlink())


def stack_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(3, size, size) tensors -> (N, 3, size, size); an empty list gives an empty batch."""
    return torch.stack(images) if images else torch.zeros(0, 3, size, size)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] -> (H, W, 3) uint8 array (rounded)."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def reconstruction_paths(images: list[Path], out: Path) -> list[Path]:
    """Where ``encode --out`` writes each input's reconstruction: the inputs' folders mirrored
    below their common parent (:func:`mirrored_reconstruction_paths`). Paths are made absolute
    without following symbolic links, so a linked input is named after the link."""
    resolved = [Path(os.path.abspath(p)) for p in images]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return mirrored_reconstruction_paths([p.relative_to(common) for p in resolved], out)


def mirrored_reconstruction_paths(relative: list[PurePath], out: Path,
                                  everyone: list[PurePath] | None = None) -> list[Path]:
    """``out / FOLDER / STEM.recon.png`` for each relative path, or ``STEM.EXT.recon.png`` where
    another file of ``everyone`` (default: ``relative``) in that folder has the same stem, so no
    two files share an output."""
    stems = Counter((p.parent, p.stem) for p in set(relative if everyone is None else everyone))
    return [out / p.parent / (f"{p.stem}.recon.png" if stems[p.parent, p.stem] <= 1 else f"{p.name}.recon.png")
            for p in relative]


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """(3, H, W) in [0, 1] -> PNG, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
