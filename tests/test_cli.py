"""CLI smoke tests: train, encode, eval, demo, and clear errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_TEST
from kolmotok.cli import main
from kolmotok.data.images import reconstruction_paths


def _set_args(extra=()):
    out = []
    for s in TINY_TEST + list(extra):
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), "--steps", "3", "--data", "shapes", "--no-progress"] + _set_args()) == 0
    return run


def test_train_writes_checkpoint_and_metrics(run_dir):
    assert (run_dir / "config.json").is_file()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "l1", "kept", "images_per_s"} <= set(rows[0])
    assert (run_dir / "checkpoints" / "step_0000003" / "model.safetensors").is_file()


def test_resume_keeps_the_runs_own_settings(tmp_path, capsys):
    """--resume without --steps continues the run as it was (not with the preset's 4000 steps);
    a flag that would change what the run learns is refused, naming the setting."""
    run = tmp_path / "run"
    base = ["train", "--out", str(run), "--data", "shapes", "--no-progress", "--batch-size", "4"] + _set_args()
    assert main(base + ["--steps", "2"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # already done: nothing to train
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 2
    assert main(["train", "--preset", "tiny", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]
                + _set_args()) == 0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--batch-size", "8"]) == 2
    assert "train.batch_size 4 -> 8" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny-fixed8", "--out", str(run), "--resume", "--steps", "4"] + _set_args()) == 2
    assert "objective.kind 'karl' -> 'fixed'" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--init-from", "shipped"]) == 2
    assert "train.init_from '' -> 'shipped'" in capsys.readouterr().err


def test_fine_tune_the_shipped_model(tmp_path):
    """--init-from shipped: the shipped model's halting MLP and eps term come along (one step)."""
    out = tmp_path / "ft"
    assert main(["train", "--init-from", "shipped", "--data", "shapes", "--out", str(out), "--steps", "1",
                 "--batch-size", "2", "--set", "train.eval_every=0", "--no-progress"]) == 0
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["halting_hidden"] == 64 and model["halting_epsilon_gain"] > 0


def test_encode_json_and_corrupt_file(run_dir, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray((np.random.rand(24, 24, 3) * 255).astype(np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    rc = main(["encode", str(good), str(bad), "--ckpt", str(run_dir), "--device", "cpu", "--json", "--codes",
               "--out", str(tmp_path / "rec")])
    assert rc == 1  # the good file is processed; the status says one input failed
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    ok = [r for r in rows if "tokens" in r]
    err = [r for r in rows if "error" in r]
    assert len(ok) == 1 and 1 <= ok[0]["tokens"] <= 8 and len(ok[0]["codes"]) == ok[0]["tokens"]
    assert (tmp_path / "rec" / "good.recon.png").is_file()
    assert len(err) == 1 and "bad.jpg" in err[0]["error"]
    # nothing readable at all: status 2, as tokenize and decode
    assert main(["encode", str(bad), str(tmp_path / "missing.png"), "--ckpt", str(run_dir), "--device", "cpu"]) == 2
    assert "2 of 2 inputs could not be read" in capsys.readouterr().err


def test_eval_checks_its_options_before_reading_images(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    for flags, message in ((["--epsilons", "0.05,1.5"], "epsilon must be in [0, 1]"),
                           (["--guarantee", "0.5"], "no calibration for guarantee 0.5")):
        assert main(["eval", "--data", f"folder:{tmp_path}", "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "bad.png" not in err


def test_encode_batches_and_distinct_outputs(run_dir, tmp_path, capsys):
    """Inputs sharing a name (other folder, other extension) get their own reconstruction files,
    across several batches."""
    names = ["a/x.png", "b/x.png", "b/x.jpg", "b/y.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray((np.random.rand(20, 20, 3) * 255).astype(np.uint8)).save(tmp_path / name)
    rc = main(["encode", *(str(tmp_path / n) for n in names), "--ckpt", str(run_dir), "--device", "cpu",
               "--json", "--batch-size", "3", "--out", str(tmp_path / "rec")])
    assert rc == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).relative_to(tmp_path).as_posix() for r in rows] == names
    written = sorted(p.relative_to(tmp_path / "rec").as_posix() for p in (tmp_path / "rec").rglob("*.png"))
    assert written == ["a/x.recon.png", "b/x.jpg.recon.png", "b/x.png.recon.png", "b/y.recon.png"]
    assert sorted(Path(r["reconstruction"]).relative_to(tmp_path / "rec").as_posix() for r in rows) == written


def test_encode_names_a_linked_input_after_the_link(tmp_path):
    (tmp_path / "blobs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "blobs" / "0f3a9c", format="PNG")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat.png").symlink_to(tmp_path / "blobs" / "0f3a9c")
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "dog.png")
    paths = reconstruction_paths([tmp_path / "data" / "cat.png", tmp_path / "data" / "dog.png"], tmp_path / "rec")
    assert paths == [tmp_path / "rec" / "cat.recon.png", tmp_path / "rec" / "dog.recon.png"]


def test_encode_with_guarantee_and_verify(tmp_path, capsys):
    """The shipped checkpoint carries a calibration for guarantee 0.9; other guarantees are refused."""
    img = tmp_path / "img.png"
    Image.fromarray((np.random.rand(32, 32, 3) * 255).astype(np.uint8)).save(img)
    rc = main(["encode", str(img), "--epsilon", "0.08", "--guarantee", "0.9", "--verify", "--json", "--device", "cpu"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)
    assert row["guarantee"] == 0.9 and row["guaranteed"] is True and 1 <= row["tokens"] <= 32
    # noise misses eps with every token: verification has nothing tighter to try
    assert row["meets_epsilon"] is False and row["tokens"] == 32 and row["reencoded"] == 0
    assert main(["encode", str(img), "--guarantee", "0.5", "--device", "cpu"]) == 2
    assert "no calibration for guarantee 0.5" in capsys.readouterr().err


def test_encode_explain_gives_each_image_its_error_curve(tmp_path, capsys):
    """Shipped model, a flat image and a photo crop: the curve's entry at the kept length is the
    l1 reported, and the shortest prefix meeting eps is the first curve entry within it."""
    from kolmotok.data import eval_set
    from kolmotok.data.images import save_image

    save_image(eval_set("photos:test", 32, 2).images[1], tmp_path / "photo.png")
    Image.new("RGB", (32, 32), (40, 90, 200)).save(tmp_path / "flat.png")
    files = [str(tmp_path / "flat.png"), str(tmp_path / "photo.png")]
    assert main(["encode", *files, "--explain", "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row in rows:
        curve = row["error_curve"]
        assert len(curve) == 32 and curve[row["tokens"] - 1] == pytest.approx(row["l1"], abs=1e-5)
        assert row["shortest_meeting"] == next(t for t, v in enumerate(curve, 1) if v <= 0.05)
    assert rows[0]["tokens"] == rows[0]["shortest_meeting"] == 1 and rows[1]["shortest_meeting"] > 1
    assert main(["encode", *files, "--explain", "--device", "cpu"]) == 0
    assert "1 would meet eps" in capsys.readouterr().out


def test_encode_rejects_bad_flags_before_reading(tmp_path, capsys):
    """A bad flag is reported as such (status 2) even when the inputs are unreadable too."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    for flags, message in ((["--epsilon", "-1"], "epsilon must be in [0, 1]"),
                           (["--epsilon", "1.5"], "epsilon must be in [0, 1]"),
                           (["--budget", "99"], "budget must be an integer in 1..32"),
                           (["--guarantee", "0.5"], "no calibration for guarantee 0.5")):
        assert main(["encode", str(bad), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "bad.png" not in err


def test_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.02,0.03,0.05,0.08,0.12)" in text and "(default: photos:test)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_encode_in_fixed_length_mode_has_no_target_to_miss(run_dir, tmp_path, capsys):
    Image.new("RGB", (20, 20), "gray").save(tmp_path / "a.png")
    assert main(["encode", str(tmp_path / "a.png"), "--ckpt", str(run_dir), "--epsilon", "0", "--budget", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4/4 tokens" in out and "fixed-length mode" in out and "misses" not in out


def test_info_and_version(run_dir, capsys):
    assert main(["info", "--ckpt", str(run_dir), "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_tokens"] == 8 and info["steps_in_last_run"] == 3 and info["calibrations"] == []
    assert info["parameters"] > 0 and info["objective"] == "karl" and info["checkpoint"].endswith("step_0000003")
    assert info["halting_refit"] is None
    assert main(["info", "--ckpt", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "halting refit: -\n" in out and "initialised from: -\n" in out and "None" not in out
    assert main(["info", "--device", "cpu"]) == 0  # the shipped checkpoint, with its calibration
    out = capsys.readouterr().out
    assert "calibration: guarantee 0.9 on 512 images (photos:calib)" in out
    assert "halting refit: from runs/ft4, 3000 steps on 3072 images of photos@3+shapes@1+shapes:gradient@0.5" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("kolmotok 0.")


def test_eval_with_guarantee_reports_the_promise(capsys):
    rc = main(["eval", "--data", "shapes:noise", "--num-images", "24", "--epsilons", "0.03,0.12", "--guarantee", "0.9",
               "--device", "cpu", "--json"])
    assert rc == 0
    rows = {r["epsilon"]: r for r in json.loads(capsys.readouterr().out)["epsilon_rows"]}
    assert rows[0.03]["promised"] is False and rows[0.03]["promise_p_value"] is None
    # pure noise is unlike the calibration photos: nothing reaches 0.12, and the check says so
    assert rows[0.12]["promised"] is True and rows[0.12]["meet_share"] == 0 and rows[0.12]["promise_p_value"] < 1e-9


def test_eval_json(run_dir, capsys, tmp_path):
    rc = main(["eval", "--ckpt", str(run_dir), "--device", "cpu", "--data", "shapes", "--num-images", "12",
               "--epsilons", "0.05,0.1", "--json", "--per-image", str(tmp_path / "per.csv")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert [r["epsilon"] for r in rep["epsilon_rows"]] == [0.05, 0.1]
    assert rep["num_images"] == 12 and rep["budget_rows"][-1]["budget"] == 8
    lines = (tmp_path / "per.csv").read_text().splitlines()
    assert lines[0].endswith("tokens@0.1,l1@0.1,meets@0.1") and len(lines) == 13 == len(rep["images"]) + 1


def test_eval_by_source_names_the_test_photographs(run_dir, capsys):
    from kolmotok.data.photos import SPLITS

    rc = main(["eval", "--ckpt", str(run_dir), "--device", "cpu", "--data", "photos:test", "--num-images", "12",
               "--epsilons", "0.05", "--by-source", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["by_source"]
    assert {r["source"] for r in rows} <= set(SPLITS["test"]) and sum(r["num_images"] for r in rows) == 12


def test_demo_on_shipped_checkpoint(tmp_path, capsys):
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [re.match(r"(.+?)\s+(\d+)\s+([\d.]+)\s+(yes|no)$", line) for line in out.splitlines()]
    table = {m[1]: (int(m[2]), float(m[3]), m[4] == "yes") for m in rows if m}
    assert len(table) >= 10 and {"flat", "noise", "gradient"} <= set(table)
    counts = [n for n, _, _ in table.values()]
    assert counts == sorted(counts), "the table is sorted by tokens kept"
    assert table["flat"][0] <= 0.1 * 32 and table["noise"][0] >= 0.9 * 32
    assert all(met == (l1 <= 0.05) for _, l1, met in table.values()), "'meets eps' says whether l1 <= 0.05"
    assert Image.open(tmp_path / "demo.png").size[0] > 100


def test_bad_outputs_and_numbers_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for argv, said in [(["eval", "--data", "shapes", "--out", str(tmp_path / "afile" / "r.json")], "afile' is a file"),
                       (["eval", "--data", "shapes", "--out", str(tmp_path)], "exists and is a directory"),
                       (["demo", "--out", str(tmp_path / "afile")], "afile' exists and is a file")]:
        assert main(argv + ["--device", "cpu"]) == 2
        assert said in capsys.readouterr().err
    for argv, said in [(["calibrate", "--alpha", "nan"], "--alpha 'nan'"), (["eval", "--epsilons", "inf"], "finite"),
                       (["bench", "--methods", ","], "--methods"), (["encode", "a.png", "--batch-size", "0"],
                                                                   "--batch-size '0'")]:
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err


def test_codes_come_in_json_lines_only(tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["encode", str(tmp_path / "a.png"), "--codes", "--device", "cpu"]) == 2
    assert "give --json as well" in capsys.readouterr().err


def test_repeated_numbers_are_taken_once():
    from kolmotok.cli import comma_numbers

    assert comma_numbers("--epsilons")("0.12,0.05,0.05,,0.12,0.050000001") == [0.12, 0.05]


def test_clear_errors(tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "model.nosuch=1"]) == 2
    assert "nosuch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--epsilons", "a,b"])


def test_an_unknown_argument_is_named_with_its_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--methods", "karl"])
    assert exit_.value.code == 2 and "kolmotok eval: error: unrecognized arguments: --methods karl" \
        in capsys.readouterr().err
