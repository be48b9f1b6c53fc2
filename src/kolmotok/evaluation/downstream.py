"""What the tokens a setting drops cost a downstream model: a probe benchmark.

For each setting (KARL at a target eps, or a fixed length), every image of a labelled set is
encoded once; a small transformer probe, reading the padded tokens with ``Encoding.mask``, is
trained to predict each image's label from them on one part of the set and scored on the rest.
Accuracy against mean tokens kept answers the question a pipeline owner asks of adaptive
tokenization: at the same average cost, does spending tokens where images are complex keep
more of what a downstream model needs than a fixed length does? A last row gives the same
probe the images themselves, cut into the model's patches: how far the task can go with this
probe and data at all.

Labels come with the data: the ground-truth complexity class of ``shapes`` (flat, gradient,
1..8 primitives, noise), the source photograph of ``photos:SPLIT`` crops, the subfolder of a
``folder:PATH`` image (class folders, as ImageFolder lays them out). ``label="scale"`` asks
instead at what scale a ``photos:SPLIT`` crop was cut (crop side / image size, 1 to 4): a
task that needs fine detail, since the scale shows in how dense the texture is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kolmotok.api import Encoding, Tokenizer
from kolmotok.batching import length_batches
from kolmotok.data import EvalSet


@dataclass
class ProbeSettings:
    steps: int = 400
    batch_size: int = 128
    width: int = 64
    layers: int = 2
    lr: float = 2e-3
    seeds: int = 3
    test_share: float = 0.25
    batching: str = "random"  # "random": images drawn at random; "length": epochs of length_batches


BATCHINGS = ("random", "length")


@dataclass
class DownstreamRow:
    kind: str  # "karl", "fixed" or "pixels"
    setting: str  # "karl eps=0.05", "fixed-8", "pixels (64 patches)"
    epsilon: float | None
    length: int | None
    mean_tokens: float
    accuracy: float  # mean over probe seeds
    accuracy_std: float
    accuracies: list[float]
    # per class, over all images: mean tokens kept, and the share kept to at most SHORT tokens
    class_tokens: list[float] | None = None
    class_short: list[float] | None = None


SHORT = 2  # "starved": what the per-class block counts


@dataclass
class DownstreamReport:
    data: str
    num_images: int
    label: str  # "auto" or "scale" (class_labels)
    classes: list[str]
    num_train: int  # images the probes were trained on
    num_test: int  # and scored on
    settings: ProbeSettings
    rows: list[DownstreamRow]


LABELS = ("auto", "scale")


def class_labels(data: EvalSet, label: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """(N,) class indices and the class names. ``auto``: the shapes complexity, else each
    image's source; ``scale``: each photo crop's scale."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; known: {', '.join(LABELS)}")
    if label == "scale":
        if data.scales is None:
            raise ValueError(f"{data.name}: no crop scales to probe (label 'scale' is for photos:SPLIT)")
        raw = [f"{v:g}" for v in data.scales]
    elif data.labels is not None:
        raw = [str(int(v)) for v in data.labels]
    elif data.sources is not None:
        raw = data.sources
    else:
        raise ValueError(f"{data.name}: no labels to probe (use shapes, photos:SPLIT or a folder of class folders)")
    names = sorted(set(raw), key=_class_order)
    if len(names) < 2:
        raise ValueError(f"{data.name}: every image has the same label {names[0]!r}; a probe needs two classes "
                         "at least (a folder's classes are its subfolders)")
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[s] for s in raw]), names


