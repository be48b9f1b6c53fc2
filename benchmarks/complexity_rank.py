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

Usage: python benchmarks/complexity_rank.py [--bench benchmarks/results/bench_tiny] [--epsilon 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import kolmotok
from kolmotok.cli import report_errors
from kolmotok.data import eval_set
from kolmotok.evaluation.evaluate import grayscale_mask, spearman_by_colour
from kolmotok.evaluation.metrics import luminance_uint8, png_bytes, spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="benchmarks/results/bench_tiny", help="a kolmotok bench --out folder")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--methods", default="karl,oracle,prefix,recurrent,jpeg,webp")
    ap.add_argument("--ckpt", default=None, help="the checkpoint the bench ran (for its image size; default shipped)")
    args = ap.parse_args()
    res = json.loads((Path(args.bench) / "results.json").read_text())
    tok = kolmotok.load(args.ckpt, device="cpu")
    data = eval_set(res["data"], tok.image_size, res["num_images"])
    images = data.images
    png = np.array([png_bytes(im) for im in images], dtype=float)
    luma = np.array([png_bytes(im, luma=True) for im in images], dtype=float)
    gray = grayscale_mask(images)
    print(f"# python benchmarks/complexity_rank.py --bench {args.bench} --epsilon {args.epsilon:g}")
    print(f"{res['data']}: {len(images)} crops, {int(gray.sum())} grayscale, {int((~gray).sum())} colour; "
          f"mean PNG bytes {png[gray].mean():,.0f} (grayscale) vs {png[~gray].mean():,.0f} (colour); "
          f"of the luminance alone {luma[gray].mean():,.0f} vs {luma[~gray].mean():,.0f}")
    print(f"{'method':<10} {'unit':<6} {'rho all':>8} {'rho gray':>9} {'rho colour':>11} {'mean gray':>10} "
          f"{'mean colour':>12} {'rho luma':>9} {'ceiling':>8}")
    photos = np.array(res["image_names"])
    levels = {}
    for name in args.methods.split(","):
        row = next((r for r in res["rows"] if r["method"] == name and abs(r["epsilon"] - args.epsilon) < 1e-9), None)
        if row is None or not row.get("sizes"):
            raise ValueError(f"{args.bench}: no per-image counts of {name!r} at eps {args.epsilon:g}")
        tokens = np.array(row["sizes"], dtype=float)
        if len(tokens) != len(images):
            raise ValueError(f"{args.bench}: {len(tokens)} counts for {len(images)} images; another evaluation "
                             "set (a folder bench cannot be rebuilt here: use a built-in set such as photos:test)")
        within = spearman_by_colour(images, tokens, png)  # (a group under 10 images has no rho: nan)
        gray_rho, colour_rho = within.get("grayscale", float("nan")), within.get("colour", float("nan"))
        print(f"{name:<10} {row['unit']:<6} {spearman(tokens, png):8.3f} {gray_rho:9.3f} {colour_rho:11.3f} "
              f"{tokens[gray].mean():10.2f} {tokens[~gray].mean():12.2f} {spearman(tokens, luma):9.3f} "
              f"{spearman(follow_within(tokens, png, photos), png):8.3f}")
        levels[name] = tokens
    print_photo_levels(photos, gray, png, luma, levels)

    colour = images[torch.from_numpy(~gray)]
    if not len(colour):
        return
    with torch.no_grad():
        counts = [tok.encode(x, epsilon=args.epsilon).lengths.float().mean().item()
                  for x in (colour, grey_versions(colour))]
    print(f"karl on the {len(colour)} colour crops at eps {args.epsilon:g}: {counts[0]:.2f} tokens as they are, "
          f"{counts[1]:.2f} reduced to their luminance")


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


def grey_versions(images: torch.Tensor) -> torch.Tensor:
    """Each image reduced to its luminance (the grey PNG's pixels), repeated over R, G and B."""
    grey = np.stack([luminance_uint8(im) for im in images]).astype(np.float32) / 255.0
    return torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1).contiguous()


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
