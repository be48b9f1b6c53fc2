"""``kolmotok bench``: every method on the same images, in one process, side by side.

Stages: :func:`build_methods` (names -> :class:`Method` objects), :func:`run_bench` (measure:
quality, sizes, passes, wall time, FLOPs), :func:`check_claims` (the project's claims as
measured numbers), :func:`format_bench` (tables) and :mod:`.figures` (plots).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..api import Tokenizer, load
from ..checkpoint import read_meta, resolve_checkpoint
from ..config import fixed_length_grid
from ..data import EvalSet
from ..io import write_json, write_text
from .methods import CodecMethod, KARLMethod, Method, MethodOutput, OracleMethod, method_for
from .metrics import l1_per_image, psnr_per_image, spearman, ssim_per_image

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("karl", "karl@0.9", "oracle", "prefix", "recurrent", "fixed", "codecs")
FIXED_LENGTH_SHARE = 0.9  # the fixed-length claims compare KARL with the shortest length meeting eps this often
CODECS = ("png", "jpeg", "webp")


# ------------------------------------------------------------------ methods
def _baseline_runs(root: Path, prefix: str) -> list[Path]:
    return sorted((p for p in root.glob(f"{prefix}*") if p.is_dir()), key=lambda p: p.name)


def karl_method(name: str, tok: Tokenizer) -> KARLMethod:
    """``karl``, ``karl@G`` (calibrated guarantee G) and either with ``+verify`` (an extra decoder
    pass checks each image and re-encodes the misses)."""
    base, plus, option = name.partition("+")
    if plus and option != "verify":
        raise ValueError(f"method {name!r}: the only option is +verify")
    guarantee = None
    if base != "karl":
        try:
            guarantee = float(base.removeprefix("karl@"))
        except ValueError:
            raise ValueError(f"method {name!r}: expected karl@G with G a guarantee such as 0.9") from None
        tok.calibration_for(guarantee)  # fail now, not mid-run
    return KARLMethod(name, tok, guarantee=guarantee, verify=bool(plus))


def build_methods(names: list[str], tok: Tokenizer, baselines: str | Path | None, device=None) -> list[Method]:
    """Method names -> objects. ``fixed`` expands to every ``fixed*`` run under ``baselines``,
    ``codecs`` to png, jpeg and webp; ``karl@G`` is KARL with calibrated guarantee G."""
    root = Path(baselines) if baselines else None

    def need_root(name: str) -> Path:
        if root is None or not root.is_dir():
            where = "no --baselines DIR was given" if root is None else f"--baselines {root} is not a directory"
            raise ValueError(f"method {name!r} needs trained baseline models and {where}: train them with "
                             f"`benchmarks/train_baselines.sh DIR` and pass --baselines DIR, or leave them out, "
                             f"e.g. --methods karl,oracle,codecs")
        return root

    def baseline(name: str, run: Path | None = None) -> Method:
        run = run or need_root(name) / name
        objective = read_meta(resolve_checkpoint(run), required=("model", "run"))["run"]["objective"]
        if objective["kind"] != name.rstrip("0123456789"):
            raise ValueError(f"{run} holds a {objective['kind']!r} model, not {name!r}")
        label = f"fixed-{objective['fixed_length']}" if objective["kind"] == "fixed" else name
        return method_for(objective["kind"], label, load(run, device=device), objective["fixed_length"])

    methods: list[Method] = []
    for name in names:
        if name == "karl" or name.startswith(("karl@", "karl+")):
            methods.append(karl_method(name, tok))
        elif name == "oracle":
            methods.append(OracleMethod("oracle", tok))
        elif name in ("prefix", "recurrent"):
            methods.append(baseline(name))
        elif name.startswith("fixed"):
            runs = _baseline_runs(need_root(name), name)
            if not runs:
                raise ValueError(f"method {name!r}: no {name}* runs under {root}")
            methods.extend(baseline("fixed", run) for run in runs)
        elif name == "codecs":
            methods.extend(CodecMethod(c) for c in CODECS)
        elif name in CODECS:
            methods.append(CodecMethod(name))
        else:
            raise ValueError(f"unknown method {name!r}; known: karl, karl@G, karl+verify, karl@G+verify, oracle, "
                             f"prefix, recurrent, fixed, fixedN, codecs, {', '.join(CODECS)}")
    methods.sort(key=lambda m: m.name.startswith("fixed-") and int(m.name.split("-")[1]))
    return methods


# ------------------------------------------------------------------ measuring
@dataclass
class Row:
    method: str
    unit: str
    epsilon: float
    mean_size: float
    median_size: float
    mean_bits: float
    meet_share: float
    l1: float
    psnr: float
    ssim: float
    encoder_passes: float  # per image, mean
    decoder_passes: float
    wall_ms_per_image: float  # median over the timing rounds
    wall_ratio_to_karl: float | None
    flops_per_image: float | None
    sizes: list[float] = field(repr=False, default_factory=list)  # per image
    wall_ms_rounds: list[float] = field(repr=False, default_factory=list)  # each timing round


@dataclass
class LengthRow:
    method: str
    tokens: int
    l1: float
    psnr: float
    ssim: float
    errors: list[float] = field(repr=False, default_factory=list)  # per-image l1

    def meet_share(self, epsilon: float) -> float:
        return float(np.mean(np.array(self.errors) <= epsilon))


@dataclass
class BenchResult:
    data: str
    num_images: int
    max_tokens: int
    epsilons: list[float]
    rows: list[Row]
    length_rows: list[LengthRow]
    claims: list[dict] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    timing_rounds: int = 1  # ms/img is the median of this many interleaved timings
    image_names: list[str] | None = None  # each image's file (folders) or photograph (photos), in row order
    batch_size: int = 256  # images per call of a method: 1 measures latency, larger ones throughput

    def row(self, method: str, epsilon: float) -> Row | None:
        return next((r for r in self.rows if r.method == method and r.epsilon == epsilon), None)

    def to_dict(self) -> dict:
        return asdict(self)


def _batched(fn, images: torch.Tensor, batch: int) -> MethodOutput:
    """Run ``fn`` on chunks of ``images`` and concatenate the outputs."""
    parts = [fn(chunk) for chunk in images.split(batch)]
    return MethodOutput(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(MethodOutput)))


def _flops(fn, images: torch.Tensor, batch: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        _batched(fn, images, batch)
    return counter.get_total_flops() / len(images)


def _timed(fn, images: torch.Tensor, batch: int) -> tuple[MethodOutput, float]:
    """(output, wall milliseconds per image)."""
    t0 = time.perf_counter()
    out = _batched(fn, images, batch)
    return out, 1000 * (time.perf_counter() - t0) / len(images)


def measure(method: Method, images: torch.Tensor, epsilon: float, batch: int, count_flops: bool) -> Row:
    run = lambda x: method.at_epsilon(x, epsilon)  # noqa: E731
    run(images[:2])  # warm-up: one-time allocations stay out of the timing
    out, wall_ms = _timed(run, images, batch)
    err = l1_per_image(out.recon, images)
    flops = _flops(run, images, batch) if count_flops and method.unit == "tokens" else None
    return Row(method.name, method.unit, epsilon, float(out.size.mean()), float(out.size.median()),
               float(out.bits.mean()), float((err <= epsilon).float().mean()), float(err.mean()),
               float(psnr_per_image(out.recon, images).mean()), float(ssim_per_image(out.recon, images).mean()),
               float(out.encoder_passes.float().mean()), float(out.decoder_passes.float().mean()),
               wall_ms, None, flops, out.size.tolist(), [wall_ms])


def retime(jobs: list[tuple[Method, float]], rows: list[Row], images: torch.Tensor, batch: int, rounds: int,
           progress: bool) -> None:
    """Time every job ``rounds - 1`` more times, in rounds that run every job once (alternately
    forwards and backwards, so a slow drift of the machine falls on all methods alike), and keep
    the median: wall-time ratios then compare methods timed side by side."""
    order = list(range(len(jobs)))
    bar = tqdm(total=(rounds - 1) * len(jobs), desc="timing rounds", disable=not progress or rounds < 2,
               dynamic_ncols=True)
    for k in range(1, rounds):
        for i in (order if k % 2 == 0 else order[::-1]):
            method, eps = jobs[i]
            rows[i].wall_ms_rounds.append(_timed(lambda x, m=method, e=eps: m.at_epsilon(x, e), images, batch)[1])
            bar.update()
    bar.close()
    for r in rows:
        r.wall_ms_per_image = float(np.median(r.wall_ms_rounds))


def length_row(method: Method, images: torch.Tensor, n: int, batch: int) -> LengthRow | None:
    """``method``'s reconstructions from exactly n tokens, summarised (None if it has none)."""
    if method.at_length(images[:1], n) is None:
        return None
    recon = _batched(lambda x: method.at_length(x, n), images, batch).recon
    err = l1_per_image(recon, images)
    return LengthRow(method.name, n, float(err.mean()), float(psnr_per_image(recon, images).mean()),
                     float(ssim_per_image(recon, images).mean()), err.tolist())


