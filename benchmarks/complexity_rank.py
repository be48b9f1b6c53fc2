"""How well do token counts rank photo crops like PNG size, for KARL and for the oracle?

Reads the per-image counts of a committed `kolmotok bench` run (``results.json``, field
``sizes``), rebuilds the same evaluation set, and prints Spearman(tokens, PNG bytes) over
all crops and within the grayscale and the colour crops, with each group's mean tokens and
mean PNG size. This is where the README's oracle figures for the Spearman criterion come from.
The bench's codecs (``jpeg``, ``webp``: the bytes of the smallest file meeting eps) are ranked
the same way: a classical encoder given the same l1 target.

``ceiling`` keeps each photograph's counts but reorders them within the photograph to follow
PNG size exactly: the best rho any within-photograph improvement could reach while the
photographs' levels stay what the method found. A per-photograph table follows (mean count of
each method, mean PNG bytes of the crops and of their luminance): with a test set of four
photographs, the order of those levels decides most of the whole-set rho.

A diagnostic beside the criterion: ``rho luma`` ranks the counts against the PNG size of each
crop's luminance alone (the crop saved as a grey PNG). PNG pays for colour detail that costs
little l1; where the two rankings differ, that is the difference. A last line encodes the
colour crops with the checkpoint twice, as they are and reduced to their luminance, and prints
the mean tokens of each: whether the model itself finds grey images harder.

``--bench`` takes several runs, comma-separated, and pools their crops: e.g. the calibration
and the test photographs, the seven never trained on. ``--subsets K`` then asks how much the
criterion depends on which photographs make the test set: it prints, per method, the spread
of rho over every set of K of the pooled photographs (each with all its crops), and where the
documented ``photos:test`` split falls among them.

Usage: python benchmarks/complexity_rank.py [--bench benchmarks/results/bench_tiny[,OTHER...]]
       [--epsilon 0.05] [--subsets K]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import torch

import kolmotok
from kolmotok.cli import at_least, report_errors
from kolmotok.data import eval_set
from kolmotok.data.photos import SPLITS
from kolmotok.evaluation.evaluate import grayscale_mask, spearman_by_colour
from kolmotok.evaluation.metrics import luminance_uint8, png_bytes, spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="benchmarks/results/bench_tiny",
                    help="kolmotok bench --out folder(s), comma-separated: their crops are pooled")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--methods", default="karl,oracle,prefix,recurrent,jpeg,webp")
    ap.add_argument("--ckpt", default=None, help="the checkpoint the bench ran (for its image size; default shipped)")
    ap.add_argument("--subsets", type=at_least("--subsets", 0), default=0, metavar="K",
                    help="also rho over every K-photograph subset of the pooled photographs (0: no)")
    args = ap.parse_args()
    tok = kolmotok.load(args.ckpt, device="cpu")
    methods = args.methods.split(",")
    runs = [read_bench(Path(b), tok.image_size, methods, args.epsilon) for b in args.bench.split(",")]
    shared = [(a.data, b.data) for i, a in enumerate(runs) for b in runs[i + 1:]
              if set(a.photos) & set(b.photos)]
    if shared:
        raise ValueError(f"--bench: {shared[0][0]} and {shared[0][1]} share photographs; pool runs of different splits")
    images = torch.cat([r.images for r in runs])
    photos = np.concatenate([r.photos for r in runs])
    counts = {m: np.concatenate([r.counts[m] for r in runs]) for m in methods}
    png = np.array([png_bytes(im) for im in images], dtype=float)
    luma = np.array([png_bytes(im, luma=True) for im in images], dtype=float)
    gray = grayscale_mask(images)
    print(f"# python benchmarks/complexity_rank.py --bench {args.bench} --epsilon {args.epsilon:g}"
          + (f" --methods {args.methods}" if args.methods != ap.get_default("methods") else "")
          + (f" --subsets {args.subsets}" if args.subsets else ""))
    print(f"{'+'.join(r.data for r in runs)}: {len(images)} crops, {int(gray.sum())} grayscale, "
          f"{int((~gray).sum())} colour; mean PNG bytes {png[gray].mean():,.0f} (grayscale) vs "
          f"{png[~gray].mean():,.0f} (colour); of the luminance alone {luma[gray].mean():,.0f} vs "
          f"{luma[~gray].mean():,.0f}")
    print(f"{'method':<10} {'unit':<6} {'rho all':>8} {'rho gray':>9} {'rho colour':>11} {'mean gray':>10} "
          f"{'mean colour':>12} {'rho luma':>9} {'ceiling':>8}")
    for name, tokens in counts.items():
        within = spearman_by_colour(images, tokens, png)  # (a group under 10 images has no rho: nan)
        gray_rho, colour_rho = within.get("grayscale", float("nan")), within.get("colour", float("nan"))
        print(f"{name:<10} {runs[0].units[name]:<6} {spearman(tokens, png):8.3f} {gray_rho:9.3f} {colour_rho:11.3f} "
              f"{tokens[gray].mean():10.2f} {tokens[~gray].mean():12.2f} {spearman(tokens, luma):9.3f} "
              f"{spearman(follow_within(tokens, png, photos), png):8.3f}")
    print_photo_levels(photos, gray, png, luma, counts)
    if args.subsets:
        print_subsets(photos, png, counts, args.subsets)

    colour = images[torch.from_numpy(~gray)]
    if not len(colour):
        return
    with torch.no_grad():
        means = [tok.encode(x, epsilon=args.epsilon).lengths.float().mean().item()
                 for x in (colour, grey_versions(colour))]
    print(f"karl on the {len(colour)} colour crops at eps {args.epsilon:g}: {means[0]:.2f} tokens as they are, "
          f"{means[1]:.2f} reduced to their luminance")


@dataclass
class BenchRun:
    """One bench run's evaluation set rebuilt, with each method's per-image count at one eps."""

    data: str
    images: torch.Tensor  # (N, 3, S, S)
    photos: np.ndarray  # (N,) source photograph of each crop
    counts: dict[str, np.ndarray]  # method -> (N,) tokens or bytes
    units: dict[str, str]  # method -> "tokens" / "bytes"


def read_bench(folder: Path, image_size: int, methods: list[str], epsilon: float) -> BenchRun:
    res = json.loads((folder / "results.json").read_text())
    data = eval_set(res["data"], image_size, res["num_images"])
    counts, units = {}, {}
    for name in methods:
        row = next((r for r in res["rows"] if r["method"] == name and abs(r["epsilon"] - epsilon) < 1e-9), None)
        if row is None or not row.get("sizes"):
            raise ValueError(f"{folder}: no per-image counts of {name!r} at eps {epsilon:g}")
        if len(row["sizes"]) != len(data.images):
            raise ValueError(f"{folder}: {len(row['sizes'])} counts for {len(data.images)} images; another evaluation "
                             "set (a folder bench cannot be rebuilt here: use a built-in set such as photos:test)")
        counts[name], units[name] = np.array(row["sizes"], dtype=float), row["unit"]
    return BenchRun(res["data"], data.images, np.array(res["image_names"]), counts, units)


def follow_within(values: np.ndarray, key: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` with each group's own values reassigned in the order of ``key`` within that group."""
    out = values.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx[np.argsort(key[idx], kind="stable")]] = np.sort(values[idx])
    return out


