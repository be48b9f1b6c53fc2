"""Does the calibrated guarantee carry over to photographs it was not calibrated on?

Split conformal calibration promises 1 - alpha for images exchangeable with the calibration
images. ``photos:calib`` has three photographs, and ``photos:test`` four others, so the test
crops are not exchangeable with them. This script measures what that costs, per photograph:

1. leave one photograph out: calibrate on the crops of the other two calibration photographs
   and measure the share of the held-out photograph's crops that meet eps at that condition;
   the same with a per-photograph (Mondrian, group-conditional) calibration, which takes the
   tightest of the photographs' own conformal conditions and so promises 1 - alpha on each;
2. calibrate on all three (as ``kolmotok calibrate`` does) and measure each test photograph.

Usage: python benchmarks/calibration_by_photo.py [--ckpt DIR] [--alpha 0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import kolmotok
from kolmotok.calibration import CONDITION_GRID, calibrate_errors, measure_conditions
from kolmotok.cli import report_errors
from kolmotok.data import eval_set
from kolmotok.evaluation.evaluate import run_batched

EPSILONS = (0.07, 0.08, 0.10, 0.12, 0.15)
CONDITIONS = np.array(CONDITION_GRID)


def condition(errors: np.ndarray, epsilon: float, alpha: float, groups: np.ndarray | None = None) -> float:
    """The calibrated condition for ``epsilon`` (0 = full budget where unattainable); with
    ``groups``, the tightest of the groups' own calibrated conditions."""
    def calibrated(columns: np.ndarray) -> float:
        return calibrate_errors(columns, CONDITIONS, alpha, "", epsilons=[epsilon]).conditions[0]

    if groups is None:
        return calibrated(errors)
    return min(calibrated(errors[:, groups == g]) for g in np.unique(groups))


def share_met(errors: np.ndarray, epsilon: float, cond: float) -> float:
    return float((errors[int(np.searchsorted(CONDITIONS, cond))] <= epsilon).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--alpha", type=float, default=0.1)
    args = ap.parse_args()
    tok = kolmotok.load(args.ckpt)
    sets = {split: eval_set(f"photos:{split}", tok.image_size, n) for split, n in (("calib", 512), ("test", 256))}
    errors = {split: measure_conditions(lambda c, s=s: run_batched(tok, s.images, c, quality=False).l1,
                                        progress=True) for split, s in sets.items()}
    photos = {split: np.array(s.names) for split, s in sets.items()}

    print(f"alpha = {args.alpha}; share of a photograph's crops meeting eps at the condition calibrated "
          "without it (condition in brackets)")
    cal_err, cal_photo = errors["calib"], photos["calib"]
    header = "held-out photo   crops | calibration | " + " | ".join(f"eps {e:.2f}" for e in EPSILONS)
    print(header)
    for held in np.unique(cal_photo):
        rest = cal_photo != held
        for name, groups in (("pooled", None), ("per-photo", cal_photo[rest])):
            cells = []
            for eps in EPSILONS:
                c = condition(cal_err[:, rest], eps, args.alpha, groups)
                cells.append(f"{100 * share_met(cal_err[:, ~rest], eps, c):5.1f}% ({c:.4f})")
            print(f"{held:<15} {int((~rest).sum()):>5} | {name:<11} | " + " | ".join(cells))

    print("\ncalibrated on all of photos:calib; share of each test photograph's crops meeting eps, and mean tokens")
    print("test photo       crops | " + " | ".join(f"eps {e:.2f}" for e in EPSILONS))
    test_err, test_photo = errors["test"], photos["test"]
    conds = {eps: condition(cal_err, eps, args.alpha) for eps in EPSILONS}
    runs = {eps: run_batched(tok, sets["test"].images, conds[eps], quality=False) for eps in EPSILONS}
    for photo in [*np.unique(test_photo), "all"]:
        sel = np.ones(len(test_photo), bool) if photo == "all" else test_photo == photo
        cells = [f"{100 * share_met(test_err[:, sel], eps, conds[eps]):5.1f}% "
                 f"{runs[eps].lengths[sel].float().mean():5.2f} tok" for eps in EPSILONS]
        print(f"{photo:<15} {int(sel.sum()):>5} | " + " | ".join(cells))
    print("conditions: " + ", ".join(f"eps {e:.2f} -> {c:.4f}" for e, c in conds.items()))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