def measure_lengths(methods: list[Method], images: torch.Tensor, grid: list[int], epsilons: list[float],
                    batch: int, progress: bool = True) -> list[LengthRow]:
    """Fixed-length rows: every method at the grid lengths (one set of KARL weights once, whichever
    of karl, karl@G, karl+verify, oracle ran first). For KARL's weights, also the lengths
    :func:`search_shortest_length` probes between grid lengths; the table prints the grid only."""
    rows, measured = [], []
    for m in tqdm(methods, desc="fixed lengths", disable=not progress, dynamic_ncols=True):
        weights = getattr(m, "tok", None)
        if weights is not None and any(weights is w for w in measured):
            continue
        measured.append(weights)
        done = {n: r for n in grid if (r := length_row(m, images, n, batch)) is not None}
        if has_karl_weights(m.name) and done:
            for eps in epsilons:
                search_shortest_length(done, lambda n, m=m: length_row(m, images, n, batch), eps)
        rows += [done[n] for n in sorted(done)]
    return rows


def search_shortest_length(done: dict[int, LengthRow], measure, epsilon: float) -> None:
    """Binary search, between the shortest measured length meeting ``epsilon`` on
    FIXED_LENGTH_SHARE of images and the longest shorter one, for the shortest length that does;
    adds what it measures (``measure(n)``) to ``done``. Assumes the share grows with the length,
    as the oracle's search does. Nothing to search if no measured length meets it."""
    def meets(n: int) -> bool:
        if n not in done:
            done[n] = measure(n)
        return done[n].meet_share(epsilon) >= FIXED_LENGTH_SHARE

    hi = next((n for n in sorted(done) if meets(n)), None)
    if hi is None:
        return
    lo = max([n for n in done if n < hi], default=0)  # misses (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)


