"""What fewer tokens save a downstream model: its training time per epoch, by how it batches.

    python benchmarks/downstream_cost.py [--data photos:test] [--num-images 2048] [--epsilons 0.05,0.08,0.12]
        [--lengths 4,8,16,T_max] [--batch-size 128] [--width 256] [--layers 4] [--rounds 5] [--ckpt DIR]

The images are encoded once per setting (KARL at each eps; the same model in fixed-length mode
at each length). A transformer of ``--width`` and ``--layers`` (the downstream probe's
architecture, kolmotok.evaluation.downstream.TokenProbe) then trains one epoch over them, and
the time is taken. KARL's tokens are batched three ways:

* ``padded``: random batches of ``--batch-size`` images, tokens as ``tok.encode`` returns them,
  padded to the budget: what a model reading ``enc.tokens`` with ``enc.mask`` pays as it is;
* ``cut``: the same random batches, each cut to its own longest sequence (``Encoding.take``);
* ``by length``: batches of images with similar lengths (``kolmotok.length_batches``), cut.

``slots/img`` counts the token positions the model processes per image, padding included.
Times are the median over ``--rounds`` rounds; each round runs every setting once, in turn,
so the ratios compare settings timed side by side. ``x fixed-T`` is the time over the time of
the full fixed length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from downstream import check_settings, fixed_lengths
from torch import nn
from tqdm.auto import tqdm

import kolmotok
from kolmotok.api import Encoding
from kolmotok.batching import length_batches
from kolmotok.cli import at_least, comma_numbers, report_errors
from kolmotok.data import eval_set
from kolmotok.evaluation.downstream import TokenProbe, class_labels, encode_all


@dataclass
class Job:
    setting: str  # "karl eps=0.08", "fixed-8"
    batching: str  # "padded", "cut" or "by length"
    mean_tokens: float
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (tokens, mask, labels) per batch
    times: list[float] = field(default_factory=list)

    @property
    def slots_per_image(self) -> float:
        """Token positions processed per image, padding included."""
        return sum(t.shape[0] * t.shape[1] for t, _, _ in self.steps) / sum(len(y) for _, _, y in self.steps)


def make_job(setting: str, batching: str, enc: Encoding, batches: list[torch.Tensor], labels: torch.Tensor,
             cut: bool) -> Job:
    """The job's batches gathered before any timing: each padded to the budget, or ``cut`` to
    its own longest sequence."""
    mask, steps = enc.mask, []
    for idx in batches:
        if cut:
            part = enc.take(idx)
            steps.append((part.tokens, part.mask, labels[idx]))
        else:
            steps.append((enc.tokens[idx], mask[idx], labels[idx]))
    return Job(setting, batching, enc.lengths.float().mean().item(), steps)


def random_batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(batch_size))


def train_epoch(probe: nn.Module, opt: torch.optim.Optimizer, job: Job) -> float:
    """One pass over the job's batches (forward, backward, step); wall seconds."""
    start = time.perf_counter()
    for tokens, mask, y in job.steps:
        loss = nn.functional.cross_entropy(probe(tokens, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (default: the shipped one)")
    ap.add_argument("--data", default="photos:test", help="shapes, photos:SPLIT or folder:PATH (labelled)")
    ap.add_argument("--num-images", type=at_least("--num-images", 1), default=2048)
    ap.add_argument("--epsilons", type=comma_numbers("--epsilons"), default=[0.05, 0.08, 0.12])
    ap.add_argument("--lengths", type=comma_numbers("--lengths"), help="fixed lengths (default 4,8,16,T_max)")
    ap.add_argument("--batch-size", type=at_least("--batch-size", 1), default=128)
    ap.add_argument("--width", type=at_least("--width", 4), default=256, help="downstream model width")
    ap.add_argument("--layers", type=at_least("--layers", 1), default=4, help="downstream model layers")
    ap.add_argument("--rounds", type=at_least("--rounds", 1), default=5)
    ap.add_argument("--threads", type=at_least("--threads", 1), default=None)
    args = ap.parse_args()
    if args.width % 4:
        raise ValueError(f"--width {args.width}: the probe has 4 attention heads; give a multiple of 4")
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = kolmotok.load(args.ckpt, device="cpu")
    lengths = fixed_lengths(tok, args.lengths, (4, 8, 16))
    check_settings(tok, args.epsilons, lengths)
    data = eval_set(args.data, tok.image_size, args.num_images)
    labels, names = class_labels(data)
    n = len(labels)
    shuffled = random_batches(n, args.batch_size, seed=0)
    jobs = []
    for eps in args.epsilons:
        enc, name = encode_all(tok, data.images, eps, None), f"karl eps={eps:g}"
        jobs += [make_job(name, "padded", enc, shuffled, labels, cut=False),
                 make_job(name, "cut", enc, shuffled, labels, cut=True),
                 make_job(name, "by length", enc, length_batches(enc.lengths, args.batch_size), labels, cut=True)]
    for length in lengths:
        enc = encode_all(tok, data.images, 0.0, length)
        jobs.append(make_job(f"fixed-{length}", "padded", enc, shuffled, labels, cut=False))

    codebook = tok.model.quantizer.codebook_size if tok.discrete else 0
    token_dim = 1 if codebook else jobs[0].steps[0][0].shape[-1]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = TokenProbe(token_dim, tok.max_tokens, len(names), args.width, args.layers, codebook).state_dict()
    for _ in tqdm(range(args.rounds), desc="rounds", dynamic_ncols=True):
        for job in jobs:  # every job from the same weights, so each epoch does the same arithmetic per slot
            probe = TokenProbe(token_dim, tok.max_tokens, len(names), args.width, args.layers, codebook)
            probe.load_state_dict(start)
            opt = torch.optim.AdamW(probe.parameters(), lr=1e-3)
            job.times.append(train_epoch(probe, opt, job))

    full = next((j for j in jobs if j.setting == f"fixed-{tok.max_tokens}"), None)
    base = statistics.median(full.times) if full else None
    print(" ".join(["# python benchmarks/downstream_cost.py", *sys.argv[1:]]))
    print(f"{data.name}: {n} images; downstream transformer width {args.width}, {args.layers} layers, "
          f"batch {args.batch_size}; {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    print(f"{'setting':<18} {'batching':<10} {'mean tokens':>11} {'slots/img':>10} {'batches':>8} "
          f"{'s/epoch':>8} {'x fixed-' + str(tok.max_tokens):>10}")
    for job in jobs:
        seconds = statistics.median(job.times)
        ratio = f"{seconds / base:10.2f}" if base else f"{'-':>10}"
        print(f"{job.setting:<18} {job.batching:<10} {job.mean_tokens:11.2f} "
              f"{job.slots_per_image:10.2f} {len(job.steps):8d} {seconds:8.3f} {ratio}")


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
