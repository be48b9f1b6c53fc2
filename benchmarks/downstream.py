"""Downstream probe: what each setting's token counts cost a classifier reading the tokens.

    python benchmarks/downstream.py [--data shapes] [--label auto|scale] [--per-class] [--num-images 2048] [--ckpt DIR]
        [--epsilons 0.03,0.05,0.08,0.12] [--lengths 1,2,3,4,6,8,12,16,T_max] [--batching random|length]
        [--out FILE.json]

For KARL at each eps and for the same model in fixed-length mode at each length, the images
are encoded once and a small transformer probe (kolmotok.evaluation.downstream) is trained on
three quarters of them to predict each image's label and scored on the rest, with three probe
seeds. Labels: the complexity class of ``shapes``, the photograph of ``photos:SPLIT`` crops,
the subfolder of ``folder:PATH`` images; ``--label scale``: the scale a photo crop was cut
at. The last column sets each KARL row beside the fixed-length accuracy interpolated at the
same mean tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

import kolmotok
from kolmotok.cli import at_least, comma_numbers, report_errors
from kolmotok.data import eval_set
from kolmotok.evaluation.downstream import BATCHINGS, LABELS, ProbeSettings, downstream_table, format_table
from kolmotok.io import write_json

DEFAULT_LENGTHS = (1, 2, 3, 4, 6, 8, 12, 16)  # and T_max


def whole(flag: str, values: list[float]) -> list[int]:
    if any(v != int(v) for v in values):
        raise ValueError(f"{flag}: token counts are whole numbers, got {values}")
    return [int(v) for v in values]


def fixed_lengths(tok: kolmotok.Tokenizer, given: list[float] | None, defaults: tuple[int, ...]) -> list[int]:
    """The --lengths given (whole numbers), or the defaults below this checkpoint's T_max and T_max itself."""
    if given:
        return whole("--lengths", given)
    return [n for n in defaults if n < tok.max_tokens] + [tok.max_tokens]


def check_settings(tok: kolmotok.Tokenizer, epsilons: list[float], lengths: list[int]) -> None:
    """ValueError unless every eps suits this checkpoint and every fixed length is in 1..T_max."""
    for eps in epsilons:
        tok.check_options(eps, None)
    if bad := [n for n in lengths if not 1 <= n <= tok.max_tokens]:
        raise ValueError(f"--lengths {bad}: this checkpoint keeps 1..{tok.max_tokens} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (default: the shipped one)")
    ap.add_argument("--data", default="shapes", help="shapes, photos:SPLIT or folder:PATH (class subfolders)")
    ap.add_argument("--label", choices=LABELS, default="auto",
                    help="auto: the data's own labels; scale: the scale each photos:SPLIT crop was cut at")
    ap.add_argument("--per-class", action="store_true",
                    help="also print KARL's mean tokens per class, and the share kept to at most 2 tokens")
    ap.add_argument("--num-images", type=at_least("--num-images", 0), default=2048,
                    help="images drawn (folders: a fixed random subset; 0 = all files)")
    ap.add_argument("--epsilons", type=comma_numbers("--epsilons"), default=[0.03, 0.05, 0.08, 0.12])
    ap.add_argument("--lengths", type=comma_numbers("--lengths"),
                    help="fixed lengths to compare with (default 1,2,3,4,6,8,12,16 below T_max, and T_max)")
    ap.add_argument("--steps", type=at_least("--steps", 1), default=ProbeSettings.steps, help="probe training steps")
    ap.add_argument("--seeds", type=at_least("--seeds", 1), default=ProbeSettings.seeds, help="probes per setting")
    ap.add_argument("--batching", choices=BATCHINGS, default="random",
                    help="probe training batches: drawn at random, or grouped by length (kolmotok.length_batches)")
    ap.add_argument("--threads", type=at_least("--threads", 1), default=None)
    ap.add_argument("--out", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = kolmotok.load(args.ckpt, device="cpu")
    lengths = fixed_lengths(tok, args.lengths, DEFAULT_LENGTHS)
    check_settings(tok, args.epsilons, lengths)
    settings = ProbeSettings(steps=args.steps, seeds=args.seeds, batching=args.batching)
    data = eval_set(args.data, tok.image_size, args.num_images)
    report = downstream_table(tok, data, args.epsilons, lengths, settings, label=args.label)
    print(" ".join(["# python benchmarks/downstream.py", *sys.argv[1:]]))
    print(format_table(report, args.per_class))
    if args.out:
        write_json(args.out, dataclasses.asdict(report))


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
