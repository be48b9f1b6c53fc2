"""``kolmotok eval``: the acceptance table of a tokenizer on an evaluation set."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import Tokenizer
from ..calibration import promise_p_value
from ..config import fixed_length_grid
from ..data import EvalSet
from ..io import one_line
from .metrics import l1_per_image, png_bytes, psnr_per_image, resample_baseline, spearman, ssim_per_image

DEFAULT_EPSILONS = (0.02, 0.03, 0.05, 0.08, 0.12)
PROMISE_ALARM = 0.01  # p-value below which eval reports that a guarantee fails on the data


def promise_verdict(p_value: float) -> str:
    """What a promise check's p-value says, as eval and tokenize print it."""
    if p_value < PROMISE_ALARM:
        return f"< {PROMISE_ALARM:g}: ALARM, the promise fails on these images; recalibrate on data like them"
    return f"(no alarm: not below {PROMISE_ALARM:g})"


@dataclass
class Reconstructions:
    lengths: torch.Tensor  # (N,)
    l1: torch.Tensor  # (N,)
    psnr: torch.Tensor | None  # None when run with quality=False
    ssim: torch.Tensor | None


@torch.no_grad()
def run_batched(tok: Tokenizer, images: torch.Tensor, epsilon: float, budget: int | None = None,
                batch: int = 256, quality: bool = True, guarantee: float | None = None) -> Reconstructions:
    """Encode + decode ``images`` at one eps / budget (with a calibrated ``guarantee`` if given)
    and measure each reconstruction (l1, and PSNR / SSIM unless ``quality`` is False)."""
    parts = []
    for chunk in images.split(batch):
        enc = tok.encode(chunk, epsilon=epsilon, budget=budget, guarantee=guarantee)
        rec = tok.decode(enc)
        x = chunk.to(rec.device)
        row = [enc.lengths.cpu(), l1_per_image(rec, x).cpu()]
        if quality:
            row += [psnr_per_image(rec, x).cpu(), ssim_per_image(rec, x).cpu()]
        parts.append(row)
    cols = [torch.cat(p) for p in zip(*parts)]
    return Reconstructions(*cols, *([None, None] if not quality else []))


@dataclass
class EpsilonRow:
    epsilon: float
    mean_tokens: float
    median_tokens: float
    cv_tokens: float  # coefficient of variation of the per-image counts
    meet_share: float  # share of images whose l1 <= eps after the single pass
    full_budget_meet_share: float  # share that the full budget (eps = 0 mode) brings within eps
    l1: float
    psnr: float
    ssim: float
    # with a guarantee: can the calibration promise this eps, and the promise's p-value on this data
    promised: bool | None = None
    promise_p_value: float | None = None


@dataclass
class BudgetRow:
    budget: int
    l1: float
    psnr: float
    ssim: float


@dataclass
class SourceRow:
    """One source's images (a photograph, a subfolder): per eps of the report, in its order."""
    source: str
    num_images: int
    mean_tokens: list[float]
    meet_share: list[float]
    promise_p_value: list[float | None]  # with a guarantee, where it is promised; else None


@dataclass
class ImageRow:
    """One image of the evaluation set (eval --per-image): per eps of the report, in its order."""
    index: int
    name: str | None  # its file (folder:) or photograph (photos:)
    source: str | None  # what --by-source groups it under: its subfolder (folder:) or photograph (photos:)
    label: float | None  # ground-truth complexity (shapes)
    png_bytes: int
    full_budget_l1: float
    tokens: list[int]
    l1: list[float]


