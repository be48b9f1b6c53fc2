"""``kolmotok tokenize``: a folder of images -> Parquet shards of variable-length tokens.

Stages: :func:`plan` (list the images once, cut them into numbered shards, record the plan in
``_manifest.json``), :func:`encode_shard` (load, one encoder pass per batch, one row per image)
and :func:`write_shard` (atomic write of ``shard-NNNNN.parquet``). A shard file that exists and
accounts for all of its planned files (rows plus listed errors) is complete, so a re-run skips it:
an interrupted run resumes where it stopped and every image appears exactly once. A re-run must
name the same folder and settings as the manifest. Options are checked before anything is
written. Under torchrun, rank r writes the shards i with i % world == r.

Each row: ``path`` (relative to the folder; bytes of a file name that are not UTF-8 are
written as ``\\xNN`` escapes), ``length`` (tokens kept), ``codes`` (a list of
``length`` integer codes for discrete models; for continuous models a list of ``length``
vectors of ``token_dim`` floats); with ``with_error``, ``l1`` (the achieved error, one extra
decoder pass); with a ``guarantee``, ``guaranteed`` (False where the calibration cannot promise
eps: the image keeps the whole budget); with ``verify``, ``reencoded`` (how many times the
image was re-encoded at a tighter condition after missing eps). The file metadata records
eps, the checkpoint (as given, and as ``checkpoint_record``: the exact directory that made the
tokens), the token format and ``root``, the folder the paths are relative to.
Unreadable images are listed in ``_errors-NNNNN.jsonl`` beside their shard and skipped. The
side files start with ``_`` so that Arrow, pandas and polars, given the output folder, read
the shards alone (outputs of earlier versions, without the ``_``, are renamed on resume).

``kolmotok decode`` goes back to images: :mod:`kolmotok.detokenize`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .api import Tokenizer, as_index
from .checkpoint import checkpoint_record
from .data import folder_path
from .data.images import list_images, load_images
from .io import atomic_path, printable_path, write_json, write_text

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
LEGACY_PREFIX = ("manifest.json", "errors-")  # side-file names before the "_" prefix
LEGACY_SETTINGS = {"verify": False}  # settings that manifests of earlier versions lack, as they ran
RECORD = "checkpoint_record"  # metadata: the exact checkpoint that made the tokens (checkpoint_record)


def pyarrow_modules():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ValueError("kolmotok tokenize needs pyarrow: pip install pyarrow") from None
    return pa, pq


def shard_path(out: Path, index: int) -> Path:
    return out / f"shard-{index:05d}.parquet"


def shard_files(out: str | Path) -> list[Path]:
    """The shards of a tokenize output, in order."""
    return sorted(Path(out).glob("shard-*.parquet"))


def token_shape(tok: Tokenizer) -> dict:
    """What a model's tokens look like, as the shards' metadata records it (decode checks it)."""
    return {"image_size": tok.image_size, "max_tokens": tok.max_tokens,
            "token_format": "codes" if tok.discrete else "vectors", "token_dim": tok.model.cfg.code_dim}


def errors_path(out: Path, index: int) -> Path:
    return out / f"_errors-{index:05d}.jsonl"


def rename_legacy_files(out: Path) -> None:
    """Outputs of earlier versions named the side files without "_": rename them in place."""
    for path in [out / LEGACY_PREFIX[0], *out.glob(f"{LEGACY_PREFIX[1]}*.jsonl")]:
        if path.is_file():
            path.replace(out / f"_{path.name}")


def _check_count(name: str, value: int) -> int:
    count = as_index(value)
    if count is None or count < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return count


def check_options(tok: Tokenizer, epsilon: float, guarantee: float | None, shard_size: int, batch_size: int) -> None:
    """ValueError for an option :func:`tokenize_folder` would refuse, before anything is written
    (a bad option must leave no manifest behind that a corrected re-run would then disagree with)."""
    tok.check_options(epsilon, guarantee=guarantee)
    _check_count("shard size (--shard-size)", shard_size)
    _check_count("batch size (--batch-size)", batch_size)


def unreadable_count(out: Path) -> int:
    """Files of the whole output (every run and rank so far) that could not be read."""
    return sum(listed_failures(f) for f in Path(out).glob("_errors-*.jsonl"))


def listed_failures(errors: Path) -> int:
    """How many unreadable files an ``_errors-NNNNN.jsonl`` file lists (0 where there is none)."""
    return len(errors.read_text().splitlines()) if errors.exists() else 0


def shard_complete(out: Path, index: int, files: list[str]) -> bool:
    """Whether shard ``index`` exists and holds a row or an error for each of its planned files;
    one that does not (left by a run that skipped its files) is done again."""
    path = shard_path(out, index)
    if not path.exists():
        return False
    _, pq = pyarrow_modules()
    errors = errors_path(out, index)
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, ValueError) as exc:  # (pyarrow's ArrowInvalid is a ValueError) a damaged shard
        log.warning("%s is not a readable shard (%s): tokenizing it again", path, exc)
        return False
    failed = listed_failures(errors)
    if rows + failed == len(files):
        return True
    log.warning("%s holds %d rows and %d errors for %d planned files: tokenizing it again",
                path, rows, failed, len(files))
    return False


def _same_folder(stored: str, root: Path, shards: list[list[str]]) -> bool:
    """Whether a manifest's folder is ``root``. Manifests of earlier versions kept the folder as
    typed, often relative to wherever that run started: for them, every planned file must be there."""
    if Path(stored).is_absolute():
        return Path(stored).resolve() == root.resolve()
    return all((root / f).is_file() for shard in shards for f in shard)


@dataclass
class Plan:
    root: Path
    shards: list[list[str]]  # relative paths per shard
    settings: dict  # eps, checkpoint, ...: a resumed run must match them


def plan(root: Path, out: Path, shard_size: int, settings: dict, is_main: bool = True, barrier=lambda: None) -> Plan:
    """The shard plan: made once (by rank 0) and reused by every later run on ``out`` (which
    must name the same folder and settings)."""
    _check_count("shard size (--shard-size)", shard_size)
    manifest = out / MANIFEST
    if is_main:
        rename_legacy_files(out)
    if is_main and not manifest.is_file():
        files = [p.relative_to(root).as_posix() for p in list_images(root)]
        if not files:
            raise ValueError(f"folder:{root}: no image files found")
        shards = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
        write_json(manifest, {"root": str(root.resolve()), "settings": settings, "shards": shards})
    barrier()
    data = json.loads(manifest.read_text())
    if not _same_folder(data["root"], root, data["shards"]):
        raise ValueError(f"{out} holds a tokenization of folder:{data['root']}, not of folder:{root}; "
                         f"use another --out, or --data folder:{data['root']} to resume it")
    if {**LEGACY_SETTINGS, **data["settings"]} != {**LEGACY_SETTINGS, **settings}:
        raise ValueError(f"{out} holds a tokenization with other settings ({data['settings']}); "
                         f"use another --out or the same settings ({settings})")
    return Plan(root, data["shards"], data["settings"])


def encode_shard(tok: Tokenizer, root: Path, files: list[str], epsilon: float, batch_size: int,
                 with_error: bool, guarantee: float | None, bar=None, verify: bool = False):
    """-> (rows as column lists, failures [(path, reason)])."""
    from .evaluation.metrics import l1_per_image

    cols: dict[str, list] = {"path": [], "length": [], "codes": []}
    wanted = {"l1": with_error, "guaranteed": guarantee is not None, "reencoded": verify}
    cols |= {name: [] for name, on in wanted.items() if on}
    failures = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        loaded = load_images([root / f for f in chunk], tok.image_size, skip_errors=True)
        failures += [(printable_path(p.relative_to(root).as_posix()), reason) for p, reason in loaded.failures]
        if len(loaded.paths):
            enc = tok.encode(loaded.images, epsilon=epsilon, guarantee=guarantee, verify=verify)
            cols["path"] += [printable_path(p.relative_to(root).as_posix()) for p in loaded.paths]
            cols["length"] += enc.lengths.tolist()
            cols["codes"] += [t.cpu().tolist() for t in enc.to_list()]
            if with_error:
                cols["l1"] += l1_per_image(tok.decode(enc), loaded.images).tolist()
            if guarantee is not None:
                cols["guaranteed"] += enc.guaranteed.tolist()
            if verify:
                cols["reencoded"] += enc.reencoded.tolist()
        if bar is not None:
            bar.update(len(chunk))
    if len(cols["path"]) + len(failures) != len(files):  # never let a shard that skipped files look complete
        raise RuntimeError(f"a shard of {len(files)} files gave {len(cols['path'])} rows and {len(failures)} "
                           "errors; not writing it")
    return cols, failures


def write_shard(out: Path, index: int, cols: dict[str, list], failures: list, metadata: dict, tok: Tokenizer) -> Path:
    """Errors file first (or a stale one removed), then the shard (atomic rename): the shard's
    existence marks the shard done."""
    pa, pq = pyarrow_modules()
    if failures:
        write_text(errors_path(out, index), "".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in failures))
    else:
        errors_path(out, index).unlink(missing_ok=True)
    token = pa.int32() if tok.discrete else pa.list_(pa.float32(), tok.model.cfg.code_dim)
    optional = {"l1": pa.float32(), "guaranteed": pa.bool_(), "reencoded": pa.int32()}
    schema = pa.schema([("path", pa.string()), ("length", pa.int32()), ("codes", pa.list_(token))]
                       + [(name, kind) for name, kind in optional.items() if name in cols],
                       metadata={k: json.dumps(v) for k, v in metadata.items()})
    table = pa.Table.from_pydict(cols, schema=schema)
    with atomic_path(shard_path(out, index)) as tmp:
        pq.write_table(table, tmp)
    return shard_path(out, index)


@dataclass
class TokenizeSummary:
    images: int  # tokenized by this process in this run
    failures: int
    shards_written: int
    shards_skipped: int  # already complete
    seconds: float


def tokenize_folder(tok: Tokenizer, root: str | Path, out: str | Path, epsilon: float, checkpoint: str = "shipped",
                    shard_size: int = 1000, batch_size: int = 256, with_error: bool = False,
                    guarantee: float | None = None, rank: int = 0, world: int = 1, barrier=lambda: None,
                    progress: bool = True, verify: bool = False) -> TokenizeSummary:
    root, out = Path(folder_path(root)), Path(out)
    check_options(tok, epsilon, guarantee, shard_size, batch_size)  # the manifest and shards create out
    # the checkpoint as loaded (a run directory as the step it resolved to), not as typed: a resume
    # after the run trained on, or naming the same weights another way, is judged by the weights
    loaded = checkpoint_record(tok.path)
    settings = {"epsilon": epsilon, "checkpoint": loaded or checkpoint,  # (built in memory: the name given)
                "guarantee": guarantee, "with_error": with_error, "verify": verify}
    shards = plan(root, out, shard_size, settings, rank == 0, barrier)
    from . import __version__

    metadata = {**settings, "checkpoint_given": checkpoint, RECORD: loaded,
                "root": str(root.resolve()),
                "kolmotok_version": __version__, **token_shape(tok)}
    mine = [i for i in range(len(shards.shards)) if i % world == rank]
    todo = [i for i in mine if not shard_complete(out, i, shards.shards[i])]
    total = sum(len(shards.shards[i]) for i in todo)
    t0, n_images, n_fail = time.time(), 0, 0
    with tqdm(total=total, unit="img", desc=f"tokenize[{rank}]", disable=not progress, dynamic_ncols=True) as bar:
        for i in todo:
            cols, failures = encode_shard(tok, root, shards.shards[i], epsilon, batch_size, with_error, guarantee, bar,
                                          verify)
            write_shard(out, i, cols, failures, metadata, tok)
            n_images, n_fail = n_images + len(cols["path"]), n_fail + len(failures)
            bar.set_postfix(img_s=f"{n_images / max(1e-9, time.time() - t0):.0f}", refresh=False)
    barrier()
    return TokenizeSummary(n_images, n_fail, len(todo), len(mine) - len(todo), time.time() - t0)


@dataclass
class OutputStats:
    """A whole tokenize output, every shard whichever run or rank wrote it (monitoring)."""
    images: int
    mean_tokens: float
    measured: int  # images with their achieved l1 recorded (--with-error)
    met: int  # ... of which met eps
    promised: int  # with a guarantee: images it was promised for, with l1 recorded
    promised_met: int
    promise_p_value: float | None  # P(so few met) were the promise true; None where nothing was promised


def output_stats(out: str | Path, epsilon: float, guarantee: float | None) -> OutputStats:
    """Tokens and, where the shards hold ``l1``, the share meeting eps; with a guarantee the
    binomial check of the promise on the images it was promised for (shards of earlier versions
    without ``guaranteed`` are left out of it) (:func:`kolmotok.calibration.promise_p_value`).
    Counted shard by shard, from the columns it needs, never the codes."""
    from .calibration import promise_p_value

    _, pq = pyarrow_modules()
    images = tokens = measured = met = promised = promised_met = 0
    for shard in shard_files(out):
        present = set(pq.read_schema(shard).names)
        table = pq.read_table(shard, columns=[c for c in ("length", "l1", "guaranteed") if c in present])
        lengths = table.column("length").to_pylist()
        images, tokens = images + len(lengths), tokens + sum(lengths)
        if "l1" not in present:
            continue
        ok = [e <= epsilon for e in table.column("l1").to_pylist()]
        measured, met = measured + len(ok), met + sum(ok)
        if "guaranteed" in present:
            flags = table.column("guaranteed").to_pylist()
            promised += sum(flags)
            promised_met += sum(m for m, g in zip(ok, flags) if g)
    p_value = promise_p_value(promised_met, promised, guarantee) if guarantee is not None and promised else None
    return OutputStats(images, tokens / max(1, images), measured, met, promised, promised_met, p_value)


# ------------------------------------------------------------------ reading back
def read_tokens(directory: str | Path):
    """All shards of a ``kolmotok tokenize`` output as one pyarrow Table (columns path, length,
    codes[, l1, guaranteed, reencoded]); ``.to_pandas()`` for pandas. The shards also open directly in polars, DuckDB
    or HF datasets (``directory/shard-*.parquet``)."""
    pa, pq = pyarrow_modules()
    files = shard_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory}: no shard-*.parquet files")
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables).replace_schema_metadata(tables[0].schema.metadata)


def table_to_tokens(table, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a token table -> (padded tokens, lengths) for ``tok.decode(tokens, lengths)``."""
    lengths = torch.tensor(table.column("length").to_pylist(), dtype=torch.long)
    codes = table.column("codes").to_pylist()
    T = int(lengths.max()) if len(lengths) else 1
    if tok.discrete:
        tokens = torch.full((len(codes), T), -1, dtype=torch.long)
        for i, c in enumerate(codes):
            tokens[i, :len(c)] = torch.tensor(c, dtype=torch.long)
    else:
        tokens = torch.zeros(len(codes), T, tok.model.cfg.code_dim)
        for i, c in enumerate(codes):
            tokens[i, :len(c)] = torch.tensor(c, dtype=torch.float32)
    return tokens, lengths
