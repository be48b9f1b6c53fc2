"""Encode / decode throughput and peak memory of a tokenizer, plus training speed per preset.

    python benchmarks/throughput.py [--ckpt DIR] [--device cpu] [--batch 64] [--threads 2]
    python benchmarks/throughput.py --compare OTHER_DIR --train-steps 0

Prints images/s for one encoder pass and one decoder pass (eps = 0.05), the peak
resident memory of the process (CPU) or peak allocated memory (CUDA), and the
parameter count and training seconds/step of each preset (tiny at its default batch size,
the larger presets at batch 8).
``--compare`` also times a second checkpoint side by side: rounds alternate between the two
models on the same images, and the medians and their ratio are printed, so drift of a shared
machine hits both alike.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

import kolmotok
from kolmotok.cli import report_errors
from kolmotok.config import get_preset
from kolmotok.models import KARLTokenizer
from kolmotok.training import KARLObjective

MAIN_PRESETS = ("tiny", "small", "base")  # the baselines and -vae variants share these backbones


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def interleaved(fns: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, repeats))
    return {name: statistics.median(t) for name, t in times.items()}


def compare(toks: dict, x: torch.Tensor, rounds: int, repeats: int) -> None:
    encs = {name: tok.encode(x, epsilon=0.05) for name, tok in toks.items()}
    enc = interleaved({n: partial(t.encode, x, epsilon=0.05) for n, t in toks.items()}, rounds, repeats)
    dec = interleaved({n: partial(t.decode, encs[n]) for n, t in toks.items()}, rounds, repeats)
    print(f"\nside by side: median of {rounds} alternating rounds of {repeats} calls, batch {len(x)}")
    for name in toks:
        print(f"  {name:32} encode {1e3 * enc[name]:7.1f} ms   decode {1e3 * dec[name]:7.1f} ms per batch")
    first, second = list(toks)
    print(f"  ratio {first} / {second}: encode {enc[first] / enc[second]:.2f}, decode {dec[first] / dec[second]:.2f}")


def train_step(model: KARLTokenizer, objective: KARLObjective, opt: torch.optim.Optimizer,
               images: torch.Tensor) -> None:
    opt.zero_grad()
    objective(model, images, torch.Generator().manual_seed(0)).loss.backward()
    opt.step()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", help="checkpoint (default: the shipped tiny one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps per preset (0 = skip)")
    ap.add_argument("--compare", help="a second checkpoint to time side by side with the first")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds for --compare")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = kolmotok.load(args.ckpt, device=args.device)
    x = torch.rand(args.batch, 3, tok.image_size, tok.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(tok.device)
    enc = tok.encode(x, epsilon=0.05)
    t_enc = timed(lambda: tok.encode(x, epsilon=0.05), args.repeats)
    t_dec = timed(lambda: tok.decode(enc), args.repeats)
    print(f"device {tok.device}, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"image {tok.image_size}px, T_max {tok.max_tokens}")
    print(f"encode: {args.batch / t_enc:8.1f} images/s   ({1e3 * t_enc:.1f} ms per batch, one encoder pass)")
    print(f"decode: {args.batch / t_dec:8.1f} images/s   ({1e3 * t_dec:.1f} ms per batch, one decoder pass)")
    kind = "allocated on GPU" if tok.device.type == "cuda" else "process RSS"
    print(f"peak memory: {peak_memory_mb(tok.device):.0f} MiB ({kind})")
    if args.compare:
        first = args.ckpt or "shipped"
        if args.compare == first:
            raise ValueError(f"--compare {args.compare}: the same checkpoint as --ckpt; name another one")
        other = kolmotok.load(args.compare, device=args.device)
        compare({first: tok, args.compare: other}, x, args.rounds, args.repeats)
    if not args.train_steps:
        return
    print("\npreset | params  | image | T_max | batch | train s/step (two-phase objective)")
    for name in MAIN_PRESETS:
        cfg = get_preset(name)
        model = KARLTokenizer(cfg.model).to(tok.device)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        batch = cfg.train.batch_size if name == "tiny" else 8
        imgs = torch.rand(batch, 3, cfg.model.image_size, cfg.model.image_size, device=tok.device)
        model.init_linear_path(torch.rand(max(64, batch), 3, cfg.model.image_size, cfg.model.image_size,
                                          device=tok.device))
        s = timed(partial(train_step, model, KARLObjective(cfg.objective), torch.optim.AdamW(model.parameters()),
                          imgs), args.train_steps)
        print(f"{name:6} | {n:6.2f}M | {cfg.model.image_size:5d} | {cfg.model.max_tokens:5d} | {batch:5d} | {s:.2f}")


if __name__ == "__main__":
    sys.exit(report_errors(Path(__file__).name, main))