def run_bench(methods: list[Method], data: EvalSet, epsilons: list[float], max_tokens: int, batch: int = 256,
              count_flops: bool = True, progress: bool = True, timing_rounds: int = 3) -> BenchResult:
    if timing_rounds < 1:
        raise ValueError(f"timing rounds must be at least 1, got {timing_rounds}")
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    images = data.images
    jobs = [(m, e) for m in methods for e in epsilons]
    rows = [measure(m, images, e, batch, count_flops)
            for m, e in tqdm(jobs, desc="bench", disable=not progress, dynamic_ncols=True)]
    retime(jobs, rows, images, batch, timing_rounds, progress)
    for r in rows:
        karl = next((k for k in rows if k.method == "karl" and k.epsilon == r.epsilon), None)
        if karl is not None:
            r.wall_ratio_to_karl = r.wall_ms_per_image / karl.wall_ms_per_image
    length_rows = measure_lengths(methods, images, fixed_length_grid(max_tokens), epsilons, batch, progress)
    result = BenchResult(data.name, len(images), max_tokens, list(epsilons), rows, length_rows,
                         threads=torch.get_num_threads(), timing_rounds=timing_rounds, image_names=data.names,
                         batch_size=batch)
    result.claims = check_claims(result)
    return result


# ------------------------------------------------------------------ claims
class _FixedLength(NamedTuple):
    """One fixed-length model at one eps, as the fixed-length claims compare them (sorted: shortest first)."""
    tokens: float
    name: str
    epsilon: float
    meet_share: float


