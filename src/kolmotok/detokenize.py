"""``kolmotok decode``: stored tokens back to images.

Sources: a ``kolmotok tokenize`` output folder (its shards), one shard, or the JSON lines of
``kolmotok encode --json --codes``. Stages: :func:`read_rows` (one file's rows; a row that
cannot be one says why), :func:`output_paths` (where each reconstruction goes, named as
``encode --out`` names them) and :func:`decode_files` (one decoder pass per batch, one PNG per
row, one file at a time; bad rows and files are reported and skipped, the rest written).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

import torch
from tqdm.auto import tqdm

from .api import Tokenizer, as_index
from .data.images import mirrored_reconstruction_paths, reconstruction_paths, save_image
from .tokenize import MANIFEST, RECORD, pyarrow_modules

log = logging.getLogger(__name__)

TOKEN_SHAPE = ("image_size", "max_tokens", "token_format", "token_dim")  # metadata decode checks


def unescape_path(printable: str) -> str:
    """Inverse of :func:`kolmotok.tokenize.printable_path`: each ``\\xNN`` of a byte >= 0x80 (never UTF-8 alone)
    back to the surrogate escape Python uses for that byte of a file name."""
    return re.sub(r"\\x([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m.group(1), 16)), printable)


def token_files(source: str | Path) -> list[Path]:
    """The files of a token source: a ``kolmotok tokenize`` output folder (its shards), one shard,
    or a JSON-lines file from ``kolmotok encode --json --codes``."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("shard-*.parquet"))
        if not files:
            raise ValueError(f"{source}: no shard-*.parquet files in it (the output of kolmotok tokenize)")
        planned = _planned(source)
        if planned is not None and len(planned) > len(files):
            log.warning("%s: %d of %d planned shards are missing (is its tokenize run unfinished?)",
                        source, len(planned) - len(files), len(planned))
        return files
    if not source.is_file():
        raise ValueError(f"{source}: no such file or folder")
    return [source]


