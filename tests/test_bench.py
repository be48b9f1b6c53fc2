"""Baselines through the shared Method interface, pass counting, codecs, and `kolmotok bench`."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import HALTING_TOY, halting_toy, small_config, smooth_images
from kolmotok.api import load
from kolmotok.checkpoint import save_checkpoint
from kolmotok.cli import main
from kolmotok.config import to_dict
from kolmotok.evaluation.bench import build_methods, check_claims, format_bench, run_bench
from kolmotok.evaluation.methods import CodecMethod, Method, MethodOutput, codec_roundtrip, shortest_meeting, to_uint8
from kolmotok.evaluation.metrics import l1_per_image
from kolmotok.models import KARLTokenizer


def _save_random(path, *overrides, model=None):
    cfg = small_config(*overrides)
    if model is None:
        torch.manual_seed(0)
        model = KARLTokenizer(cfg.model)
        model.init_linear_path(torch.rand(64, 3, 16, 16))
    save_checkpoint(path, model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    _save_random(root / "karl", *HALTING_TOY, model=halting_toy())  # a KARL model that halts
    base = root / "baselines"
    _save_random(base / "prefix", "objective.kind=prefix")
    _save_random(base / "recurrent", "objective.kind=recurrent", "model.recurrent_step=2")
    for n in (2, 8):
        _save_random(base / f"fixed{n}", "objective.kind=fixed", f"objective.fixed_length={n}")
    return root


@pytest.fixture(scope="module")
def methods(checkpoints):
    tok = load(checkpoints / "karl", device="cpu")
    return build_methods(["karl", "oracle", "prefix", "recurrent", "fixed", "png", "jpeg"], tok,
                         checkpoints / "baselines")


IMAGES = smooth_images(6, 3)


def test_every_method_through_the_shared_interface(methods):
    assert [m.name for m in methods] == ["karl", "oracle", "prefix", "recurrent", "png", "jpeg", "fixed-2", "fixed-8"]
    for m in methods:
        out = m.at_epsilon(IMAGES, 0.2)
        assert out.recon.shape == IMAGES.shape and 0 <= out.recon.min() and out.recon.max() <= 1
        assert out.size.shape == out.encoder_passes.shape == out.decoder_passes.shape == (6,)
        assert (out.encoder_passes >= 1).all() and (out.decoder_passes >= 1).all()
        if m.unit == "tokens":
            assert ((out.size >= 1) & (out.size <= 8)).all()
            torch.testing.assert_close(out.bits, out.size * m.tok.bits_per_token)


def test_guarantees_aliases_and_fixed_lengths_through_the_interface(checkpoints):
    tok = load(checkpoints / "karl", device="cpu")
    tok.calibrate(smooth_images(40, 8), alpha=0.2)
    karl, promised, checked, *codecs = build_methods(["karl", "karl@0.8", "karl@0.8+verify", "codecs"], tok, None)
    assert [m.name for m in (promised, checked, *codecs)] == ["karl@0.8", "karl@0.8+verify", "png", "jpeg", "webp"]
    a, b, c = (m.at_epsilon(IMAGES, 0.15) for m in (karl, promised, checked))
    assert (b.size >= a.size).all() and b.size.sum() > a.size.sum(), "the guarantee tightens the target"
    assert b.encoder_passes.eq(1).all() and b.decoder_passes.eq(1).all()
    assert (c.size >= b.size).all() and torch.equal(c.decoder_passes, c.encoder_passes + 1)
    for m in (karl, promised, checked):  # the fixed-length table: the same weights at exactly 4 tokens
        out = m.at_length(IMAGES, 4)
        assert out.size.eq(4).all() and out.encoder_passes.eq(1).all() and out.decoder_passes.eq(1).all()
        torch.testing.assert_close(out.recon, karl.at_length(IMAGES, 4).recon)


def test_karl_is_one_pass_and_fixed_keeps_its_length(methods):
    by = {m.name: m for m in methods}
    for eps in (0.01, 0.1, 0.15, 0.5):
        out = by["karl"].at_epsilon(IMAGES, eps)
        assert out.encoder_passes.eq(1).all() and out.decoder_passes.eq(1).all()
    assert len(by["karl"].at_epsilon(IMAGES, 0.15).size.unique()) > 2, "one pass, yet counts differ per image"
    assert by["fixed-2"].at_epsilon(IMAGES, 0.01).size.eq(2).all()
    assert by["fixed-2"].at_length(IMAGES, 8) is None and by["fixed-8"].at_length(IMAGES, 8) is not None


def test_binary_search_finds_shortest_and_counts_its_probes():
    images = torch.zeros(4, 3, 2, 2)
    need = torch.tensor([1, 5, 8, 100])  # image i is within eps from length need[i] (100: never)

    def probe(idx, lengths):  # error 0 once long enough, else 1
        return (lengths < need[idx]).float()[:, None, None, None].expand(-1, 3, 2, 2).clone()

    lengths, recon, probes = shortest_meeting(images, 0.5, 8, probe)
    assert lengths.tolist() == [1, 5, 8, 8]
    # full length first, then halving 1..8 takes 3 more; the hopeless image stops after 1
    assert probes.tolist() == [4, 4, 4, 1]
    assert l1_per_image(recon, images)[:3].eq(0).all()


def test_searches_that_stop_early_count_fewer_passes(methods):
    by = {m.name: m for m in methods}
    easy, hard = by["recurrent"].at_epsilon(IMAGES, 10.0), by["recurrent"].at_epsilon(IMAGES, 0.0)
    assert easy.encoder_passes.eq(1).all() and easy.decoder_passes.eq(1).all() and easy.size.eq(2).all()
    assert hard.encoder_passes.eq(4).all() and hard.size.eq(8).all()  # 8 tokens / 2 per rollout
    p_easy, p_hard = by["prefix"].at_epsilon(IMAGES, 10.0), by["prefix"].at_epsilon(IMAGES, 0.0)
    assert p_easy.encoder_passes.eq(1).all() and p_easy.decoder_passes.eq(4).all() and p_easy.size.eq(1).all()
    assert p_hard.decoder_passes.eq(1).all() and p_hard.size.eq(8).all()
    o = by["oracle"].at_epsilon(IMAGES, 10.0)
    assert torch.equal(o.encoder_passes, o.decoder_passes) and o.encoder_passes.eq(4).all()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.15])
def test_codecs_meet_epsilon_by_construction(fmt, eps):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    images[0] = 0.3  # flat
    out = CodecMethod(fmt).at_epsilon(images, eps)
    assert (l1_per_image(out.recon, images) <= eps).all()
    assert (out.size > 0).all() and torch.equal(out.bits, out.size * 8)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_lossy_codecs_pick_the_quality_below_which_eps_is_missed(fmt, eps):
    """On smooth images a lossy codec meets eps without falling back to PNG, at a quality q
    that meets eps where q - 1 misses it (what the binary search promises)."""
    images = smooth_images(3, 4, size=32, noise=0.1)
    out, png = CodecMethod(fmt).at_epsilon(images, eps), CodecMethod("png").at_epsilon(images, eps)
    assert (out.size < png.size).all()
    for image, recon, size in zip(images, out.recon, out.size.tolist()):
        tries = [codec_roundtrip(to_uint8(image), fmt.upper(), q) for q in range(1, 101)]
        q = next(q for q, (r, n) in enumerate(tries, 1) if n == size and torch.equal(r, recon))
        assert float((tries[q - 1][0] - image).abs().mean()) <= eps
        assert q == 1 or float((tries[q - 2][0] - image).abs().mean()) > eps


def test_lossy_codecs_spend_fewer_bytes_on_a_looser_target():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    tight, loose = CodecMethod("jpeg").at_epsilon(images, 0.03), CodecMethod("jpeg").at_epsilon(images, 0.2)
    assert (loose.size <= tight.size).all() and loose.size.sum() < tight.size.sum()


def test_unknown_method_and_missing_baselines_are_clear(checkpoints):
    tok = load(checkpoints / "karl", device="cpu")
    with pytest.raises(ValueError, match="unknown method"):
        build_methods(["karl", "magic"], tok, None)
    with pytest.raises(ValueError, match="baselines"):
        build_methods(["prefix"], tok, None)
    with pytest.raises(ValueError, match="no calibration"):
        build_methods(["karl@0.9"], tok, None)
    for bad in ("karl+fast", "karl@high"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            build_methods([bad], tok, None)


def test_verified_karl_counts_its_extra_passes(checkpoints):
    """karl+verify: one check decode per image, plus one encoder and one decoder pass per
    re-encoding of an image that missed; it never meets eps on fewer images than karl."""
    tok = load(checkpoints / "karl", device="cpu")
    plain, checked = build_methods(["karl", "karl+verify"], tok, None)
    eps = float(l1_per_image(plain.at_length(IMAGES, 8).recon, IMAGES).max()) + 1e-4  # the full budget meets it
    a, b = plain.at_epsilon(IMAGES, eps), checked.at_epsilon(IMAGES, eps)
    missed = l1_per_image(a.recon, IMAGES) > eps
    assert missed.any() and not missed.all(), "some images miss after the single pass, some do not"
    assert torch.equal(b.encoder_passes > 1, missed) and torch.equal(b.decoder_passes, b.encoder_passes + 1)
    assert (l1_per_image(b.recon, IMAGES) <= eps).all() and (b.size >= a.size).all()


def test_bench_table_and_claims(methods):
    from kolmotok.data import EvalSet

    res = run_bench(methods, EvalSet("random", IMAGES), [0.05, 0.3], 8, progress=False, timing_rounds=3)
    karl = [r for r in res.rows if r.method == "karl"]
    assert len(res.rows) == len(methods) * 2 and all(r.wall_ratio_to_karl is not None for r in res.rows)
    assert all(len(r.wall_ms_rounds) == 3 and r.wall_ms_per_image == sorted(r.wall_ms_rounds)[1] for r in res.rows)
    assert all(r.encoder_passes == 1 and r.decoder_passes == 1 for r in karl)
    assert all((r.flops_per_image or 0) > 0 for r in res.rows if r.unit == "tokens")
    assert all(r.flops_per_image is None for r in res.rows if r.unit == "bytes")
    assert {(r.method, r.tokens) for r in res.length_rows} >= {("karl", 8), ("fixed-2", 2), ("prefix", 1)}
    # the other methods and the printed table keep the grid; KARL's weights add the lengths a binary
    # search between grid lengths probes (checked in test_own_shortest_fixed_length_is_searched_between_the_grid)
    assert sorted(r.tokens for r in res.length_rows if r.method == "prefix") == [1, 2, 4, 8]
    assert {1, 2, 4, 8} <= {r.tokens for r in res.length_rows if r.method == "karl"}
    assert all(f"{n:4d} tokens" not in format_bench(res) for n in (3, 5, 6, 7))
    # the claims are recomputed from the rows, so doctoring a row changes the verdict
    first = next(c for c in check_claims(res) if c["claim"].startswith("KARL: 1 encoder"))
    assert first["status"] == "PASS"
    karl[0].decoder_passes = 2.0
    assert next(c for c in check_claims(res) if c["claim"].startswith("KARL: 1 encoder"))["status"] == "FAIL"


def test_fixed_length_claims_come_from_per_image_errors():
    from kolmotok.evaluation.bench import BenchResult, LengthRow, Row

    def row(method, size, share):
        return Row(method, "tokens", 0.1, size, size, size, share, 0.05, 30.0, 0.9, 1, 1, 1.0, 1.0, None)

    lengths = [LengthRow("karl", n, 0.0, 0.0, 0.0, errors=[0.05] * (n // 2) + [0.2] * (8 - n // 2))
               for n in (2, 4, 8, 16)]  # n tokens: n/2 of 8 images within 0.1 -> only 16 meets it on >= 90%
    res = BenchResult("x", 8, 16, [0.1], [row("karl", 10.0, 0.9), row("fixed-8", 8.0, 0.95),
                                         row("fixed-4", 4.0, 0.5)], lengths)
    claims = {c["claim"]: c for c in check_claims(res)}
    base = claims["eps=0.1: KARL uses >= 25% fewer tokens than the shortest fixed-length baseline meeting eps on 90%"]
    own = claims["eps=0.1: KARL uses >= 25% fewer tokens than KARL's own shortest fixed length meeting eps on 90%"]
    assert base["status"] == "FAIL" and "fixed-8 (95.0% meet): 25% more" in base["measured"]
    assert own["status"] == "PASS" and "karl fixed-16 (100.0% meet): 38% fewer" in own["measured"]
    for r in lengths:  # --methods oracle,karl: the shared weights' rows are listed under "oracle"
        r.method = "oracle"
    assert {c["claim"]: c for c in check_claims(res)}[own["claim"]] == own


def test_guarantee_claims_judge_the_single_pass_only():
    from kolmotok.evaluation.bench import BenchResult, Row

    def row(method, size, share):
        return Row(method, "tokens", 0.1, size, size, size, share, 0.05, 30.0, 0.9, 1, 1, 1.0, 1.0, None)

    res = BenchResult("x", 8, 16, [0.1], [row("karl", 3.0, 0.85), row("oracle", 3.0, 1.0),
                                         row("karl@0.9", 4.0, 0.93), row("karl@0.9+verify", 3.2, 1.0)], [])
    judged = {c["claim"]: c["status"] for c in check_claims(res) if "karl@" in c["claim"]}
    assert judged == {"karl@0.9 at eps=0.1: meets eps on >= 88%": "PASS",
                      "karl@0.9 at eps=0.1: mean tokens <= 1.25x oracle": "FAIL"}


def test_operating_range_comes_from_the_full_budget_with_or_without_the_oracle():
    from kolmotok.evaluation.bench import BenchResult, LengthRow, Row

    def row(method, share):
        return Row(method, "tokens", 0.1, 16.0, 16.0, 16.0, share, 0.05, 30.0, 0.9, 1, 1, 1.0, 1.0, None)

    full = [LengthRow("karl", 16, 0.0, 0.0, 0.0, errors=[0.05] * 4 + [0.2] * 4)]  # T_max meets 0.1 on half
    for rows in ([row("karl@0.9", 0.5)], [row("karl@0.9", 0.5), row("oracle", 0.5)]):
        claims = [c for c in check_claims(BenchResult("x", 8, 16, [0.1], rows, full)) if "karl@" in c["claim"]]
        assert [(c["status"], c["measured"]) for c in claims] == [("n/a", "full budget meets eps on 50.0% (< 95%)")]


def test_cli_bench_quick_writes_results_and_figures(checkpoints, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "--ckpt", str(checkpoints / "karl"), "--data", "shapes", "--epsilons", "0.05,0.1",
               "--methods", "karl,oracle,prefix,recurrent,fixed,png", "--baselines", str(checkpoints / "baselines"),
               "--quick", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["num_images"] == 16 and {r["method"] for r in res["rows"]} >= {"karl", "oracle", "fixed-8", "png"}
    for fig in ("rate_distortion", "tokens_vs_epsilon", "count_histograms", "karl_vs_oracle", "examples"):
        assert (out / f"{fig}.png").stat().st_size > 1000
    assert "claims" in capsys.readouterr().out
    # per-image latency: one image per call; the results are the same, only the timing differs
    rc = main(["bench", "--ckpt", str(checkpoints / "karl"), "--data", "shapes", "--epsilons", "0.1",
               "--methods", "karl,oracle", "--quick", "--batch-size", "1", "--device", "cpu"])
    assert rc == 0 and "batch 1;" in capsys.readouterr().out


def test_cli_bench_replaces_its_output_as_a_whole_and_refuses_what_it_cannot_do(checkpoints, tmp_path, capsys):
    ck, base = str(checkpoints / "karl"), str(checkpoints / "baselines")
    out = tmp_path / "b"
    common = ["bench", "--ckpt", ck, "--data", "shapes", "--quick", "--device", "cpu"]
    assert main(common + ["--epsilons", "0.1", "--methods", "karl,oracle", "--out", str(out)]) == 0
    assert (out / "karl_vs_oracle.png").is_file()
    # a second run without the oracle: no scatter left over from the first, one row per method
    assert main(common + ["--epsilons", "0.1", "--methods", "karl,karl,png", "--num-images", "0",
                          "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shapes: 16 images" in text and not (out / "karl_vs_oracle.png").exists()
    assert [r["method"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["karl", "png"]
    (out / "notes.txt").write_text("mine")
    for argv, said in [(["--epsilons", "0.1", "--out", str(out)], "holds other files (notes.txt)"),
                       (["--epsilons", "0,0.1"], "targets above 0"),
                       (["--epsilons", "0.1", "--ckpt", str(checkpoints / "baselines" / "prefix")],
                        "a 'prefix' baseline, not a KARL model")]:
        assert main(common + argv) == 2
        assert said in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    os.chdir(tmp_path)  # (restored below) the working directory cannot be replaced
    try:
        assert main(common + ["--epsilons", "0.1", "--out", "."]) == 2
    finally:
        os.chdir(Path(__file__).parent)
    assert "the working directory is in it" in capsys.readouterr().err
    assert main(["calibrate", "--ckpt", base + "/fixed2", "--data", "shapes", "--device", "cpu"]) == 2
    assert "a 'fixed' baseline" in capsys.readouterr().err


def test_own_shortest_fixed_length_is_searched_between_the_grid():
    """measure_lengths finds, per eps, the shortest length meeting eps on 90% of images with a binary
    search between grid lengths, and measures only the lengths that search needs."""
    from kolmotok.evaluation.bench import measure_lengths

    class Fake(Method):  # image i is reconstructed within eps from length need[i] on
        name = "karl"

        def __init__(self, need):
            self.need, self.asked = torch.tensor(need), []

        def at_length(self, images, n):
            self.asked.append(n)
            err = torch.where(self.need[: len(images)] <= n, 0.0, 0.5)  # (batch >= 10: no chunks)
            ones = torch.ones(len(images), dtype=torch.long)
            return MethodOutput(images + err[:, None, None, None], torch.full((len(images),), float(n)),
                                torch.zeros(len(images)), ones, ones)

    images = torch.zeros(10, 3, 8, 8)  # (SSIM's window is 7 pixels)
    need = [1, 2, 3, 5, 9, 10, 11, 11, 11, 20]  # 90% meet from length 11 on; 50% from 5 on
    fake = Fake(need)
    rows = measure_lengths([fake], images, [4, 8, 16, 32], [0.1], batch=16, progress=False)
    by = {r.tokens: r.meet_share(0.1) for r in rows}
    assert min(n for n, share in by.items() if share >= 0.9) == 11
    assert sorted(set(fake.asked) - {4, 8, 16, 32}) == [10, 11, 12]  # (8, 16): 12, 10, 11 -- not all of 9..15

