"""`kolmotok tokenize`: Parquet shards, reading back, decoding, interruption and resume, 2 ranks."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import kolmotok
from conftest import smooth_images
from kolmotok import tokenize as tokenize_mod
from kolmotok.api import Tokenizer
from kolmotok.checkpoint import save_checkpoint
from kolmotok.cli import main
from kolmotok.config import to_dict
from kolmotok.detokenize import decode_files, token_files, unescape_path
from kolmotok.tokenize import table_to_tokens, tokenize_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(11):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def tok(model) -> Tokenizer:
    return Tokenizer(model)


def test_shards_read_back_and_decode_to_the_same_images(tok, folder, tmp_path):
    out = tmp_path / "tokens"
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=4, batch_size=3, with_error=True, progress=False)
    assert (s.images, s.failures, s.shards_written) == (11, 1, 3)
    table = kolmotok.read_tokens(out)
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(f"{'a' if i % 2 else 'b'}/img{i:02d}.png" for i in range(11))
    assert json.loads(table.schema.metadata[b"epsilon"]) == 0.1
    assert json.loads(table.schema.metadata[b"root"]) == str(folder.resolve())  # paths resolve from any directory
    errors = [json.loads(x) for f in out.glob("_errors-*.jsonl") for x in f.read_text().splitlines()]
    assert [e["path"] for e in errors] == ["b/broken.jpg"]
    images = tok.load_images([folder / p for p in paths])
    enc = tok.encode(images, epsilon=0.1)
    tokens, lengths = table_to_tokens(table, tok)
    assert lengths.tolist() == enc.lengths.tolist() == table.column("length").to_pylist()
    torch.testing.assert_close(tok.decode(tokens, lengths), tok.decode(enc), rtol=0, atol=1e-6)
    assert table.to_pandas()["l1"].between(0, 1).all()


def test_interrupted_run_resumes_without_loss_or_duplicates(tok, folder, tmp_path, monkeypatch):
    out = tmp_path / "tokens"
    real, calls = tokenize_mod.write_shard, []

    def crash_on_third(out_dir, index, *args):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(out_dir, index, *args)

    monkeypatch.setattr(tokenize_mod, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        tokenize_folder(tok, folder, out, 0.1, shard_size=3, progress=False)
    assert len(list(out.glob("shard-*.parquet"))) == 2 and not list(out.glob(".*tmp"))
    monkeypatch.setattr(tokenize_mod, "write_shard", real)
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=3, progress=False)
    assert (s.shards_skipped, s.shards_written) == (2, 2)
    paths = kolmotok.read_tokens(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 11
    with pytest.raises(ValueError, match="other settings"):
        tokenize_folder(tok, folder, out, 0.2, shard_size=3, progress=False)


def test_two_ranks_under_torchrun_write_disjoint_shards(tmp_path, folder, model, cfg):
    ck = save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})
    out = tmp_path / "tokens"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kolmotok",
           "tokenize", "--ckpt", str(ck), "--data", f"folder:{folder}", "--out", str(out), "--shard-size", "2",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0:" in proc.stdout and "rank 1:" in proc.stdout
    paths = kolmotok.read_tokens(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 11 and len(list(out.glob("shard-*.parquet"))) == 6


def test_cli_tokenize_rejects_other_data(capsys):
    assert main(["tokenize", "--data", "photos", "--out", "x"]) == 2
    assert "folder:PATH" in capsys.readouterr().err


def test_cli_tokenize_exit_status_says_whether_every_file_was_read(tmp_path, checkpoint, capsys):
    junk, good = tmp_path / "junk", tmp_path / "good"
    junk.mkdir(), good.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    Image.new("RGB", (20, 20), "red").save(good / "a.png")
    common = ["tokenize", "--ckpt", str(checkpoint), "--no-progress", "--device", "cpu"]
    assert main(common + ["--data", f"folder:{good}", "--out", str(tmp_path / "t1")]) == 0
    assert main(common + ["--data", f"folder:{junk}", "--out", str(tmp_path / "t2")]) == 2
    assert "no readable images; the reasons are in" in capsys.readouterr().err
    (good / "b.png").write_bytes(b"not a png")  # a new output: one of two files unreadable
    for _ in range(2):  # the rerun has nothing left to do, and still says what was skipped
        assert main(common + ["--data", f"folder:{good}", "--out", str(tmp_path / "t3")]) == 1
        assert "1 unreadable files skipped" in capsys.readouterr().err
    shard = tmp_path / "t1" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # damaged: done again on the next run, with a warning
    assert main(common + ["--data", f"folder:{good}", "--out", str(tmp_path / "t1")]) == 0  # (planned: a.png)
    assert "1 new shards (0 already complete)" in capsys.readouterr().out
    assert kolmotok.read_tokens(tmp_path / "t1").num_rows == 1


@pytest.mark.parametrize("option, match", [
    ({"batch_size": 0}, "batch size"), ({"batch_size": -1}, "batch size"), ({"shard_size": 0}, "shard size"),
    ({"epsilon": -1.0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"), ({"guarantee": 0.5}, "calibration"),
])
def test_bad_options_are_rejected_before_anything_is_written(tok, folder, tmp_path, option, match):
    out = tmp_path / "tokens"
    kwargs = {"epsilon": 0.1, "shard_size": 4, "progress": False}
    with pytest.raises(ValueError, match=match):
        tokenize_folder(tok, folder, out, **{**kwargs, **option})
    assert not out.exists()  # no manifest: the corrected run is not told it has "other settings"
    assert tokenize_folder(tok, folder, out, **kwargs).images == 11


def test_a_shard_that_skipped_its_files_is_tokenized_again(tok, folder, tmp_path):
    out = tmp_path / "tokens"  # as an older version left it after --batch-size -1: an empty shard file
    shards = tokenize_mod.plan(folder, out, 100, {"epsilon": 0.1, "checkpoint": "shipped", "guarantee": None,
                                                  "with_error": False})
    tokenize_mod.write_shard(out, 0, {"path": [], "length": [], "codes": []}, [], {}, tok)
    assert len(shards.shards[0]) == 12
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=100, progress=False)
    assert (s.shards_written, s.shards_skipped, s.images, s.failures) == (1, 0, 11, 1)
    assert kolmotok.read_tokens(out).num_rows == 11
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=100, progress=False)
    assert (s.shards_written, s.shards_skipped) == (0, 1)  # rows + listed errors account for every file


def test_guarantee_and_verify_are_recorded_per_image(halting_model, tmp_path):
    """Each row holds what tok.encode(..., guarantee, verify) gives that image: on this model
    (conftest.halting_toy) the guarantee tightens the condition and verification re-encodes some."""
    tok, folder = Tokenizer(halting_model), tmp_path / "smooth"
    folder.mkdir()
    for i, img in enumerate(smooth_images(24, 12)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"s{i:02d}.png")
    tok.calibrate(smooth_images(60, 11), alpha=0.2)
    out = tmp_path / "tokens"
    tokenize_folder(tok, folder, out, 0.15, shard_size=5, with_error=True, guarantee=0.8, verify=True, progress=False)
    frame = kolmotok.read_tokens(out).to_pandas().sort_values("path")
    images = tok.load_images(sorted(folder.glob("*.png")))
    direct = tok.encode(images, 0.15, guarantee=0.8, verify=True)
    assert frame["length"].tolist() == direct.lengths.tolist()
    assert frame["reencoded"].tolist() == direct.reencoded.tolist() and frame["guaranteed"].all()
    assert (frame["reencoded"] > 0).any() and (frame["length"] < tok.max_tokens).any()
    # after verification an image meets eps or keeps the whole budget
    assert ((frame["l1"] <= 0.15 + 1e-6) | (frame["length"] == tok.max_tokens)).all()
    with pytest.raises(ValueError, match="other settings"):  # a rerun without --verify is another tokenization
        tokenize_folder(tok, folder, out, 0.15, shard_size=5, with_error=True, guarantee=0.8, progress=False)


def test_resume_must_name_the_same_folder(tok, folder, tmp_path, monkeypatch):
    out, other = tmp_path / "tokens", tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (20, 20)).save(other / "x.png")
    monkeypatch.chdir(tmp_path)
    tokenize_folder(tok, "imgs", out, 0.1, shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"folder:\S*imgs, not of folder:\S*other"):
        tokenize_folder(tok, other, out, 0.1, shard_size=4, progress=False)
    s = tokenize_folder(tok, folder.resolve(), out, 0.1, shard_size=4, progress=False)  # same folder, spelled otherwise
    assert (s.shards_written, s.shards_skipped) == (0, 3)


def test_a_manifest_of_the_earlier_version_resumes_from_anywhere(tok, folder, tmp_path, monkeypatch):
    """Earlier manifests kept the folder as typed (relative to where that run started)."""
    out = tmp_path / "tokens"
    tokenize_folder(tok, folder, out, 0.1, shard_size=4, progress=False)
    manifest = json.loads((out / "_manifest.json").read_text())
    (out / "_manifest.json").write_text(json.dumps(manifest | {"root": "imgs"}))
    monkeypatch.chdir(folder)  # "imgs" does not resolve to the folder from here
    s = tokenize_folder(tok, folder.resolve(), out, 0.1, shard_size=np.int64(4), progress=False)
    assert (s.shards_written, s.shards_skipped) == (0, 3)


def test_output_folder_reads_as_one_dataset_and_odd_names_are_kept(tok, folder, tmp_path):
    """A file name that is not UTF-8 is tokenized (its bytes escaped in ``path``), and the side
    files do not stop Arrow-based readers from opening the output folder itself."""
    odd = os.fsdecode(b"caf\xe9.png")
    Image.new("RGB", (20, 20), "red").save(folder / odd)
    out = tmp_path / "tokens"
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=5, progress=False)
    assert (s.images, s.failures) == (12, 1)
    table = pq.read_table(out)  # the folder as a dataset, as pandas.read_parquet(out) reads it
    assert table.num_rows == 12 and "caf\\xe9.png" in table.column("path").to_pylist()


def test_side_files_of_earlier_versions_are_renamed_on_resume(tok, folder, tmp_path):
    out = tmp_path / "tokens"
    tokenize_folder(tok, folder, out, 0.1, shard_size=4, progress=False)
    for side in [out / "_manifest.json", *out.glob("_errors-*.jsonl")]:
        side.rename(out / side.name[1:])  # as an earlier version named them
    s = tokenize_folder(tok, folder, out, 0.1, shard_size=4, progress=False)
    assert (s.shards_written, s.shards_skipped) == (0, 3)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("shard-")) == [
        "_errors-00001.jsonl", "_manifest.json"]


def test_empty_folder_path_is_not_the_current_directory(tok, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match="folder: needs a path"):
        tokenize_folder(tok, "", tmp_path / "tokens", 0.1, progress=False)
    assert not (tmp_path / "tokens").exists()


# ------------------------------------------------------------------ kolmotok decode
@pytest.fixture
def checkpoint(tmp_path, model, cfg):
    return save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})


def _pngs(folder) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_decode_writes_what_encode_writes(tmp_path, folder, checkpoint, capsys, monkeypatch):
    """tokenize -> decode gives encode --out's PNGs under encode's names, with the checkpoint the
    shards record (given by a relative path, decoded from elsewhere); shards decoded one by one
    land where the whole output puts them; so do encode --json --codes lines."""
    (folder / "a" / "img01.jpg").write_bytes((folder / "a" / "img01.png").read_bytes())  # same stem, other name
    monkeypatch.chdir(tmp_path)
    assert main(["tokenize", "--ckpt", "ck", "--data", "folder:imgs", "--out", "tokens", "--epsilon", "0.1",
                 "--shard-size", "4", "--no-progress"]) == 1  # broken.jpg: the rest done, not everything
    assert "1 unreadable files skipped, listed in tokens/_errors-*.jsonl" in capsys.readouterr().err
    monkeypatch.chdir(folder)
    tokens = tmp_path / "tokens"
    assert main(["decode", str(tokens), "--out", str(tmp_path / "dec"), "--batch-size", "3", "--no-progress"]) == 0
    assert "12 reconstructions written" in capsys.readouterr().out
    files = sorted(p for p in folder.rglob("img*"))
    assert main(["encode", "--ckpt", str(checkpoint), *map(str, files), "--epsilon", "0.1", "--json", "--codes",
                 "--out", str(tmp_path / "enc")]) == 0
    (tmp_path / "enc.jsonl").write_text(capsys.readouterr().out)
    expected = _pngs(tmp_path / "enc")
    assert "a/img01.png.recon.png" in expected and "a/img01.jpg.recon.png" in expected
    decoded = _pngs(tmp_path / "dec")
    assert decoded.keys() == expected.keys()
    assert all(np.array_equal(decoded[k], expected[k]) for k in expected)
    for shard in sorted(tokens.glob("shard-*.parquet")):
        assert main(["decode", str(shard), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    assert _pngs(tmp_path / "one").keys() == expected.keys()
    assert main(["decode", str(tmp_path / "enc.jsonl"), "--out", str(tmp_path / "js"), "--no-progress"]) == 0
    from_lines = _pngs(tmp_path / "js")
    assert from_lines.keys() == expected.keys() and all(np.array_equal(from_lines[k], expected[k]) for k in expected)


def test_decode_reports_bad_rows_and_files_and_writes_the_rest(tmp_path, checkpoint, capsys):
    good = {"tokens": 2, "codes": [[0.1] * 6, [0.2] * 6], "checkpoint": str(checkpoint)}
    lines = [json.dumps({"path": "good.png", **good}),
             json.dumps({"path": "nan.png", "tokens": 1, "codes": [[float("nan")] * 6]}),
             json.dumps({"path": "short.png", "tokens": 3, "codes": [[0.1] * 6]}),
             json.dumps({"path": "narrow.png", "tokens": 1, "codes": [[0.1] * 2]}),
             json.dumps({"path": "flags.png", "tokens": 1, "codes": [[True] * 6]}),
             json.dumps({"path": "none.png", "tokens": 1}),
             json.dumps({"path": "unreadable.png", "error": "not an image"}),
             json.dumps({"path": "good.png", **good}),  # the same path again: numbered, not overwritten
             json.dumps({"path": "last.png", **good})[:40]]  # an interrupted encode's cut-off last line
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    assert main(["decode", str(source), "--out", str(tmp_path / "d"), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["good.recon-2.png", "good.recon.png"]
    assert "2 reconstructions written" in out and "6 could not be decoded" in out and "1 repeat" in out
    reasons = [("line 2 (nan.png)", "NaN"), ("line 3 (short.png)", "1 codes for a length of 3"),
               ("line 4 (narrow.png)", "(T, 6)"), ("line 5 (flags.png)", "lists of 6 numbers"),
               ("line 6 (none.png)", "--codes"), ("line 9", "not a JSON object")]
    reported = [x for x in err.splitlines() if x.startswith("ERROR")]
    assert len(reported) == len(reasons)
    for message, (where, reason) in zip(reported, reasons):  # in file order
        assert f"{source} {where}: " in message and reason in message, (message, where)
    assert "unreadable" not in err  # encode already reported the input it could not read


def test_json_lines_are_named_as_encode_named_them_from_anywhere(tmp_path, folder, checkpoint, capsys,
                                                                 monkeypatch):
    """Names come from every path encode was given (unreadable ones too) and from its working
    directory, so decode run elsewhere names the files as encode --out did."""
    monkeypatch.chdir(folder)
    assert main(["encode", "--ckpt", str(checkpoint), "a/img01.png", "b/broken.jpg", "--json", "--codes",
                 "--out", str(tmp_path / "enc")]) == 1
    lines = capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path / "enc").as_posix() for p in (tmp_path / "enc").rglob("*.png")) == [
        "a/img01.recon.png"]
    monkeypatch.chdir(tmp_path)
    good = next(json.loads(x) for x in lines.splitlines() if "codes" in x)
    (tmp_path / "e.jsonl").write_text(lines + json.dumps({**good, "path": "a/x\0.png"}) + "\n")
    assert main(["decode", "e.jsonl", "--out", "dec", "--no-progress"]) == 1
    assert "line 3 (a/x\\x00.png): cannot write" in capsys.readouterr().err  # no file can have that name
    assert sorted(p.relative_to(tmp_path / "dec").as_posix() for p in (tmp_path / "dec").rglob("*.png")) == [
        "a/img01.recon.png"]


def test_a_damaged_shard_is_reported_and_the_others_decoded(tmp_path, folder, tok, checkpoint, capsys):
    out = tmp_path / "tokens"
    tokenize_folder(tok, folder, out, 0.1, shard_size=4, progress=False)
    damaged = out / "shard-00000.parquet"
    damaged.write_bytes(damaged.read_bytes()[:300])
    assert main(["decode", str(out), "--ckpt", str(checkpoint), "--out", str(tmp_path / "d"), "--no-progress"]) == 1
    assert "shard-00000.parquet: not a readable token shard" in capsys.readouterr().err
    assert len(list((tmp_path / "d").rglob("*.png"))) == 11 - 4
    assert main(["decode", str(damaged), "--ckpt", "shipped", "--out", str(tmp_path / "d")]) == 2
    assert "nothing to decode: " in capsys.readouterr().err
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    assert main(["decode", str(tmp_path / "other.parquet"), "--out", str(tmp_path / "d")]) == 2
    assert "not a kolmotok token shard (no codes, length, path column)" in capsys.readouterr().err


def test_decode_uses_the_exact_checkpoint_the_tokens_came_from(tmp_path, folder, capsys):
    """A run directory is recorded as the checkpoint it resolved to, so a later step of the run
    does not decode them; a missing checkpoint asks for --ckpt, another shape is refused."""
    run = tmp_path / "run"
    from conftest import small_config
    from kolmotok.training import train

    train(small_config("train.steps=1", "train.data=shapes", "train.eval_every=0"), run, progress=False)
    assert main(["tokenize", "--ckpt", str(run), "--data", f"folder:{folder}", "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 1  # broken.jpg
    meta = pq.read_schema(next((tmp_path / "t").glob("shard-*.parquet"))).metadata
    assert json.loads(meta[b"checkpoint_record"]) == str((run / "checkpoints" / "step_0000001").resolve())
    assert main(["decode", str(tmp_path / "t"), "--ckpt", str(run / "checkpoints" / "step_0000001"), "--out",
                 str(tmp_path / "d")]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "t"), "--ckpt", "shipped", "--out", str(tmp_path / "d")]) == 2
    assert "tokens of a model of another shape" in capsys.readouterr().err
    (run / "checkpoints" / "step_0000001").rename(tmp_path / "moved")
    assert main(["decode", str(tmp_path / "t"), "--out", str(tmp_path / "d")]) == 2
    assert "name it with --ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [("not json\n", "no JSON objects in it"), ("", "no token rows"),
                                            ('{"path": "a.png", "error": "x"}\n', "no token rows")])
def test_decode_refuses_what_is_not_tokens(tmp_path, content, match, capsys):
    source = tmp_path / "rows.jsonl"
    source.write_text(content)
    code = main(["decode", str(source), "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and match in err
    assert main(["decode", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "no shard-*.parquet files" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="file names of raw bytes")
def test_decode_names_undecodable_file_names_as_encode_does(tmp_path, tok):
    root = tmp_path / "imgs"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    tokenize_folder(tok, root, tmp_path / "t", 0.1, progress=False)
    assert kolmotok.read_tokens(tmp_path / "t").column("path").to_pylist() == ["caf\\xe9.png"]
    assert unescape_path("caf\\xe9.png") == name

    assert decode_files(tok, token_files(tmp_path / "t"), tmp_path / "d", progress=False).images == 1
    assert os.listdir(tmp_path / "d") == [os.fsdecode(b"caf\xe9.recon.png")]


def test_decode_reads_json_lines_from_standard_input(tmp_path, checkpoint, capsys, monkeypatch):
    import io

    image = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    assert main(["encode", "--ckpt", str(checkpoint), str(image), "--json", "--codes"]) == 0
    lines = capsys.readouterr().out + '{"path": "b.png", "codes": [[1, 2]]}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
    assert main(["decode", "-", "--out", str(tmp_path / "d"), "--no-progress"]) == 1
    assert "ERROR <stdin> line 2 (b.png): " in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "d").rglob("*.png")] == ["a.recon.png"]


def test_the_whole_output_is_summarised_with_the_promise_check(tok, folder, tmp_path, capsys):
    """Monitoring: after tokenize, the share meeting eps over every shard, and with a guarantee
    the binomial check of the promise on these images."""
    from kolmotok.calibration import promise_p_value
    from kolmotok.cli import format_output_stats
    from kolmotok.tokenize import output_stats

    out = tmp_path / "tokens"
    tokenize_folder(tok, folder, out, 0.2, shard_size=4, with_error=True, progress=False)
    l1 = kolmotok.read_tokens(out).column("l1").to_pylist()
    stats = output_stats(out, 0.2, None)
    assert (stats.images, stats.measured, stats.met) == (11, 11, sum(e <= 0.2 for e in l1))
    assert f"{100 * stats.met / 11:.1f}% met eps 0.2" in format_output_stats(stats, 0.2, None)
    # a guarantee promised for 40 images of which 30 met eps (a hand-made shard)
    made = tmp_path / "made"
    made.mkdir()
    pq.write_table(pa.table({"path": [f"{i}.png" for i in range(50)], "length": [3] * 50, "codes": [[1]] * 50,
                             "l1": [0.01] * 30 + [0.5] * 20, "guaranteed": [True] * 40 + [False] * 10}),
                   made / "shard-00000.parquet")
    # and a shard of an earlier version, without the guaranteed column: counted, but not in the promise check
    pq.write_table(pa.table({"path": ["x.png", "y.png"], "length": [1, 1], "codes": [[1]] * 2, "l1": [0.5, 0.5]}),
                   made / "shard-00001.parquet")
    stats = output_stats(made, 0.05, 0.9)
    assert (stats.images, stats.measured, stats.met, stats.promised, stats.promised_met) == (52, 52, 30, 40, 30)
    assert stats.promise_p_value == pytest.approx(promise_p_value(30, 40, 0.9))
    assert "ALARM" in format_output_stats(stats, 0.05, 0.9)
    assert "ALARM" not in format_output_stats(stats, 0.05, 0.9, verified=True)  # --verify re-encoded the misses
    assert format_output_stats(stats, 0.0, None).endswith("(fixed-length mode)")


def test_decode_of_nothing_decodable_exits_2(tmp_path, capsys):
    """Integer codes given to the continuous shipped model: every row is refused, so nothing was
    written and the status is 2, with a message that says what the codes look like."""
    lines = tmp_path / "codes.jsonl"
    lines.write_text(json.dumps({"path": "a.png", "codes": [1, 2, 3], "checkpoint": "shipped:tiny",
                                 "cwd": str(tmp_path)}) + "\n")
    assert main(["decode", str(lines), "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
    assert "plain numbers are the codes of a discrete (FSQ) model" in capsys.readouterr().err
