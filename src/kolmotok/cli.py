"""The ``kolmotok`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from . import __version__

log = logging.getLogger("kolmotok")


DEFAULT_PRESET = "tiny"
FILE_OUTPUTS = ("eval",)  # subcommands whose --out is a file; every other --out is a directory
GUARANTEE_HELP = "calibrated share of images meeting eps, e.g. 0.9 (needs a calibration: kolmotok calibrate)"
NUM_IMAGES_HELP = ("images in the fixed, seeded eval set; a folder: all its files if it has no more, else a "
                   "fixed random subset of this many (0 = all)")


def comma_numbers(flag: str):
    """argparse type: comma-separated finite, non-negative numbers, each once, in the order given
    (errors name ``flag``)."""
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated numbers") from None
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected finite, non-negative numbers")
        # a repeat (also one that prints the same, 0.05 and 0.050000001) would be a second row or column
        firsts: dict[str, float] = {}
        for v in values:
            firsts.setdefault(f"{v:g}", v)
        return list(firsts.values())
    return parse


def at_least(flag: str, minimum: int):
    """argparse type: an integer >= ``minimum`` (errors name ``flag``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: must be at least {minimum}")
        return value
    return parse


def _names(flag: str):
    """argparse type: a non-empty comma-separated list of names."""
    def parse(text: str) -> list[str]:
        names = [m.strip() for m in text.split(",") if m.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated names")
        return names
    return parse


def check_output(path: str | os.PathLike | None, directory: bool) -> None:
    """Fail before any work if ``path`` cannot be written: a file where a directory is meant (or
    the reverse), a parent that is a file, or a nearest existing parent that cannot be written in."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and target.is_dir() != directory:
        raise ValueError(f"output {str(target)!r} exists and is {'a file' if directory else 'a directory'}; "
                         f"expected {'a directory' if directory else 'a file'}")
    parent = target if directory and target.exists() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"output {str(target)!r}: {str(parent)!r} is a file, not a directory")
    try:  # a probe file: permission bits alone do not tell (root, read-only mounts)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise ValueError(f"output {str(target)!r}: cannot write in {str(parent)!r} ({exc.strerror})") from None


def train_config(args: argparse.Namespace):
    """The run's config before the flags: the preset's, or with --resume the run's own (so a
    resumed run keeps its steps, data, ... unless a flag says otherwise)."""
    from .config import apply_overrides, get_preset
    from .training.trainer import config_changes, keep_additions, saved_run_config

    saved = saved_run_config(args.out) if args.resume else None
    if saved is None:
        return apply_overrides(get_preset(args.preset or DEFAULT_PRESET), args.set or [])
    if args.preset:  # only a check: a preset naming another model or objective would be ignored
        named = apply_overrides(get_preset(args.preset), args.set or [])
        if saved.train.init_from:
            named = keep_additions(named, saved.model, "--resume")
        other = config_changes(saved, named, sections=("model", "objective"))
        if other:
            listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in other.items())
            raise ValueError(f"--resume: {args.out} was not trained as --preset {args.preset} ({listed}); "
                             "leave out --preset to continue it as it was")
    return apply_overrides(saved, args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = train_config(args)
    if args.base_autoencoder:
        cfg.model.base_autoencoder = args.base_autoencoder
    for key in ("steps", "batch_size", "seed", "data", "device", "threads", "data_workers", "init_from", "precision",
                "grad_accum"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg.train, key, value)
    if args.compile:
        cfg.train.compile = True
    ckpt = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {ckpt}")
    return 0


def cmd_fit_halting(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_device, shipped_checkpoint
    from .training.halting_fit import HaltingFitConfig, fit_halting

    cfg = HaltingFitConfig()
    for key in ("data", "images", "steps", "seed", "hidden"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    if any(split in cfg.data for split in ("photos:test", "photos:calib")):
        log.warning("fitting the halting head on %s: the test and calibration photographs should stay unseen",
                    cfg.data)
    ckpt = args.ckpt or shipped_checkpoint()
    out = fit_halting(ckpt, args.out, cfg, device=resolve_device(args.device), progress=not args.no_progress)
    print(f"checkpoint: {out}\n(its halting changed: run `kolmotok calibrate --ckpt {out}` before using guarantees)")
    return 0


def _load(args: argparse.Namespace):
    from .api import load

    return load(args.ckpt, device=args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import eval_set
    from .evaluation.evaluate import evaluate, format_report, image_table_csv
    from .io import json_text, write_json, write_text

    check_output(args.per_image, directory=False)
    tok = _load(args)
    tok.check_options(args.epsilons, guarantee=args.guarantee)  # before the images are read
    data = eval_set(args.data, tok.image_size, args.num_images)
    report = evaluate(tok, data, args.epsilons, guarantee=args.guarantee, by_source=args.by_source,
                      progress=not args.no_progress, per_image=bool(args.per_image))
    if args.per_image:  # the files first: a reader of the report that goes away loses nothing
        write_text(args.per_image, image_table_csv(report))
    if args.out:
        write_json(args.out, report.to_dict())
    print(json_text(report.to_dict()) if args.json else format_report(report))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Files are read one batch at a time (any number of inputs); an unreadable one is reported
    and skipped. Exit status 1 if any input failed, after processing the rest; 2 if all did."""
    from .checkpoint import checkpoint_record
    from .data.images import load_images, reconstruction_paths, save_image
    from .evaluation.metrics import l1_per_image

    if args.codes and not args.json:
        raise ValueError("--codes adds the codes to the JSON lines: give --json as well")
    tok = _load(args)
    tok.check_options(args.epsilon, args.budget, args.guarantee)
    paths = [Path(p) for p in args.images]
    outputs = dict(zip(paths, reconstruction_paths(paths, Path(args.out)))) if args.out else {}
    made_by = {"checkpoint": checkpoint_record(tok.path), "cwd": os.getcwd()}  # what --codes rows record
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        loaded = load_images(paths[start:start + args.batch_size], tok.image_size, skip_errors=True, log_failures=False)
        for path, reason in loaded.failures:
            failure = {"path": str(path), "error": reason} | ({"cwd": made_by["cwd"]} if args.codes else {})
            print(json.dumps(failure) if args.json else f"ERROR {reason}",
                  file=sys.stdout if args.json else sys.stderr)
        failed += len(loaded.failures)
        if not loaded.paths:
            continue
        enc = tok.encode(loaded.images, epsilon=args.epsilon, budget=args.budget, guarantee=args.guarantee,
                         verify=args.verify)
        rec = tok.decode(enc)
        errs = l1_per_image(rec, loaded.images)
        curves = tok.error_curve(loaded.images, enc.condition, enc.budget) if args.explain else None
        for i, path in enumerate(loaded.paths):
            row = _encode_row(path, enc, i, float(errs[i]), args.epsilon, None if curves is None else curves[i])
            if args.out:
                save_image(rec[i], outputs[path])
                row["reconstruction"] = str(outputs[path])
            if args.codes:  # with the checkpoint that decodes them (kolmotok decode)
                row |= {"codes": enc.tokens[i, : int(enc.lengths[i])].tolist(), **made_by}
            print(json.dumps(row) if args.json else _encode_line(path, row, args.epsilon), flush=True)
    if failed:
        print(f"{failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return (2 if failed == len(paths) else 1) if failed else 0  # as tokenize and decode


def _encode_row(path: Path, enc, i: int, l1: float, epsilon: float, curve) -> dict:
    """What `encode` reports of image ``i`` of an encoding (``curve``: its --explain error curve)."""
    row = {"path": str(path), "tokens": int(enc.lengths[i]), "budget": enc.budget, "epsilon": epsilon,
           "l1": round(l1, 5)}
    if epsilon > 0:  # eps = 0 is fixed-length mode: no target to meet
        row["meets_epsilon"] = l1 <= epsilon
    if enc.guarantee is not None:
        row |= {"guarantee": enc.guarantee, "guaranteed": bool(enc.guaranteed[i]),
                "condition": round(float(enc.condition[i]), 5)}
    if enc.reencoded is not None:
        row["reencoded"] = int(enc.reencoded[i])
    if curve is not None:  # the same tokens at every prefix length: where halting stood
        row["error_curve"] = [float(v) for v in curve]  # unrounded: shortest_meeting is read off these
        if epsilon > 0:
            meeting = (curve <= epsilon).nonzero().flatten()
            row["shortest_meeting"] = int(meeting[0]) + 1 if len(meeting) else None
    return row


def _encode_line(path: Path, row: dict, epsilon: float) -> str:
    """:func:`_encode_row` as one line of text."""
    notes = ([f"{'meets' if row['meets_epsilon'] else 'misses'} eps={epsilon}"]
             if "meets_epsilon" in row else ["fixed-length mode"])
    if "guarantee" in row:
        notes.append(f"guarantee {row['guarantee']:g}" if row["guaranteed"] else "not guaranteed")
    if row.get("reencoded"):
        notes.append(f"re-encoded {row['reencoded']}x")
    if "shortest_meeting" in row:
        k = row["shortest_meeting"]
        notes.append("no prefix meets eps" if k is None else f"{k} would meet eps")
    return f"{path}: {row['tokens']}/{row['budget']} tokens, l1 {row['l1']:.4f} ({', '.join(notes)})"


def cmd_decode(args: argparse.Namespace) -> int:
    """Token rows -> PNG reconstructions, with the checkpoint the tokens record unless --ckpt
    names another. Rows and files that cannot be decoded are reported and skipped; the exit
    status is 1 if any was, after writing the rest. "-" reads JSON lines from standard input."""
    from .detokenize import token_files

    check_output(args.out, directory=True)
    with tempfile.TemporaryDirectory() as spool:
        source = args.tokens
        if source == "-":  # the lines are read more than once: kept in a file first
            source = str(Path(spool) / "stdin.jsonl")
            with open(source, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)

        def named(text: str) -> str:
            return text.replace(source, "<stdin>") if args.tokens == "-" else text

        try:
            return _decode(args, token_files(source), named)
        except ValueError as err:
            raise ValueError(named(str(err))) from None


def _decode(args: argparse.Namespace, files: list[Path], named) -> int:
    from .checkpoint import same_checkpoint
    from .detokenize import decode_files, recorded_checkpoints
    from .io import one_line

    made_with: list[str] = []  # the recorded checkpoints, one name per directory
    for record in sorted(recorded_checkpoints(files)):
        if not any(same_checkpoint(record, seen) for seen in made_with):
            made_with.append(record)
    if args.ckpt is None and made_with:
        if len(made_with) > 1:
            raise ValueError(f"{args.tokens}: tokens of several checkpoints ({', '.join(made_with)}); "
                             "decode them apart, or name one with --ckpt")
        args.ckpt = made_with[0]
        try:
            tok = _load(args)
        except FileNotFoundError as err:
            raise ValueError(f"{args.tokens}: the tokens record checkpoint {args.ckpt}, which is not here ({err}); "
                             "name it with --ckpt") from None
    else:
        tok = _load(args)
        for other in (m for m in made_with if not same_checkpoint(m, args.ckpt or "shipped")):
            log.warning("%s: the tokens record checkpoint %s; decoding them with %s",
                        args.tokens, other, args.ckpt or "shipped")
    summary = decode_files(tok, files, args.out, batch_size=args.batch_size, progress=not args.no_progress,
                           report=lambda where, reason: print(named(f"ERROR {where}: {reason}"), file=sys.stderr))
    notes = [f"{len(summary.failures)} could not be decoded"] * bool(summary.failures) + [
        f"{summary.repeated} repeat an earlier path (written as NAME.recon-2.png, ...)"] * bool(summary.repeated)
    print(f"{summary.images} reconstruction{'s' * (summary.images != 1)} written to {one_line(args.out)} in "
          f"{summary.seconds:.1f} s" + (f"; {'; '.join(notes)}" if notes else ""))
    if summary.failures and not summary.images:  # as a shard of the wrong model: nothing could be decoded
        return 2
    return 1 if summary.failures else 0


def cmd_info(args: argparse.Namespace) -> int:
    info = _load(args).describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "calibrations":
            print(f"{key.replace('_', ' ')}: {'-' if value is None else value}")
    for c in info["calibrations"] or [None]:
        print("calibration: none (kolmotok calibrate)" if c is None else
              f"calibration: guarantee {c['guarantee']:g} on {c['images']} images ({c['data']}), "
              + (f"for eps >= {c['guaranteed_from_epsilon']:g}" if c["guaranteed_from_epsilon"] is not None
                 else "no eps attainable"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation.demo import run_demo

    tok = _load(args)
    print(run_demo(tok, Path(args.out), epsilon=args.epsilon))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibration import check_alpha, load_calibrations, save_calibrations
    from .checkpoint import require_karl
    from .data import eval_set

    tok = _load(args)
    require_karl(tok.meta, f"calibrate --ckpt {args.ckpt or 'shipped'}")
    tok.check_options(args.epsilons)
    for alpha in args.alpha:
        check_alpha(alpha)
    target = tok.check_calibration_target(args.out)  # before the minutes of measuring, not after
    before = load_calibrations(target)  # what the file written there holds now
    warn_calibration_overlap(args.data, tok.meta)
    data = eval_set(args.data, tok.image_size, args.num_images)
    for cal in tok.calibrate_alphas(data.images, args.alpha, data=args.data, progress=not args.no_progress):
        alpha = cal.alpha
        if alpha in before:
            log.warning("replacing the calibration for alpha = %g in %s, made on %d images of %s", alpha, target,
                        before[alpha].num_images, before[alpha].data)
        print(f"alpha = {alpha} (guarantee {cal.guarantee:.3g}), {cal.num_images} images of {args.data}:")
        for eps in args.epsilons:
            cond, ok = cal.lookup(torch.tensor([eps]))
            if eps == 0:
                note = "  (fixed-length mode: every token, no target to guarantee)"
            elif eps < cal.epsilons[0]:
                note = f"  (below the calibrated range, which starts at {cal.epsilons[0]:g}; uses every token)"
            else:
                note = "" if bool(ok) else "  (not attainable: the full budget misses eps too often; uses every token)"
            print(f"  eps {eps:<6g} -> condition {float(cond):.4f}{note}")
    print(f"saved: {save_calibrations(target, tok.calibrations)}")
    return 0


def warn_calibration_overlap(spec: str, meta: dict) -> None:
    """Warn when calibration data may hold training images: the guarantee assumes it does not."""
    from .data import shared_sources

    trained_on = ((meta.get("run") or {}).get("train") or {}).get("data") or ""
    if (spec == "photos" or spec.startswith("photos:")) and spec != "photos:calib":
        log.warning("calibrating on %s: the guarantee needs data disjoint from training and test (photos:calib)", spec)
    for source in shared_sources(spec, trained_on, meta.get("train_cwd")):
        log.warning("calibrating on %s, which is or overlaps training data of this checkpoint (%s): the "
                    "guarantee needs images the model was not trained on", source, trained_on)


def check_bench_output(out: Path) -> None:
    """A bench replaces its --out folder as a whole: it must be new or hold a bench's files only,
    and it cannot be the working directory or hold it."""
    from .evaluation.bench import RESULT_FILES
    from .evaluation.figures import FIGURES

    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ValueError(f"--out {out}: the bench replaces this folder as a whole, and the working directory is "
                         "in it; give a folder of its own, e.g. --out bench-results")

    others = sorted(p.name for p in out.iterdir() if p.name not in {*RESULT_FILES, *FIGURES}) if out.is_dir() else []
    if others:
        raise ValueError(f"--out {out}: the bench replaces this folder with its results, and it holds other files "
                         f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give a new folder")


def cmd_bench(args: argparse.Namespace) -> int:
    from .checkpoint import require_karl
    from .data import eval_set
    from .evaluation.bench import DEFAULT_METHODS, build_methods, format_bench, run_bench, save_bench
    from .evaluation.figures import write_figures
    from .io import atomic_directory

    if min(args.epsilons) <= 0:
        raise ValueError("--epsilons: the bench compares methods at targets above 0 (eps 0 is fixed-length "
                         "mode: the fixed-length table covers it)")
    if args.out:
        check_bench_output(Path(args.out))
    tok = _load(args)
    require_karl(tok.meta, f"bench --ckpt {args.ckpt or 'shipped'}")
    tok.check_options(args.epsilons)
    names = list(dict.fromkeys(args.methods or DEFAULT_METHODS))  # a repeat would be a second, identical row
    methods = build_methods(names, tok, args.baselines, device=args.device)
    num = args.num_images if not args.quick else min(args.num_images or 16, 16)  # (0 = all, but not in --quick)
    data = eval_set(args.data, tok.image_size, num)
    res = run_bench(methods, data, args.epsilons, tok.max_tokens, batch=args.batch_size, count_flops=not args.quick,
                    timing_rounds=1 if args.quick else args.timing_rounds)
    res.device = str(tok.device)
    print(format_bench(res))
    if args.out:
        out = Path(args.out)
        sheet_eps = 0.05 if 0.05 in args.epsilons else args.epsilons[0]
        with atomic_directory(out) as tmp:  # all of this run's files, or none: no mix with an earlier run's
            save_bench(res, tmp)
            figures = write_figures(res, methods, data.images, tmp, sheet_eps)
        for path in figures:
            log.info("wrote %s", out / path.name)
        print(f"results: {out / 'results.json'}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .api import load
    from .checkpoint import checkpoint_label
    from .tokenize import output_stats, tokenize_folder, unreadable_count
    from .training.distributed import init_distributed

    if not args.data.startswith("folder:"):
        raise ValueError(f"--data {args.data!r}: tokenize reads folder:PATH")
    # its barriers wait for rank 0 to list the whole tree, then for the slowest rank's shards
    ddp, device = init_distributed(args.device or "auto", timeout=datetime.timedelta(hours=24))
    tok = load(args.ckpt, device=device)
    summary = tokenize_folder(tok, args.data.partition(":")[2], args.out, args.epsilon,
                              checkpoint=checkpoint_label(args.ckpt), shard_size=args.shard_size,
                              batch_size=args.batch_size, with_error=args.with_error, guarantee=args.guarantee,
                              rank=ddp.rank, world=ddp.world, barrier=ddp.barrier, progress=not args.no_progress,
                              verify=args.verify)
    rate = summary.images / max(summary.seconds, 1e-9)
    print(f"rank {ddp.rank}: {summary.images} images in {summary.shards_written} new shards "
          f"({summary.shards_skipped} already complete), {summary.failures} unreadable, "
          f"{summary.seconds:.1f} s, {rate:.0f} images/s; output {args.out}")
    if ddp.rank == 0:
        stats = output_stats(args.out, args.epsilon, args.guarantee)
        print(format_output_stats(stats, args.epsilon, args.guarantee, args.verify))
        if not stats.images:
            raise ValueError(f"{args.data}: no readable images; the reasons are in {args.out}/_errors-*.jsonl")
    skipped = unreadable_count(args.out) if ddp.world == 1 else summary.failures  # (one process: this and earlier runs)
    if skipped:
        print(f"rank {ddp.rank}: {skipped} unreadable files skipped, listed in {args.out}/_errors-*.jsonl",
              file=sys.stderr)
    # as encode: the rest is done, yet not everything (one process only: torchrun stops every
    # rank when one exits with an error)
    return 1 if skipped and ddp.world == 1 else 0


def format_output_stats(stats, epsilon: float, guarantee: float | None, verified: bool = False) -> str:
    """The whole output in one line: tokens, share meeting eps, and the promise check (monitoring)."""
    from .evaluation.evaluate import promise_verdict

    line = f"all shards: {stats.images} images, {stats.mean_tokens:.2f} tokens on average"
    if not stats.images or epsilon == 0:
        return line + (" (fixed-length mode)" if stats.images else "")
    if not stats.measured:
        return line + " (--with-error also measures how many meet eps)"
    line += f"; {100 * stats.met / stats.measured:.1f}% met eps {epsilon:g}"
    if verified:  # the misses were re-encoded: the single pass's promise is not what was measured
        return line + " after --verify" + ("; the promise check needs a run without --verify" if guarantee else "")
    if stats.promise_p_value is None:
        return line + ("" if guarantee is None else f"; no promise at eps {epsilon:g} (outside the calibration)")
    share = 100 * stats.promised_met / stats.promised
    return line + (f"; guarantee {guarantee:g}: {share:.1f}% of {stats.promised} met it, "
                   f"p = {stats.promise_p_value:.3g} {promise_verdict(stats.promise_p_value)}")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Help that states each option's default where it has a real one (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})".strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kolmotok", description="Single-pass adaptive image tokenization (KARL).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"kolmotok {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    p.set_defaults(commands=sub.choices)  # main names the command in an unknown-argument error

    t = sub.add_parser("train", help="train a tokenizer (two-phase KARL objective)")
    t.add_argument("--preset", help=f"named config: {DEFAULT_PRESET} (default), small, base, small-vae, base-vae, "
                   "or a baseline such as tiny-prefix; with --resume the run's own config is used")
    t.add_argument("--data", help="data spec: photos, shapes, folder:PATH, or A@w+B@v (default: the preset's)")
    t.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, config.json)")
    t.add_argument("--steps", type=at_least("--steps", 1))
    t.add_argument("--batch-size", type=at_least("--batch-size", 1))
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--threads", type=at_least("--threads", 0), help="torch CPU threads")
    t.add_argument("--data-workers", type=at_least("--data-workers", 0), help="DataLoader worker processes")
    t.add_argument("--base-autoencoder", metavar="DIR",
                   help="local diffusers AutoencoderKL/VQModel directory whose latents to tokenize (-vae presets)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="mixed precision (GPU); default fp32")
    t.add_argument("--compile", action="store_true", help="torch.compile the transformers")
    t.add_argument("--grad-accum", type=at_least("--grad-accum", 1), help="micro-batches per optimizer step")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--init-from", help="fine-tune: start from this checkpoint's weights (same model config); "
                   "'shipped' or 'shipped:NAME' for a checkpoint shipped with the package")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config field, e.g. --set model.width=192 (repeatable)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    def add_ckpt(sp: argparse.ArgumentParser, default: str = "the shipped tiny checkpoint") -> None:
        sp.add_argument("--ckpt", help=f"checkpoint or run directory, or shipped[:NAME] (default: {default})")
        sp.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")

    f = sub.add_parser("fit-halting", help="refit a trained model's halting head to exact labels (backbone frozen)")
    add_ckpt(f)
    f.add_argument("--out", required=True, help="directory for the new checkpoint")
    f.add_argument("--data", help="training data spec (default photos@3+shapes; never calib or test photos)")
    f.add_argument("--images", type=at_least("--images", 1),
                   help="training images whose error curves are measured (default 3072)")
    f.add_argument("--steps", type=at_least("--steps", 1), help="optimizer steps (default 3000)")
    f.add_argument("--seed", type=int, help="default 0")
    f.add_argument("--hidden", type=int, help="width of the halting MLP added to a model without one (default 64)")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_fit_halting)

    e = sub.add_parser("eval", help="tokens, error and quality per eps on an evaluation set")
    add_ckpt(e)
    e.add_argument("--data", default="photos:test", help="photos:test, shapes, folder:PATH, ...")
    e.add_argument("--epsilons", type=comma_numbers("--epsilons"), default=[0.02, 0.03, 0.05, 0.08, 0.12],
                   help="comma-separated target errors, one table row each")
    e.add_argument("--num-images", type=at_least("--num-images", 0), default=256, help=NUM_IMAGES_HELP)
    e.add_argument("--guarantee", type=float,
                   help=GUARANTEE_HELP + "; also tests whether the promise holds on these images (monitoring)")
    e.add_argument("--by-source", action="store_true",
                   help="also per source: each photograph (photos:SPLIT) or subfolder (folder:PATH; '.' = files "
                        "directly in it), with the promise check per source under --guarantee")
    e.add_argument("--per-image", metavar="FILE.csv",
                   help="also write one CSV row per image: its name, label (shapes), PNG bytes, full-budget l1, "
                        "and per eps its tokens, l1 and whether it met eps (also in the JSON report)")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--out", help="also write the JSON report to this file")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)

    n = sub.add_parser("encode", help="tokenize image files at a target error",
                       description="Tokenize image files at a target error. Unreadable files are reported and "
                                   "skipped; the exit status is 1 if any was.")
    add_ckpt(n)
    n.add_argument("images", nargs="+", help="image files")
    n.add_argument("--epsilon", type=float, default=0.05, help="target error: mean absolute pixel error on [0, 1]")
    n.add_argument("--budget", type=int, help="most tokens per image (default T_max)")
    n.add_argument("--guarantee", type=float, help=GUARANTEE_HELP)
    n.add_argument("--verify", action="store_true",
                   help="one more decoder pass checks each image; misses are re-encoded at a tighter condition")
    n.add_argument("--batch-size", type=at_least("--batch-size", 1), default=64, help="images per encoder pass")
    n.add_argument("--json", action="store_true", help="one JSON line per image")
    n.add_argument("--codes", action="store_true",
                   help="include the token codes, the checkpoint and the working directory in the JSON (for "
                        "kolmotok decode)")
    n.add_argument("--explain", action="store_true",
                   help="also decode every prefix of each image's tokens (budget more decoder passes): the "
                        "shortest that meets eps, and the whole error curve in the JSON")
    n.add_argument("--out", help="write reconstructions (PNG) to this directory, mirroring the inputs' folders "
                   "(STEM.recon.png)")
    n.set_defaults(func=cmd_encode)

    c = sub.add_parser("calibrate", help="split-conformal calibration: a guaranteed share of images meets eps")
    add_ckpt(c)
    c.add_argument("--data", default="photos:calib", help="held-out images, disjoint from training and test")
    c.add_argument("--alpha", type=comma_numbers("--alpha"), default=[0.1],
                   help="allowed miss rate(s), comma-separated (guarantee = 1 - alpha)")
    c.add_argument("--num-images", type=at_least("--num-images", 0), default=512, help=NUM_IMAGES_HELP)
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--epsilons", type=comma_numbers("--epsilons"), default=[0.02, 0.03, 0.05, 0.08, 0.12],
                   help="eps values to print (the stored calibration covers about 0.01..0.3)")
    c.add_argument("--out", help="directory for calibration.json (default: the checkpoint's own directory)")
    c.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("bench", help="every method on the same images: tokens, quality, passes, time, FLOPs")
    add_ckpt(b)
    b.add_argument("--data", default="photos:test", help="photos:test, shapes, folder:PATH, ...")
    b.add_argument("--epsilons", type=comma_numbers("--epsilons"), default=[0.03, 0.05, 0.08, 0.12],
                   help="comma-separated target errors")
    b.add_argument("--methods", type=_names("--methods"),
                   help="comma-separated; default: karl, karl@0.9, oracle, prefix, recurrent, fixed (every "
                        "fixedN baseline), codecs (png, jpeg, webp). Also: karl@G and karl+verify / "
                        "karl@G+verify (calibrated guarantee G, checked), fixedN, png, jpeg, webp")
    b.add_argument("--baselines", default="runs/baselines",
                   help="directory of baseline runs prefix/, recurrent/, fixedN/ (benchmarks/train_baselines.sh)")
    b.add_argument("--num-images", type=at_least("--num-images", 0), default=256, help=NUM_IMAGES_HELP)
    b.add_argument("--timing-rounds", type=int, default=3,
                   help="time every method this many times, in interleaved rounds, and report the median")
    b.add_argument("--batch-size", type=at_least("--batch-size", 1), default=256,
                   help="images per call of each method: 1 measures per-image latency, larger ones throughput")
    b.add_argument("--quick", action="store_true",
                   help="at most 16 images (fewer with --num-images), no FLOP counting, one timing round (for tests)")
    b.add_argument("--out", help="directory for results.json, results.txt and figures")
    b.set_defaults(func=cmd_bench)

    k = sub.add_parser("tokenize", help="tokenize a folder of images into Parquet shards (resumable, torchrun-ready)")
    add_ckpt(k)
    k.add_argument("--data", required=True, help="folder:PATH")
    k.add_argument("--epsilon", type=float, default=0.05, help="target error: mean absolute pixel error on [0, 1]")
    k.add_argument("--guarantee", type=float, help=GUARANTEE_HELP)
    k.add_argument("--out", required=True, help="output directory for shard-NNNNN.parquet files")
    k.add_argument("--shard-size", type=at_least("--shard-size", 1), default=1000, help="images per shard")
    k.add_argument("--batch-size", type=at_least("--batch-size", 1), default=256, help="images per encoder pass")
    k.add_argument("--with-error", action="store_true", help="add the achieved l1 (one extra decoder pass)")
    k.add_argument("--verify", action="store_true",
                   help="one more decoder pass checks each image; misses are re-encoded at a tighter condition "
                        "(column reencoded)")
    k.add_argument("--no-progress", action="store_true")
    k.set_defaults(func=cmd_tokenize)

    o = sub.add_parser("decode", help="token rows back to images: tokenize output or encode --json --codes lines",
                       description="Decode stored tokens to PNG reconstructions: a kolmotok tokenize output folder "
                                   "(or one of its shards), or the JSON lines of kolmotok encode --json --codes. "
                                   "Rows that cannot be decoded are reported and skipped; the exit status is 1 if "
                                   "any was.")
    add_ckpt(o, "the one the tokens record (tokenize shards, encode --codes lines), else the shipped tiny "
                "checkpoint")
    o.add_argument("tokens", help="tokenize output folder, a shard-NNNNN.parquet file, or a JSON-lines file "
                   "('-': JSON lines from standard input)")
    o.add_argument("--out", required=True, help="directory for the PNGs, mirroring the images' folders "
                   "(STEM.recon.png, as encode --out)")
    o.add_argument("--batch-size", type=at_least("--batch-size", 1), default=256, help="images per decoder pass")
    o.add_argument("--no-progress", action="store_true")
    o.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="what a checkpoint is: model, training, calibrations")
    add_ckpt(i)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="run the shipped tokenizer on built-in images; write a PNG sheet")
    add_ckpt(d)
    d.add_argument("--epsilon", type=float, default=0.05, help="target error: mean absolute pixel error on [0, 1]")
    d.add_argument("--out", default="kolmotok-demo", help="output directory")
    d.set_defaults(func=cmd_demo)
    for subparser in sub.choices.values():
        subparser.formatter_class = _HelpWithDefaults
    return p


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (``kill``, a scheduler's stop) interrupts a command as Ctrl-C does, so unfinished
    files are removed and training checkpoints first; the handler is put back afterwards."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):  # an ignored SIGTERM stays ignored
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the command's own parser: "kolmotok eval: error: ...", with its usage
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, ranks other than 0 report warnings only
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s" if rank == 0 else
                        f"[rank {rank}] %(levelname)s %(name)s: %(message)s")

    def work() -> int:
        check_output(getattr(args, "out", None), directory=args.command not in FILE_OUTPUTS)
        return args.func(args)

    return report_errors(f"kolmotok {args.command}", work)


def report_errors(name: str, work: Callable[[], int | None]) -> int:
    """Run ``work`` and turn what a user can cause into one line on stderr and an exit status:
    bad input 2, Ctrl-C or SIGTERM 130, a failed write 1 (also for the scripts in benchmarks/)."""
    try:
        with _sigterm_interrupts():
            return work() or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`kolmotok encode ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as exc:  # a write that failed anyway (disk full, permissions changed meanwhile)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
