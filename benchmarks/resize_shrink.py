"""How much the large-image shortcut of the resize rule (src/kolmotok/data/images.py: shrink to
8x the rule's size first) changes what the model sees: a photograph (scikit-image's astronaut,
upscaled) at camera sizes, saved as PNG and JPEG, read at the model size both ways.

    python benchmarks/resize_shrink.py

Prints, per size and format, whether the shortcut applies, the mean and largest absolute
difference from resizing the full image, and the time of each way.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from kolmotok.cli import report_errors
from kolmotok.data.images import load_image, read_rgb, resize_center_crop

CASES = [(700, 530, 64), (2100, 1590, 32), (6000, 4000, 32), (4000, 6000, 32)]  # width, height, model size


def main() -> None:
    photo = Image.fromarray(data.astronaut()).resize((2100, 1590), Image.BICUBIC)
    print(" image       format  size | shrunk first | mean |diff| | max |diff| | full rule s | shortcut s")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, size in CASES:
            image = photo.resize((w, h), Image.BICUBIC)
            for fmt in ("PNG", "JPEG"):
                path = Path(tmp) / f"photo.{fmt.lower()}"
                image.save(path, format=fmt, quality=95)
                t0 = time.perf_counter()
                full = resize_center_crop(read_rgb(path), size)
                t1 = time.perf_counter()
                fast = load_image(path, size).permute(1, 2, 0).numpy()
                t2 = time.perf_counter()
                shrunk = read_rgb(path, size).shape[:2] != (h, w)
                diff = np.abs(fast - full)
                print(f" {w:4d}x{h:<4d}  {fmt:6s} {size:4d} | {'yes' if shrunk else 'no':>12s} | {diff.mean():11.4f} "
                      f"| {diff.max():10.4f} | {t1 - t0:11.2f} | {t2 - t1:10.2f}")


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
