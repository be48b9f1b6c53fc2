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
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePath, PurePosixPath

import torch
from tqdm.auto import tqdm

from .api import Tokenizer, as_index
from .data.images import mirrored_reconstruction_paths, reconstruction_paths, save_image
from .io import one_line
from .tokenize import MANIFEST, RECORD, pyarrow_modules, shard_files, token_shape

log = logging.getLogger(__name__)


def unescape_path(printable: str) -> str:
    """Inverse of :func:`kolmotok.io.printable_path`: each ``\\xNN`` of a byte >= 0x80 (never UTF-8 alone)
    back to the surrogate escape Python uses for that byte of a file name."""
    return re.sub(r"\\x([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m.group(1), 16)), printable)


def token_files(source: str | Path) -> list[Path]:
    """The files of a token source: a ``kolmotok tokenize`` output folder (its shards), one shard,
    or a JSON-lines file from ``kolmotok encode --json --codes``."""
    source = Path(source)
    if source.is_dir():
        files = shard_files(source)
        if not files:
            raise ValueError(f"{source}: no shard-*.parquet files in it (the output of kolmotok tokenize)")
        planned = _planned(source)
        if planned is not None and len(planned) > len(files):
            log.warning("%s: %d of %d planned shards are missing (is its tokenize run unfinished?)",
                        source, len(planned) - len(files), len(planned))
        return files
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder")
    if not source.is_file():
        raise ValueError(f"{source}: not a regular file or folder (a pipe cannot be read twice: write the lines "
                         "to a file first)")
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
    cwd: str | None = None  # the directory encode ran in, which a JSON line's relative path is relative to
    unread: bool = False  # an input encode could not read (and reported): named like the rest, never decoded

    @property
    def naming_path(self) -> str | None:
        """The path the output name comes from: a JSON line's path as encode saw it."""
        return self.path if self.path is None or self.cwd is None else os.path.join(self.cwd, self.path)

    @property
    def decodable(self) -> bool:
        return self.problem is None and not self.unread


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
    cwd = data.get("cwd") if isinstance(data.get("cwd"), str) else None
    return TokenRow(where, path, None if problem else codes, problem, data.get("checkpoint"), cwd)


def read_rows(file: Path) -> list[TokenRow]:
    """The rows of one shard (path, length, codes) or JSON-lines file (path, tokens, codes, cwd;
    a line with an ``error`` is an input encode could not read). ValueError where the file
    cannot be read at all."""
    if file.suffix != ".parquet":
        return _json_rows(file)
    _, pq = pyarrow_modules()
    columns = ["path", "length", "codes"]
    try:
        present = set(pq.read_schema(file).names)
        table = pq.read_table(file, columns=columns) if present.issuperset(columns) else None
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise ValueError(f"{file}: not a readable token shard ({err})") from None
    if table is None:
        missing = ", ".join(sorted(set(columns) - present))
        raise ValueError(f"{file}: not a kolmotok token shard (no {missing} column)")
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
                elif isinstance(data.get("path"), str) and data["path"]:
                    rows.append(TokenRow(where, data["path"], None, cwd=data.get("cwd"), unread=True))
    except OSError as err:
        raise ValueError(f"{file}: cannot be read ({err.strerror})") from None
    if rows and all(row.path is None and (row.problem or "").startswith("not a JSON object") for row in rows):
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
    differ = [f"{k} {recorded[k]} (model: {v})" for k, v in token_shape(tok).items()
              if k in recorded and recorded[k] != v]
    if differ:
        raise ValueError(f"{file}: tokens of a model of another shape: {', '.join(differ)}")


def output_paths(files: list[Path], rows: list[list[TokenRow]], out: Path) -> tuple[list[list[Path | None]], int]:
    """Where each decodable row's reconstruction goes, as ``encode --out`` names them: shard paths
    mirror the tokenized folder below ``out`` (the stem rule over its manifest's whole plan where
    there is one, so any subset of its shards gets the same names); JSON-line paths are mirrored
    below the common parent of every path encode was given, unreadable ones included. A path
    that repeats gets ``-2``, ``-3``, ... before ``.png``. Returns them and the number of repeats."""
    dests: list[list[Path | None]] = [[None] * len(r) for r in rows]
    groups: dict = {}  # shards per tokenize output folder; JSON lines all together
    for i, f in enumerate(files):
        groups.setdefault(f.resolve().parent if f.suffix == ".parquet" else None, []).append(i)
    for folder, members in groups.items():
        named = [(i, j) for i in members for j, row in enumerate(rows[i]) if row.naming_path is not None]
        if not named:
            continue
        if folder is not None:
            plan_ = _planned(folder)
            relative = [PurePath(rows[i][j].path) for i, j in named]
            everyone = None if plan_ is None else [PurePath(p) for shard in plan_ for p in shard] + relative
            names = mirrored_reconstruction_paths(relative, out, everyone)
        else:
            names = reconstruction_paths([Path(rows[i][j].naming_path) for i, j in named], out)
        for (i, j), dest in zip(named, names):
            dests[i][j] = dest if rows[i][j].decodable else None
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


def decode_files(tok: Tokenizer, source: str | Path | list[Path], out: str | Path, batch_size: int = 256,
                 progress: bool = True, report: Callable[[str, str], None] | None = None) -> DecodeSummary:
    """Token rows -> one PNG per row below ``out`` (:func:`output_paths`; an existing PNG of that
    name is replaced), one decoder pass per batch, one file at a time. ``source``: a token source
    (:func:`token_files`) or its files. A file that cannot be read or holds tokens of a model of
    another shape, and a row whose tokens do not fit the model, are reported (``report(where,
    reason)``, in file order) and skipped; the rest are written. ValueError where no file can be read."""
    t0 = time.time()
    files = token_files(source) if isinstance(source, (str, os.PathLike)) else [Path(f) for f in source]
    if not files:
        raise ValueError("decode_files: no token files given")
    failures: list[tuple[str, str]] = []

    def fail(where: str, reason: str) -> None:
        failures.append((where, reason))
        (report or (lambda w, r: log.error("%s: %s", w, r)))(where, reason)

    rows: list[list[TokenRow]] = []  # a first pass for the names (codes dropped): they depend on every row's path
    refused: list[tuple[str, str]] = []
    for file in files:
        try:
            check_token_shape(file, tok)
            rows.append([replace(r, codes=None) for r in read_rows(file)])
        except ValueError as err:
            rows.append([])
            refused.append((str(file), str(err).removeprefix(f"{file}: ")))
    if len(refused) == len(files):
        more = f" (and {len(refused) - 1} more files)" if len(refused) > 1 else ""
        raise ValueError(f"nothing to decode: {refused[0][0]}: {refused[0][1]}{more}")
    if not any(r.decodable or r.problem for file_rows in rows for r in file_rows):
        raise ValueError(f"{files[0] if len(files) == 1 else files[0].parent}: no token rows to decode")
    dests, repeated = output_paths(files, rows, Path(out))
    written, refused_files = 0, dict(refused)
    with tqdm(total=sum(map(len, rows)), unit="img", desc="decode", disable=not progress, dynamic_ncols=True) as bar:
        for file, file_dests in zip(files, dests):
            if str(file) in refused_files:
                fail(str(file), refused_files[str(file)])
                continue
            try:
                file_rows = read_rows(file)  # (its shape was checked in the first pass)
            except ValueError as err:  # changed since the first pass
                fail(str(file), str(err).removeprefix(f"{file}: "))
                continue
            for start in range(0, len(file_rows), batch_size):
                batch = [(row, dest) for row, dest in zip(file_rows[start:start + batch_size],
                                                          file_dests[start:start + batch_size]) if not row.unread]
                for (row, dest), image in zip(batch, _decode_rows(tok, [row for row, _ in batch])):
                    where = f"{row.where} ({one_line(row.path)})" if row.path else row.where
                    if isinstance(image, str):
                        fail(where, image)
                        continue
                    try:
                        save_image(image, dest)
                        written += 1
                    except (OSError, ValueError) as err:
                        fail(where, f"cannot write {one_line(str(dest))} ({getattr(err, 'strerror', None) or err})")
                bar.update(min(batch_size, len(file_rows) - start))
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
    if not tok.discrete and not all(isinstance(v, list) for v in codes):
        raise ValueError(f"codes must be lists of {tok.model.cfg.code_dim} numbers for this model (a continuous "
                         "one); plain numbers are the codes of a discrete (FSQ) model")
    flat = codes if tok.discrete else [x for v in codes for x in v]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat) or (
            tok.discrete and not all(isinstance(x, int) for x in flat)):
        kind = "integers" if tok.discrete else f"lists of {tok.model.cfg.code_dim} numbers"
        raise ValueError(f"codes must be {kind}")
    try:
        return torch.tensor(codes, dtype=torch.long if tok.discrete else torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"codes must be {'integers' if tok.discrete else 'equal-length lists of numbers'}") from None
