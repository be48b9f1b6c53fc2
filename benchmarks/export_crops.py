"""Write an evaluation set's images as PNG files, for trying the folder commands on known images.

    python benchmarks/export_crops.py --data photos:test --out crops/all
    python benchmarks/export_crops.py --data photos:test --out crops/coins --only coins.png

Each image becomes ``NNN-SOURCE.png`` (NNN its index in the set, SOURCE its photograph or file
stem). ``--only`` keeps the images of one source. The README's monitoring example uses these.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kolmotok.cli import check_output, report_errors
from kolmotok.data import eval_set
from kolmotok.data.images import save_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="photos:test", help="evaluation set (photos:test, shapes, ...)")
    p.add_argument("--out", required=True, help="folder to write the PNGs into")
    p.add_argument("--size", type=int, default=32, help="image size (the shipped tiny model's: 32)")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--only", help="keep the images of this source (photograph) only")
    args = p.parse_args()
    check_output(args.out, directory=True)
    data = eval_set(args.data, args.size, args.num_images)
    names = data.names or [args.data.partition(":")[0]] * len(data.images)
    if args.only is not None and args.only not in names:
        raise ValueError(f"--only {args.only!r}: no image of {args.data} comes from it; sources: "
                         f"{', '.join(sorted(set(names))[:10])}")
    kept = 0
    for i, (image, name) in enumerate(zip(data.images, names)):
        if args.only is None or name == args.only:
            save_image(image, Path(args.out) / f"{i:03d}-{Path(name).stem}.png")
            kept += 1
    print(f"{kept} images written to {args.out}")


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