def _claim(name: str, measured: str, ok: bool | None) -> dict:
    return {"claim": name, "measured": measured, "status": "n/a" if ok is None else ("PASS" if ok else "FAIL")}


def has_karl_weights(method: str) -> bool:
    """karl, karl@G, karl+verify and oracle: one set of weights (its fixed-length rows are listed once,
    under whichever of them ran first)."""
    return method == "oracle" or method.startswith("karl")


def full_budget_share(res: BenchResult, eps: float) -> float | None:
    """Share of images the KARL weights bring within eps at T_max tokens (what the oracle and any
    calibration can reach at most); None if the run measured no KARL method."""
    row = next((r for r in res.length_rows if r.tokens == res.max_tokens and r.errors and has_karl_weights(r.method)),
               None)
    return None if row is None else row.meet_share(eps)


def check_claims(res: BenchResult) -> list[dict]:
    """The issue's acceptance targets, evaluated on this run's numbers (nothing is asserted)."""
    claims = []
    karl = [r for r in res.rows if r.method == "karl"]
    if karl:
        single = all(r.encoder_passes == 1 and r.decoder_passes == 1 for r in karl)
        claims.append(_claim("KARL: 1 encoder + 1 decoder pass per image at every eps",
                             ", ".join(f"{r.encoder_passes:g}+{r.decoder_passes:g}" for r in karl), single))
    for other, target in (("recurrent", 3.0), ("prefix", 2.0)):
        r = res.row(other, 0.05)
        if r is not None and r.wall_ratio_to_karl is not None:
            claims.append(_claim(f"wall time per image at eps=0.05: {other} / KARL >= {target:g}",
                                 f"{r.wall_ratio_to_karl:.2f}", r.wall_ratio_to_karl >= target))
    for eps in (0.05, 0.08):
        k, o = res.row("karl", eps), res.row("oracle", eps)
        if k and o:
            ratio = k.mean_size / o.mean_size
            claims.append(_claim(f"mean tokens at eps={eps}: KARL / oracle <= 1.2",
                                 f"{k.mean_size:.2f} / {o.mean_size:.2f} = {ratio:.2f}", ratio <= 1.2))
    # fixed-length models: the separately trained fixed-N baselines (their own training run), and
    # KARL's own weights in fixed-length mode at any length 1..T_max (the same training as KARL's pass;
    # measure_lengths searches the lengths between the grid's)
    fixed = [_FixedLength(r.mean_size, r.method, r.epsilon, r.meet_share)
             for r in res.rows if r.method.startswith("fixed-")]
    own = [_FixedLength(float(r.tokens), f"karl fixed-{r.tokens}", e, r.meet_share(e))
           for r in res.length_rows if has_karl_weights(r.method) for e in res.epsilons]
    for label, candidates in (("the shortest fixed-length baseline", fixed),
                              ("KARL's own shortest fixed length", own)):
        if not candidates:
            continue
        for k in karl:
            ok = sorted(c for c in candidates if c.epsilon == k.epsilon and c.meet_share >= FIXED_LENGTH_SHARE)
            if not ok:
                claims.append(_claim(f"eps={k.epsilon}: KARL vs {label} meeting eps on 90%",
                                     "no fixed length meets eps on 90% of images", None))
                continue
            shortest = ok[0]
            saving = 1 - k.mean_size / shortest.tokens
            claims.append(_claim(f"eps={k.epsilon}: KARL uses >= 25% fewer tokens than {label} meeting eps on 90%",
                                 f"{k.mean_size:.2f} vs {shortest.name} ({100 * shortest.meet_share:.1f}% meet): "
                                 f"{100 * abs(saving):.0f}% {'fewer' if saving >= 0 else 'more'}",
                                 saving >= 0.25))
    # the claims are about the single pass; karl@G+verify rows are reported, not judged
    for cal in sorted({r.method for r in res.rows if r.method.startswith("karl@") and "+" not in r.method}):
        g = float(cal.partition("@")[2])
        for eps in res.epsilons:
            c, full = res.row(cal, eps), res.row("oracle", eps)
            if c is None:
                continue
            reach = full_budget_share(res, eps)
            if reach is not None and reach < 0.95:
                claims.append(_claim(f"{cal} at eps={eps}: outside the operating range",
                                     f"full budget meets eps on {100 * reach:.1f}% (< 95%)", None))
                continue
            claims.append(_claim(f"{cal} at eps={eps}: meets eps on >= {100 * (g - 0.02):.0f}%",
                                 f"{100 * c.meet_share:.1f}%", c.meet_share >= g - 0.02))
            if full is not None:
                ratio = c.mean_size / full.mean_size
                claims.append(_claim(f"{cal} at eps={eps}: mean tokens <= 1.25x oracle",
                                     f"{c.mean_size:.2f} / {full.mean_size:.2f} = {ratio:.2f}", ratio <= 1.25))
    return claims