def _class_order(name: str) -> tuple:
    """Numbers in numeric order (2 before 10, 1.5 before 2), then names in text order."""
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def split_indices(n: int, test_share: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of 0..n-1 into (train, test), the test part ``test_share`` of n."""
    if not 0 < test_share < 1:
        raise ValueError(f"test share must be in (0, 1), got {test_share}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_share))
    if n - n_test < 1:
        raise ValueError(f"{n} images cannot be split into a probe's training and test parts")
    return perm[n_test:], perm[:n_test]


class TokenProbe(nn.Module):
    """Tokens -> class logits: embed, add the token index, a small transformer that ignores
    padding, mean over the kept tokens, linear head."""

    def __init__(self, token_dim: int, max_tokens: int, classes: int, width: int = 64, layers: int = 2,
                 codebook_size: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(codebook_size, width) if codebook_size else nn.Linear(token_dim, width)
        self.index = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.clamp(min=0) if not tokens.is_floating_point() else tokens)
        x = self.body(x + self.index[: x.shape[1]], src_key_padding_mask=~mask)
        keep = mask[..., None].to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1))


@torch.no_grad()
def encode_all(tok: Tokenizer, images: torch.Tensor, epsilon: float, budget: int | None,
               batch: int = 256) -> Encoding:
    """``images`` encoded ``batch`` at a time, as one Encoding on the CPU."""
    parts = [tok.encode(chunk, epsilon=epsilon, budget=budget) for chunk in images.split(batch)]
    return Encoding(torch.cat([p.tokens.cpu() for p in parts]), torch.cat([p.lengths.cpu() for p in parts]),
                    torch.cat([p.epsilon.cpu() for p in parts]), parts[0].budget)


def pixel_patches(images: torch.Tensor, patch: int) -> Encoding:
    """Images as an Encoding of their non-overlapping ``patch`` x ``patch`` patches (flattened
    RGB values, row by row), every patch kept: the pixels reference for the probe."""
    n, c, h, w = images.shape
    grid = images.cpu().unfold(2, patch, patch).unfold(3, patch, patch)  # (N, C, H/p, W/p, p, p)
    tokens = grid.permute(0, 2, 3, 1, 4, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)
    return Encoding(tokens, torch.full((n,), tokens.shape[1]), torch.zeros(n), tokens.shape[1])


def probe_accuracy(enc: Encoding, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor, classes: int,
                   settings: ProbeSettings, seed: int, codebook_size: int = 0) -> float:
    """Train a fresh probe on ``enc``'s tokens of the ``train`` images; its accuracy on ``test``.
    (The global torch RNG is left as it was.)"""
    tokens, mask = enc.tokens.detach().cpu(), enc.mask.cpu()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = TokenProbe(1 if codebook_size else tokens.shape[-1], enc.budget, classes, settings.width,
                           settings.layers, codebook_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=settings.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.steps, pct_start=0.1)
    probe.train()
    for _, batch in zip(range(settings.steps), probe_batches(enc.lengths[train], train, settings, seed)):
        if settings.batching == "length":  # cut to the batch's longest sequence: what the grouping is for
            part = enc.take(batch)
            logits = probe(part.tokens.detach().cpu(), part.mask.cpu())
        else:
            logits = probe(tokens[batch], mask[batch])
        loss = nn.functional.cross_entropy(logits, labels[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    probe.eval()
    with torch.no_grad():
        predicted = probe(tokens[test], mask[test]).argmax(1)
    return float((predicted == labels[test]).float().mean())


def probe_batches(lengths: torch.Tensor, train: torch.Tensor, settings: ProbeSettings,
                  seed: int) -> Iterator[torch.Tensor]:
    """Endless training batches of image indices (from ``train``; ``lengths`` are theirs):
    ``batch_size`` images drawn at random, or with ``batching="length"`` epoch after epoch of
    :func:`kolmotok.length_batches` over them, in a new order each epoch."""
    if settings.batching not in BATCHINGS:
        raise ValueError(f"unknown batching {settings.batching!r}; known: {', '.join(BATCHINGS)}")
    g = torch.Generator().manual_seed(seed)
    if settings.batching == "random":
        while True:
            yield train[torch.randint(len(train), (min(settings.batch_size, len(train)),), generator=g)]
    while True:  # one epoch per round, each in its own seeded order
        for idx in length_batches(lengths, settings.batch_size, seed=int(torch.randint(2**31, (1,), generator=g))):
            yield train[idx]


def downstream_table(tok: Tokenizer, data: EvalSet, epsilons: list[float], lengths: list[int],
                     settings: ProbeSettings | None = None, progress: bool = True,
                     label: str = "auto") -> DownstreamReport:
    """One row per setting: KARL at each eps (single pass), then each fixed length, then the
    pixels; the same images, split and probe seeds for all."""
    settings = settings or ProbeSettings()
    labels, names = class_labels(data, label)
    train, test = split_indices(len(labels), settings.test_share)
    codebook_size = tok.model.quantizer.codebook_size if tok.discrete else 0
    patch = tok.model.cfg.patch_size
    jobs = ([("karl", f"karl eps={e:g}", e, None) for e in epsilons]
            + [("fixed", f"fixed-{n}", None, n) for n in lengths]
            + [("pixels", f"pixels ({(tok.image_size // patch) ** 2} patches)", None, None)])
    rows = []
    bar = tqdm(total=len(jobs) * settings.seeds, desc="probes", unit="probe", disable=not progress,
               dynamic_ncols=True)
    for kind, setting, eps, length in jobs:
        if kind == "pixels":
            enc, codes = pixel_patches(data.images, patch), 0
        else:
            enc, codes = encode_all(tok, data.images, 0.0 if eps is None else eps, length), codebook_size
        accs = []
        for seed in range(settings.seeds):
            accs.append(probe_accuracy(enc, labels, train, test, len(names), settings, seed, codes))
            bar.update()
        per_class = [enc.lengths[labels == c].float() for c in range(len(names))]
        rows.append(DownstreamRow(kind, setting, eps, length, float(enc.lengths[test].float().mean()),
                                  float(np.mean(accs)), float(np.std(accs)), accs,
                                  [float(n.mean()) for n in per_class],
                                  [float((n <= SHORT).float().mean()) for n in per_class]))
    bar.close()
    return DownstreamReport(data.name, len(labels), label, names, len(train), len(test), settings, rows)


def fixed_accuracy_at(rows: list[DownstreamRow], tokens: float) -> float:
    """The fixed-length rows' accuracy linearly interpolated at ``tokens`` (nan outside their range)."""
    fixed = sorted((r.length, r.accuracy) for r in rows if r.kind == "fixed")
    if not fixed or not fixed[0][0] <= tokens <= fixed[-1][0]:
        return math.nan
    return float(np.interp(tokens, [n for n, _ in fixed], [a for _, a in fixed]))


def format_table(report: DownstreamReport, per_class: bool = False) -> str:
    rows, names, settings = report.rows, report.classes, report.settings
    width = max(len("setting"), *(len(r.setting) for r in rows))
    classes = f"{len(names)} classes" + ("" if report.label == "auto" else f" ({report.label}: {', '.join(names)})")
    lines = [f"data {report.data}: {report.num_images} images, {classes}, probe trained on "
             f"{report.num_train} and scored on {report.num_test}; {settings.seeds} probe seeds, "
             f"{settings.steps} steps each" + ("" if settings.batching == "random" else
                                                ", batches grouped by length and cut to their longest"),
             "", f"{'setting':<{width}} {'mean tokens':>11} {'accuracy':>9} {'(std)':>7} {'fixed at same tokens':>21}"]
    for r in rows:
        same = f" {fixed_accuracy_at(rows, r.mean_tokens):21.3f}" if r.kind == "karl" else ""
        lines.append(f"{r.setting:<{width}} {r.mean_tokens:11.2f} {r.accuracy:9.3f} {r.accuracy_std:7.3f}{same}")
    lines.append("")
    lines.append("mean tokens: over the scored images; fixed at same tokens: the fixed-length rows' accuracy "
                 "interpolated at that mean (nan outside their lengths); pixels: the same probe on the images' "
                 "own patches")
    if per_class:
        lines += ["", f"KARL per class, all images: mean tokens / share kept to at most {SHORT} tokens",
                  f"{'setting':<{width}} " + " ".join(f"{n[:14]:>14}" for n in names)]
        for r in rows:
            if r.kind == "karl" and r.class_tokens is not None:
                lines.append(f"{r.setting:<{width}} " + " ".join(
                    f"{t:7.2f} / {100 * m:3.0f}%" for t, m in zip(r.class_tokens, r.class_short)))
    return "\n".join(lines)
