"""Summarise training runs from their ``metrics.jsonl``: steps, training time, and the held-out
l1 of each logged evaluation (``eval_l1_T<N>``: fixed-length reconstructions with N tokens on
``train.eval_data``), first and last.

Usage: python benchmarks/run_summary.py RUN_DIR [RUN_DIR ...]
       (e.g. runs/baselines-4k/stages/* runs/baselines-4k/*)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kolmotok.cli import report_errors


def summarise(run: Path) -> str:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return f"{run}: no metrics yet"
    last = rows[-1]
    evals = sorted({k for r in rows for k in r if k.startswith("eval_l1_T")}, key=lambda k: int(k[9:]))
    cells = []
    for key in evals:
        logged = [r for r in rows if key in r]
        cells.append(f"{key[8:]} {logged[0][key]:.5f} (step {logged[0]['step']}) -> {logged[-1][key]:.5f} "
                     f"(step {logged[-1]['step']})")
    seconds, restarts = training_seconds(rows)
    note = f", clock restarted {restarts}x at a resume and summed" if restarts else ""
    return (f"{str(run):<36} {last['step']:>5} steps {seconds:>6.0f} s ({seconds / last['step']:.2f} s/step{note})"
            + ("  held-out l1: " + "; ".join(cells) if cells else ""))


def training_seconds(rows: list[dict]) -> tuple[float, int]:
    """Training seconds of a run, and how often its ``time`` column restarted: logs written before
    the time was kept across resumes start again from 0 after one, so the segments are summed."""
    total, restarts, previous = 0.0, 0, 0.0
    for row in rows:
        if row["time"] < previous:
            total, restarts = total + previous, restarts + 1
        previous = row["time"]
    return total + previous, restarts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    runs = [r for r in ap.parse_args().runs if (r / "metrics.jsonl").is_file()]
    if not runs:
        ap.error("none of the given directories holds a metrics.jsonl")
    for run in runs:
        print(summarise(run))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
