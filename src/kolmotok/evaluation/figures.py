"""Figures of a bench run (matplotlib, written as PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from .bench import BenchResult, karl_oracle_spearman
from .methods import Method


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _curves(res: BenchResult) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in res.rows:
        out.setdefault(r.method, []).append(r)
    return out


def rate_distortion(res: BenchResult, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in _curves(res).items():
        rows = sorted(rows, key=lambda r: r.mean_bits)
        style = "o" if name.startswith("fixed-") else "o-"
        if rows[0].unit == "tokens":
            ax_t.plot([r.mean_size for r in rows], [r.l1 for r in rows], style, label=name)
        ax_b.plot([r.mean_bits for r in rows], [r.l1 for r in rows], style, label=name)
    ax_t.set(xlabel="mean tokens per image", ylabel="mean l1", title="tokens vs error (one point per eps)")
    ax_b.set(xlabel="mean bits per image (log)", ylabel="mean l1", xscale="log", title="bits vs error, with codecs")
    for ax in (ax_t, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def tokens_vs_epsilon(res: BenchResult, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, rows in _curves(res).items():
        if rows[0].unit == "tokens":
            ax.plot([r.epsilon for r in rows], [r.mean_size for r in rows], "o-", label=name)
    ax.set(xlabel="target eps (l1)", ylabel="mean tokens kept", title="tokens vs target error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def count_histograms(res: BenchResult, path: Path, methods=("karl", "oracle")) -> Path:
    plt = _pyplot()
    eps = res.epsilons
    fig, axes = plt.subplots(1, len(eps), figsize=(3.2 * len(eps), 3), sharey=True, squeeze=False)
    bins = np.arange(0.5, res.max_tokens + 1.5)
    for ax, e in zip(axes[0], eps):
        for m in methods:
            r = res.row(m, e)
            if r is not None:
                ax.hist(r.sizes, bins=bins, alpha=0.55, label=m)
        ax.set(title=f"eps = {e}", xlabel="tokens kept")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("images")
    return _save(fig, path)


def karl_vs_oracle(res: BenchResult, path: Path) -> Path:
    plt = _pyplot()
    rho = dict(karl_oracle_spearman(res))
    eps = [e for e in res.epsilons if e in rho]
    fig, axes = plt.subplots(1, max(1, len(eps)), figsize=(3.4 * max(1, len(eps)), 3.4), sharey=True,
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, e in zip(axes[0], eps):
        k, o = np.array(res.row("karl", e).sizes), np.array(res.row("oracle", e).sizes)
        jitter = lambda v: v + rng.uniform(-0.25, 0.25, len(v))  # noqa: E731
        ax.scatter(jitter(o), jitter(k), s=6, alpha=0.5)
        ax.plot([0, res.max_tokens], [0, res.max_tokens], "k--", lw=0.8)
        ax.set(title=f"eps = {e}, Spearman {rho[e]:.2f}", xlabel="oracle tokens")
    axes[0][0].set_ylabel("KARL tokens")
    return _save(fig, path)


def example_sheet(methods: list[Method], images: torch.Tensor, epsilon: float, path: Path, rows: int = 6) -> Path:
    """Originals and each method's reconstruction at ``epsilon``, images spread over KARL's counts."""
    plt = _pyplot()
    outs = {m.name: m.at_epsilon(images, epsilon) for m in methods}
    order = torch.argsort(next(iter(outs.values())).size, stable=True)
    pick = order[torch.linspace(0, len(order) - 1, rows).round().long()]
    cols = 1 + len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.35 * rows), squeeze=False)
    for i, idx in enumerate(pick.tolist()):
        panels = [("original", images[idx], "")] + [
            (name, o.recon[idx], f"{o.size[idx]:.0f}{'t' if m.unit == 'tokens' else 'B'}")
            for (name, o), m in zip(outs.items(), methods)]
        for ax, (name, img, label) in zip(axes[i], panels):
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(label, fontsize=7, labelpad=1)
            if i == 0:
                ax.set_title(name, fontsize=7)
    fig.suptitle(f"eps = {epsilon}: reconstruction and size per method", fontsize=9)
    return _save(fig, path)


FIGURES = ("rate_distortion.png", "tokens_vs_epsilon.png", "count_histograms.png", "karl_vs_oracle.png",
           "examples.png")


def write_figures(res: BenchResult, methods: list[Method], images: torch.Tensor, out: Path,
                  sheet_epsilon: float = 0.05) -> list[Path]:
    """The figures of :data:`FIGURES` a bench has data for (token counts need a tokenizer among
    the methods, the KARL-oracle scatter both of them)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if any(r.unit == "tokens" for r in res.rows):
        paths += [rate_distortion(res, out / "rate_distortion.png"),
                  tokens_vs_epsilon(res, out / "tokens_vs_epsilon.png"),
                  count_histograms(res, out / "count_histograms.png")]
    if karl_oracle_spearman(res):
        paths.append(karl_vs_oracle(res, out / "karl_vs_oracle.png"))
    paths.append(example_sheet(methods, images[:256], sheet_epsilon, out / "examples.png"))
    return paths