# ------------------------------------------------------------------ report
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_bench(res: BenchResult) -> str:
    w = max([10, *(len(r.method) for r in res.rows)])  # method column width
    lines = [f"data {res.data}: {res.num_images} images, T_max = {res.max_tokens}, {res.device}, "
             f"{res.threads} threads, batch {res.batch_size}; ms/img: median of {res.timing_rounds} interleaved "
             "timing rounds", "",
             f" {'method':{w}s} |   eps | mean size | median | meet eps | l1     | PSNR  | SSIM  | enc/img | dec/img "
             "| ms/img | x KARL | MFLOPs/img",
             "-" * (w + 2) + "+-------+-----------+--------+----------+--------+-------+-------+---------+---------"
             "+--------+--------+-----------"]
    for r in res.rows:
        size = f"{r.mean_size:7.2f} {'t' if r.unit == 'tokens' else 'B'}"
        lines.append(
            f" {r.method:{w}s} | {r.epsilon:5.3f} | {size:>9s} | {r.median_size:6.1f} | {100 * r.meet_share:7.1f}% | "
            f"{r.l1:.4f} | {r.psnr:5.2f} | {r.ssim:.3f} | {r.encoder_passes:7.2f} | {r.decoder_passes:7.2f} | "
            f"{r.wall_ms_per_image:6.3f} | {_fmt(r.wall_ratio_to_karl, '6.2f'):>6s} | "
            f"{_fmt(None if r.flops_per_image is None else r.flops_per_image / 1e6, '9.1f'):>9s}")
    meets = "/".join(f"{e:g}" for e in res.epsilons)
    lines += ["", " fixed-length reconstructions (karl@G, karl+verify and oracle have karl's weights: listed once)",
              f" fixed length | {'method':{w}s} | l1     | PSNR  | SSIM  | meet eps {meets}",
              "--------------+" + "-" * (w + 2) + "+--------+-------+-------+-" + "-" * (9 + len(meets))]
    grid = fixed_length_grid(res.max_tokens)
    for r in sorted((r for r in res.length_rows if r.tokens in grid), key=lambda r: (r.tokens, r.method)):
        shares = " / ".join(f"{100 * r.meet_share(e):.0f}%" for e in res.epsilons) if r.errors else "-"
        lines.append(f" {r.tokens:3d} tokens   | {r.method:{w}s} | {r.l1:.4f} | {r.psnr:5.2f} | {r.ssim:.3f} | "
                     f"{shares}")
    rho = karl_oracle_spearman(res)
    if rho:
        lines += ["", " Spearman(KARL tokens, oracle tokens) per eps: " + ", ".join(f"{e}: {v:.3f}" for e, v in rho)]
    lines += ["", " claims (measured on this run):"]
    for c in res.claims:
        lines.append(f"   [{c['status']}] {c['claim']}: {c['measured']}")
    return "\n".join(lines)


def karl_oracle_spearman(res: BenchResult) -> list[tuple[float, float]]:
    """(eps, Spearman rho between KARL's and the oracle's per-image token counts)."""
    pairs = [(e, res.row("karl", e), res.row("oracle", e)) for e in res.epsilons]
    return [(e, spearman(np.array(k.sizes), np.array(o.sizes))) for e, k, o in pairs if k and o]


RESULT_FILES = ("results.json", "results.txt")


def save_bench(res: BenchResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res.to_dict())
    write_text(out / "results.txt", format_bench(res) + "\n")