def _planned(folder: Path) -> list[list[str]] | None:
    """The shards a tokenize output's manifest plans (relative paths), None without a readable one."""
    try:
        return json.loads((folder / MANIFEST).read_text())["shards"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shard_metadata(file: Path) -> dict:
    _, pq = pyarrow_modules()
    try:
        metadata = pq.read_schema(file).metadata or {}
        return {k.decode(): json.loads(v) for k, v in metadata.items() if k != b"ARROW:schema"}
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise ValueError(f"{file}: not a readable token shard ({err})") from None


@dataclass
class TokenRow:
    where: str  # "FILE line N" / "FILE row N", for messages
    path: str | None  # the image's path (file-name bytes as Python keeps them); None where the row has none
    codes: list | None  # its token sequence; None where the row cannot be one
    problem: str | None = None
    checkpoint: str | None = None  # the checkpoint a JSON line records (encode --json --codes)


def _row(where: str, data: dict) -> TokenRow:
    path, codes, length = data.get("path"), data.get("codes"), data.get("tokens")
    path = path if isinstance(path, str) and path else None
    problem = None
    if path is None:
        problem = "no path"
    elif codes is None:
        problem = "no codes (kolmotok encode writes them with --json --codes)"
    elif not isinstance(codes, list) or not codes:
        problem = "codes must be a non-empty list"
    elif length is not None and (as_index(length) is None or length != len(codes)):
        problem = f"{len(codes)} codes for a length of {length!r}"
    return TokenRow(where, path, None if problem else codes, problem, data.get("checkpoint"))


def read_rows(file: Path) -> list[TokenRow]:
    """The rows of one shard (path, length, codes) or JSON-lines file (path, tokens, codes; lines
    with an ``error``, inputs encode could not read and reported, are left out). ValueError
    where the file cannot be read at all."""
    if file.suffix != ".parquet":
        return _json_rows(file)
    _, pq = pyarrow_modules()
    try:
        table = pq.read_table(file, columns=["path", "length", "codes"])
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise ValueError(f"{file}: not a readable token shard ({err})") from None
    rows = []
    for i, (path, length, codes) in enumerate(zip(*(table.column(k).to_pylist() for k in ("path", "length", "codes")))):
        row = _row(f"{file} row {i + 1}", {"path": unescape_path(path) if path else path,
                                           "tokens": length, "codes": codes})
        if row.path is not None and (PurePosixPath(row.path).is_absolute() or ".." in PurePosixPath(row.path).parts):
            row.codes, row.problem = None, "a path outside the tokenized folder"
        rows.append(row)
    return rows


def _json_rows(file: Path) -> list[TokenRow]:
    rows = []
    try:
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{file} line {number}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    data = None
                if not isinstance(data, dict):
                    rows.append(TokenRow(where, None, None, "not a JSON object (a cut-off or edited line?)"))
                elif "error" not in data:
                    rows.append(_row(where, data))
    except OSError as err:
        raise ValueError(f"{file}: cannot be read ({err.strerror})") from None
    if rows and all(row.path is None and row.problem.startswith("not a JSON object") for row in rows):
        raise ValueError(f"{file}: no JSON objects in it (expected the output of kolmotok encode --json --codes)")
    return rows


def recorded_checkpoints(files: list[Path]) -> set[str]:
    """The checkpoints the token files record: a shard's metadata (the exact checkpoint, or for
    outputs of earlier versions the name given), each JSON line's ``checkpoint``. Unreadable files
    are left to :func:`decode_files` to report."""
    found = set()
    for file in files:
        try:
            if file.suffix == ".parquet":
                meta = _shard_metadata(file)
                found.add(meta.get(RECORD) or meta.get("checkpoint"))
            else:
                found.update(row.checkpoint for row in _json_rows(file))
        except ValueError:
            continue
    return found - {None}


def check_token_shape(file: Path, tok: Tokenizer) -> None:
    """ValueError where a shard records tokens of a model of another shape than ``tok``."""
    if file.suffix != ".parquet":
        return
    recorded = _shard_metadata(file)
    own = {"image_size": tok.image_size, "max_tokens": tok.max_tokens,
           "token_format": "codes" if tok.discrete else "vectors", "token_dim": tok.model.cfg.code_dim}
    differ = [f"{k} {recorded[k]} (model: {own[k]})" for k in TOKEN_SHAPE if k in recorded and recorded[k] != own[k]]
    if differ:
        raise ValueError(f"{file}: tokens of a model of another shape: {', '.join(differ)}")


def output_paths(files: list[Path], paths: list[list[str | None]], out: Path) -> tuple[list[list[Path | None]], int]:
    """Where each row's reconstruction goes (``paths``: each file's row paths), as ``encode --out``
    names them: shard paths are relative to the tokenized folder (mirrored below ``out``, the stem
    rule over the manifest's whole plan where there is one, so any subset of shards gets the same
    names); JSON-line paths are mirrored below their common parent. A path that repeats gets
    ``-2``, ``-3``, ... before ``.png``. Returns them and the number of repeats."""
    dests: list[list[Path | None]] = [[None] * len(p) for p in paths]
    for shards in (True, False):
        rows = [(i, j) for i, f in enumerate(files) if (f.suffix == ".parquet") == shards
                for j, p in enumerate(paths[i]) if p is not None]
        if not rows:
            continue
        if shards:
            plan_ = _planned(files[0].parent)
            relative = [PurePath(paths[i][j]) for i, j in rows]
            named = mirrored_reconstruction_paths(
                relative, out, None if plan_ is None else [PurePath(p) for s in plan_ for p in s] + relative)
        else:
            named = reconstruction_paths([Path(paths[i][j]) for i, j in rows], out)
        for (i, j), dest in zip(rows, named):
            dests[i][j] = dest
    seen: Counter = Counter()
    for file_dests in dests:
        for j, dest in enumerate(file_dests):
            if dest is not None:
                seen[dest] += 1
                if seen[dest] > 1:
                    file_dests[j] = dest.with_name(f"{dest.name.removesuffix('.png')}-{seen[dest]}.png")
    return dests, sum(n - 1 for n in seen.values())


@dataclass
class DecodeSummary:
    images: int  # reconstructions written
    failures: list[tuple[str, str]]  # (where, reason): rows or files that could not be decoded
    repeated: int  # rows whose path repeats an earlier one (written with -2, -3, ...)
    seconds: float


def decode_files(tok: Tokenizer, files: list[Path], out: str | Path, batch_size: int = 256, progress: bool = True,
                 report: Callable[[str, str], None] | None = None) -> DecodeSummary:
    """Token rows -> one PNG per row below ``out`` (:func:`output_paths`), one decoder pass per
    batch, one file at a time. A file that cannot be read or holds tokens of a model of another
    shape, and a row whose tokens do not fit the model, are reported (``report(where, reason)``,
    in file order) and skipped; the rest are written."""
    t0 = time.time()
    failures: list[tuple[str, str]] = []

    def fail(where: str, reason: str) -> None:
        failures.append((where, reason))
        (report or (lambda w, r: log.error("%s: %s", w, r)))(where, reason)

    def rows_of(file: Path) -> list[TokenRow] | None:
        try:
            check_token_shape(file, tok)
            return read_rows(file)
        except ValueError as err:
            fail(str(file), str(err).removeprefix(f"{file}: "))
            return None

    paths = []  # a first pass for the names: they depend on every row's path
    for file in files:
        rows = rows_of(file)
        paths.append([] if rows is None else [row.path for row in rows])
    if not any(paths) and not failures:
        raise ValueError(f"{files[0] if len(files) == 1 else files[0].parent}: no token rows to decode")
    dests, repeated = output_paths(files, paths, Path(out))
    written = 0
    with tqdm(total=sum(map(len, paths)), unit="img", desc="decode", disable=not progress, dynamic_ncols=True) as bar:
        for file, file_dests in zip(files, dests):
            rows = rows_of(file) if file_dests else None
            if rows is None or len(rows) != len(file_dests):
                continue
            for start in range(0, len(rows), batch_size):
                batch = list(zip(rows[start:start + batch_size], file_dests[start:start + batch_size]))
                for (row, dest), image in zip(batch, _decode_rows(tok, [row for row, _ in batch])):
                    where = f"{row.where} ({row.path})" if row.path else row.where
                    if isinstance(image, str):
                        fail(where, image)
                        continue
                    try:
                        save_image(image, dest)
                        written += 1
                    except OSError as err:
                        fail(where, f"cannot write {dest} ({err.strerror})")
                bar.update(len(batch))
    return DecodeSummary(written, failures, repeated, time.time() - t0)


def _decode_rows(tok: Tokenizer, rows: list[TokenRow]) -> list[torch.Tensor | str]:
    """Reconstructions of the rows, or for each row that cannot be decoded the reason: one decoder
    pass over the good rows; where the model refuses them together, each alone to name the bad ones."""
    out: list[torch.Tensor | str] = [row.problem or "" for row in rows]
    good = []
    for i, row in enumerate(rows):
        if row.problem is None:
            try:
                good.append((i, _sequence(row.codes, tok)))
            except ValueError as err:
                out[i] = str(err)
    groups = [good] if good else []
    while groups:
        group = groups.pop()
        try:
            images = tok.decode([seq for _, seq in group]).cpu()
        except ValueError as err:
            if len(group) == 1:
                out[group[0][0]] = str(err).replace("tokens[0] ", "codes ")
            else:
                groups += [[g] for g in group]
            continue
        for (i, _), image in zip(group, images):
            out[i] = image if torch.isfinite(image).all() else "the tokens decode to non-finite pixels"
    return out


def _sequence(codes: list, tok: Tokenizer) -> torch.Tensor:
    """One row's codes as a tensor; ValueError where they are not this model's kind of token."""
    flat = codes if tok.discrete else [x for v in codes for x in (v if isinstance(v, list) else [v])]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat) or (
            tok.discrete and not all(isinstance(x, int) for x in flat)):
        kind = "integers" if tok.discrete else f"lists of {tok.model.cfg.code_dim} numbers"
        raise ValueError(f"codes must be {kind}")
    try:
        return torch.tensor(codes, dtype=torch.long if tok.discrete else torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"codes must be {'integers' if tok.discrete else 'equal-length lists of numbers'}") from None