@dataclass
class EvalReport:
    data: str
    num_images: int
    max_tokens: int
    epsilon_rows: list[EpsilonRow]
    budget_rows: list[BudgetRow]
    reference_l1: dict[str, float]  # classical down/up-sampling baselines
    spearman_tokens_vs_png: float
    spearman_tokens_vs_label: float | None = None
    # the same, within grayscale and within colour crops (PNG stores R = G = B crops in fewer bytes)
    spearman_png_by_colour: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    guarantee: float | None = None  # the eps rows were encoded with this calibrated guarantee
    by_source: list[SourceRow] = field(default_factory=list)  # filled when asked for (eval --by-source)
    images: list[ImageRow] = field(default_factory=list)  # filled when asked for (eval --per-image)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(tok: Tokenizer, data: EvalSet, epsilons=DEFAULT_EPSILONS, rank_epsilon: float = 0.05,
             guarantee: float | None = None, by_source: bool = False, progress: bool = False,
             per_image: bool = False) -> EvalReport:
    """The eval table; with ``guarantee`` the eps rows use the calibrated condition and say, per eps,
    whether the promise holds on these images (:func:`kolmotok.calibration.promise_p_value`).
    ``by_source`` adds the same per source of the images (:attr:`EvalSet.sources`), ``per_image``
    one row per image (:class:`ImageRow`)."""
    calibration = None if guarantee is None else tok.calibration_for(guarantee)  # fails before any work
    if by_source and data.sources is None:
        raise ValueError(f"{data.name}: its images have no sources to break down by; "
                         "use photos:SPLIT (by photograph) or folder:PATH (by subfolder)")
    images = data.images
    T = tok.max_tokens
    budgets = fixed_length_grid(T)
    bar = tqdm(total=len(budgets) + len(epsilons) + 1, desc="eval", unit="setting", disable=not progress,
               dynamic_ncols=True)

    def measured(r: Reconstructions) -> Reconstructions:
        bar.update()
        return r

    fixed = {b: measured(run_batched(tok, images, 0.0, b)) for b in budgets}
    full = fixed[T]
    eps_rows, per_eps = [], {}
    for eps in epsilons:
        r = measured(run_batched(tok, images, eps, guarantee=guarantee))
        per_eps[eps] = r
        n = r.lengths.float()
        met = int((r.l1 <= eps).sum())
        promised = None if calibration is None else bool(calibration.lookup(torch.tensor([eps]))[1])
        eps_rows.append(EpsilonRow(
            epsilon=eps, mean_tokens=float(n.mean()), median_tokens=float(n.median()),
            cv_tokens=float(n.std(unbiased=False) / n.mean()), meet_share=met / len(images),
            full_budget_meet_share=float((full.l1 <= eps).float().mean()), l1=float(r.l1.mean()),
            psnr=float(r.psnr.mean()), ssim=float(r.ssim.mean()), promised=promised,
            promise_p_value=promise_p_value(met, len(images), guarantee) if promised else None))
    budget_rows = [BudgetRow(b, float(f.l1.mean()), float(f.psnr.mean()), float(f.ssim.mean()))
                   for b, f in fixed.items()]
    S = tok.image_size
    reference = {f"resample_{g}x{g}": float(l1_per_image(resample_baseline(images, g), images).mean())
                 for g in (max(1, S // 8), max(1, S // 4))}
    # the complexity ranking is the plain single pass's (a guarantee's condition is not the count's meaning)
    ranked = measured((per_eps.get(rank_epsilon) if guarantee is None else None)
                      or run_batched(tok, images, rank_epsilon))
    bar.close()
    rank_lengths = ranked.lengths.numpy()
    png = np.array([png_bytes(im) for im in images])
    rho_label = spearman(rank_lengths, data.labels.numpy()) if data.labels is not None else None
    return EvalReport(data.name, len(images), T, eps_rows, budget_rows, reference,
                      spearman(rank_lengths, png), rho_label, spearman_by_colour(images, rank_lengths, png),
                      guarantee=guarantee,
                      by_source=source_rows(data.sources, eps_rows, per_eps, guarantee) if by_source else [],
                      images=image_rows(data, png, full, [per_eps[e] for e in epsilons]) if per_image else [])


def image_rows(data: EvalSet, png: np.ndarray, full: Reconstructions, per_eps: list[Reconstructions]
               ) -> list[ImageRow]:
    labels = data.labels.tolist() if data.labels is not None else [None] * len(png)
    names = [one_line(n) for n in data.names] if data.names else [None] * len(png)  # UTF-8, one line each
    sources = [one_line(n) for n in data.sources] if data.sources else [None] * len(png)
    return [ImageRow(i, names[i], sources[i], labels[i], int(png[i]), float(full.l1[i]),
                     [int(r.lengths[i]) for r in per_eps], [float(r.l1[i]) for r in per_eps]) for i in range(len(png))]


def image_table_csv(rep: EvalReport) -> str:
    """:attr:`EvalReport.images` as CSV: index, name, source, label, png_bytes, full_budget_l1, then per
    eps tokens@EPS, l1@EPS and meets@EPS (1 if the image met eps, else 0)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    eps = [f"{r.epsilon:g}" for r in rep.epsilon_rows]
    writer.writerow(["index", "name", "source", "label", "png_bytes", "full_budget_l1"]
                    + [f"{k}@{e}" for e in eps for k in ("tokens", "l1", "meets")])
    for row in rep.images:
        name, source, label = ("" if x is None else x for x in (row.name, row.source, row.label))
        cells = [row.index, name, source, label, row.png_bytes, f"{row.full_budget_l1:.5f}"]
        for r, n, err in zip(rep.epsilon_rows, row.tokens, row.l1):
            cells += [n, f"{err:.5f}", int(err <= r.epsilon)]
        writer.writerow(cells)
    return out.getvalue()


def source_rows(sources: list[str], eps_rows: list[EpsilonRow], per_eps: dict[float, Reconstructions],
                guarantee: float | None) -> list[SourceRow]:
    """Tokens and share meeting eps per source; with a guarantee, each source's promise check."""
    names = np.array(sources)
    rows = []
    for source in sorted(set(sources)):
        sel = torch.from_numpy(names == source)
        n = int(sel.sum())
        met = [int((per_eps[r.epsilon].l1[sel] <= r.epsilon).sum()) for r in eps_rows]
        rows.append(SourceRow(
            source, n, [float(per_eps[r.epsilon].lengths[sel].float().mean()) for r in eps_rows],
            [m / n for m in met],
            [promise_p_value(m, n, guarantee) if r.promised else None for m, r in zip(met, eps_rows)]))
    return rows


def grayscale_mask(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) -> (N,) bool numpy array, True for images with R = G = B everywhere."""
    return ((images[:, 0] == images[:, 1]) & (images[:, 1] == images[:, 2])).flatten(1).all(1).cpu().numpy()


def spearman_by_colour(images: torch.Tensor, values: np.ndarray, png: np.ndarray, min_group: int = 10
                       ) -> dict[str, float]:
    """Spearman(values, png) within grayscale (R = G = B) and within colour images; a group
    smaller than ``min_group`` is left out."""
    gray = grayscale_mask(images)
    return {name: spearman(values[sel], png[sel]) for name, sel in (("grayscale", gray), ("colour", ~gray))
            if sel.sum() >= min_group}


def format_sources(rep: EvalReport) -> list[str]:
    eps = " / ".join(f"{r.epsilon:g}" for r in rep.epsilon_rows)
    width = max(len(s.source) for s in rep.by_source)
    lines = ["", f" by source: share meeting eps, then mean tokens, at eps {eps}"]
    for s in rep.by_source:
        alarms = [f"{r.epsilon:g}" for r, p in zip(rep.epsilon_rows, s.promise_p_value)
                  if p is not None and p < PROMISE_ALARM]
        lines.append(f"   {s.source:<{width}} {s.num_images:5d} {'image: ' if s.num_images == 1 else 'images:'} "
                     + " / ".join(f"{100 * m:5.1f}%" for m in s.meet_share) + " | "
                     + " / ".join(f"{t:5.2f}" for t in s.mean_tokens)
                     + (f"  ALARM: promise fails at eps {', '.join(alarms)}" if alarms else ""))
    return lines


def format_report(rep: EvalReport) -> str:
    lines = [f"data {rep.data}: {rep.num_images} images, T_max = {rep.max_tokens}", "",
             "   eps | mean tok | median | CV   | meet eps | full-budget meets | l1     | PSNR  | SSIM",
             "-------+----------+--------+------+----------+-------------------+--------+-------+------"]
    for r in rep.epsilon_rows:
        lines.append(f" {r.epsilon:5.3f} | {r.mean_tokens:8.2f} | {r.median_tokens:6.1f} | {r.cv_tokens:4.2f} | "
                     f"{100 * r.meet_share:7.1f}% | {100 * r.full_budget_meet_share:16.1f}% | {r.l1:.4f} | "
                     f"{r.psnr:5.2f} | {r.ssim:.3f}")
    if rep.guarantee is not None:
        lines += ["", f" guarantee {rep.guarantee:g} (the eps rows above use the calibrated condition):"]
        for r in rep.epsilon_rows:
            lines.append(f"   eps {r.epsilon:5.3f}: " + (
                "not promised (beyond what the calibration images reach)" if not r.promised else
                f"met by {100 * r.meet_share:.1f}%; P(so few | promise holds) = {r.promise_p_value:.3g} "
                + promise_verdict(r.promise_p_value)))
    if rep.by_source:
        lines += format_sources(rep)
    lines += ["", " fixed length (eps = 0) | l1     | PSNR  | SSIM", "------------------------+--------+-------+------"]
    for b in rep.budget_rows:
        lines.append(f" {b.budget:3d} tokens             | {b.l1:.4f} | {b.psnr:5.2f} | {b.ssim:.3f}")
    lines.append("")
    for name, v in rep.reference_l1.items():
        g = name.split("_")[1]
        n = 3 * int(g.split("x")[0]) ** 2
        lines.append(f" reference {name} ({n} numbers/image): l1 {v:.4f}")
    if math.isnan(rep.spearman_tokens_vs_png):
        lines.append(" Spearman(tokens at eps=0.05, PNG bytes): undefined, every image kept the same count")
    else:
        lines.append(f" Spearman(tokens at eps=0.05, PNG bytes) = {rep.spearman_tokens_vs_png:.3f}")
        if len(rep.spearman_png_by_colour) == 2:
            lines.append("   within grayscale images only: {grayscale:.3f}; within colour images only: {colour:.3f}"
                         .format(**rep.spearman_png_by_colour))
    if rep.spearman_tokens_vs_label is not None and not math.isnan(rep.spearman_tokens_vs_label):
        lines.append(f" Spearman(tokens at eps=0.05, ground-truth complexity) = {rep.spearman_tokens_vs_label:.3f}")
    return "\n".join(lines)