def print_photo_levels(photos: np.ndarray, gray: np.ndarray, png: np.ndarray, luma: np.ndarray,
                       levels: dict[str, np.ndarray]) -> None:
    """Per source photograph, sorted by mean PNG bytes: each method's mean count there."""
    names = sorted(np.unique(photos), key=lambda p: png[photos == p].mean())
    print("per photograph, by mean PNG bytes (each method's mean count; rank of the photograph in brackets)")
    print(f"{'photo':<12} {'crops':>5} {'kind':<6} {'PNG':>6} {'luma':>6} " + " ".join(f"{m:>11}" for m in levels))
    ranks = {m: np.argsort(np.argsort([v[photos == p].mean() for p in names])) + 1 for m, v in levels.items()}
    for i, p in enumerate(names):
        sel = photos == p
        kind = "gray" if gray[sel].all() else "colour"
        print(f"{p:<12} {int(sel.sum()):5d} {kind:<6} {png[sel].mean():6,.0f} {luma[sel].mean():6,.0f} "
              + " ".join(f"{v[sel].mean():7.1f} ({ranks[m][i]})" for m, v in levels.items()))


def subset_rhos(photos: np.ndarray, key: np.ndarray, values: np.ndarray,
                k: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Spearman(values, key) over the crops of every ``k``-photograph subset of ``photos``
    (subsets as sorted name tuples, in ``itertools.combinations`` order). A subset whose values
    are all equal ranks nothing and counts as 0."""
    subsets = list(itertools.combinations(sorted(np.unique(photos)), k))
    if not subsets:
        raise ValueError(f"--subsets {k}: the runs hold {len(np.unique(photos))} photographs")
    masks = (np.isin(photos, s) for s in subsets)
    rho = np.array([spearman(values[m], key[m]) for m in masks])
    return subsets, np.nan_to_num(rho, nan=0.0)


def print_subsets(photos: np.ndarray, png: np.ndarray, counts: dict[str, np.ndarray], k: int) -> None:
    """How much the criterion, measured on a test set of ``k`` photographs, depends on which
    ones they are: per method, the spread of rho over every subset, and the documented split's place."""
    test = tuple(sorted(SPLITS["test"]))
    has_test = len(test) == k and set(test) <= set(photos)
    print(f"rho over all {comb(len(np.unique(photos)), k)} sets of {k} of these {len(np.unique(photos))} "
          "photographs (each with all its crops)")
    print(f"{'method':<10} {'min':>6} {'q10':>6} {'median':>7} {'q90':>6} {'max':>6} {'share >= 0.6':>13}"
          + (f" {'photos:test':>12} {'its rank':>9}" if has_test else ""))
    for name, values in counts.items():
        subsets, rho = subset_rhos(photos, png, values, k)
        q = np.quantile(rho, [0.0, 0.1, 0.5, 0.9, 1.0])
        line = (f"{name:<10} {q[0]:6.3f} {q[1]:6.3f} {q[2]:7.3f} {q[3]:6.3f} {q[4]:6.3f} "
                f"{(rho >= 0.6).mean():13.1%}")
        if has_test:
            mine = rho[subsets.index(test)]
            line += f" {mine:12.3f} {int((rho < mine).sum()) + 1:>4} of {len(subsets)}"
        print(line)


def grey_versions(images: torch.Tensor) -> torch.Tensor:
    """Each image reduced to its luminance (the grey PNG's pixels), repeated over R, G and B."""
    grey = np.stack([luminance_uint8(im) for im in images]).astype(np.float32) / 255.0
    return torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1).contiguous()


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
