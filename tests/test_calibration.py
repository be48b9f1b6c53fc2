"""Split-conformal calibration: promised coverage on synthetic data with a known answer, and its API/CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import smooth_images
from kolmotok.api import Tokenizer, load
from kolmotok.calibration import calibrate_errors, conformal_threshold, load_calibrations, promise_p_value
from kolmotok.cli import main
from kolmotok.evaluation.metrics import l1_per_image

CONDITIONS = np.array([0.0, *np.geomspace(0.002, 0.3, 30)])


def synthetic_errors(n, seed):
    """Image i with difficulty d_i reaches l1 = d_i * (1 + 20 c) at condition c (looser -> worse)."""
    d = np.random.default_rng(seed).lognormal(np.log(0.02), 0.6, n)
    return d[None, :] * (1 + 20 * CONDITIONS[:, None])


def test_calibration_keeps_eps_itself_when_no_tightening_is_needed():
    """Every calibrated eps is a grid condition; where the calibration images all meet eps at
    condition eps, the calibration keeps it instead of rounding down to a tighter grid point."""
    from kolmotok.calibration import CONDITION_GRID, EPSILON_GRID

    assert set(EPSILON_GRID) <= set(CONDITION_GRID) and {0.05, 0.08, 0.12} <= set(EPSILON_GRID)
    conditions = np.array(CONDITION_GRID)
    errors = np.tile(0.5 * conditions[:, None], (1, 50))  # error half the condition: always met
    cal = calibrate_errors(errors + 0.001, conditions, 0.1, "synthetic", epsilons=[0.05, 0.08, 0.12])
    assert cal.conditions == [0.05, 0.08, 0.12] and all(cal.attainable)


def test_lookup_finds_a_requested_grid_eps_itself():
    """encode holds eps in float32; a request of exactly a grid eps must use that entry."""
    from kolmotok.calibration import Calibration

    cal = Calibration(0.1, "x", 10, [0.05, 0.077, 0.08, 0.12], [0.04, 0.06, 0.07, 0.1], [True] * 4)
    cond, ok = cal.lookup(torch.tensor([0.08, 0.12, 0.0799, 0.2, 0.01], dtype=torch.float32))
    assert cond.tolist() == pytest.approx([0.07, 0.1, 0.06, 0.1, 0.0]) and ok.tolist() == [True] * 4 + [False]


def test_promise_p_value_is_the_binomial_tail():
    from math import comb

    for met, n, g in [(7, 10, 0.9), (0, 5, 0.5), (10, 10, 0.9), (180, 200, 0.95)]:
        exact = sum(comb(n, i) * g**i * (1 - g) ** (n - i) for i in range(met + 1))
        assert promise_p_value(met, n, g) == pytest.approx(min(1.0, exact), rel=1e-9)
    with pytest.raises(ValueError, match="met"):
        promise_p_value(11, 10, 0.9)


def test_promise_check_flags_shifted_data_only():
    """Monitoring: fresh images like the calibration ones are consistent with the promise;
    images twice as hard are flagged."""
    cal = calibrate_errors(synthetic_errors(400, 0), CONDITIONS, 0.1, "synthetic", epsilons=[0.08])
    col = int(np.searchsorted(CONDITIONS, cal.conditions[0]))
    same, harder = synthetic_errors(300, 2)[col], 2 * synthetic_errors(300, 3)[col]
    assert promise_p_value(int((same <= 0.08).sum()), 300, cal.guarantee) > 0.05
    assert promise_p_value(int((harder <= 0.08).sum()), 300, cal.guarantee) < 1e-6


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_coverage_on_synthetic_data(alpha):
    cal = calibrate_errors(synthetic_errors(400, 0), CONDITIONS, alpha, "synthetic", epsilons=[0.05, 0.065, 0.08])
    fresh = synthetic_errors(20000, 1)
    for eps, cond, ok in zip(cal.epsilons, cal.conditions, cal.attainable):
        assert ok and 0 < cond <= eps
        col = int(np.searchsorted(CONDITIONS, cond))
        coverage = (fresh[col] <= eps).mean()
        # the promise, and not a vacuous one: close to 1 - alpha, not ~100%
        assert 1 - alpha - 0.02 <= coverage <= 1 - alpha + 0.05, (eps, cond, coverage)


def test_unattainable_target_uses_the_full_budget_and_says_so():
    cal = calibrate_errors(synthetic_errors(400, 0), CONDITIONS, 0.1, "synthetic", epsilons=[0.005, 0.05])
    assert cal.attainable == [False, True] and cal.conditions[0] == 0.0
    cond, ok = cal.lookup(torch.tensor([0.005, 0.05, 0.06, 0.001]))
    assert ok.tolist() == [False, True, True, False]
    assert cond[0] == 0 and cond[2] == cond[1] and cond[3] == 0  # between grid points: the one below


def test_too_few_calibration_images_is_an_error():
    assert conformal_threshold(np.arange(9.0), 0.1) == 0.0  # j = floor(0.1 * 10) = 1 -> the smallest
    with pytest.raises(ValueError, match="at least 9"):
        conformal_threshold(np.arange(5.0), 0.1)


@pytest.fixture
def tok(model) -> Tokenizer:
    return Tokenizer(model)


def test_too_few_images_fail_before_any_measuring(tok, monkeypatch):
    import kolmotok.api

    def fail(*args, **kwargs):
        raise AssertionError("measured although the images are too few")

    monkeypatch.setattr(kolmotok.api, "measure_conditions", fail)
    with pytest.raises(ValueError, match="at least 99"):
        tok.calibrate(torch.rand(5, 3, 16, 16), alpha=0.01)


def test_encode_with_guarantee_and_verify(halting_model):
    """On a model whose single pass keeps one token too few (conftest.halting_toy), the
    guarantee tightens the condition and held-out images then meet eps as promised;
    verification re-encodes the misses until each meets eps or keeps the whole budget."""
    tok, eps = Tokenizer(halting_model), 0.15
    calib, test = smooth_images(60, 11), smooth_images(200, 12)
    with pytest.raises(ValueError, match="no calibration for guarantee 0.8"):
        tok.encode(test, eps, guarantee=0.8)
    cal = tok.calibrate(calib, alpha=0.2, data="smooth")
    assert cal.num_images == 60 and cal.guarantee == pytest.approx(0.8)
    with pytest.raises(ValueError, match="guarantee must be"):
        tok.encode(test, eps, guarantee=1.5)

    def met(enc):
        return l1_per_image(tok.decode(enc), test) <= eps

    plain, promised = tok.encode(test, eps), tok.encode(test, eps, guarantee=0.8)
    assert promised.guarantee == 0.8 and promised.guaranteed.all()
    assert torch.equal(promised.condition, cal.lookup(promised.epsilon)[0]) and (promised.condition < eps).all()
    assert met(plain).float().mean() < 0.7, "the single pass misses often here: the guarantee has work to do"
    assert met(promised).float().mean() >= 0.8 and (promised.lengths >= plain.lengths).all()
    capped = tok.encode(test, eps, budget=2, guarantee=0.8)  # calibrated with all 8 tokens: no promise at 2
    assert not capped.guaranteed.any() and met(capped).float().mean() < 0.8

    checked = tok.encode(test, eps, verify=True)
    again = checked.reencoded > 0
    assert torch.equal(again, ~met(plain) & (plain.lengths < 8)) and checked.num_reencoded == int(again.sum()) > 10
    assert (met(checked) | (checked.lengths == 8)).all(), "after verification: eps met or every token kept"
    assert (checked.lengths[again] > plain.lengths[again]).all() and (checked.condition[again] < eps).all()
    assert torch.equal(checked.tokens[~again], plain.tokens[~again])
    # with a budget of one token every image already keeps the whole budget: nothing to re-encode
    one = tok.encode(test, 0.001, budget=1, verify=True)
    assert (one.lengths == 1).all() and (one.reencoded == 0).all()


def test_guarantees_given_as_float32_or_tensors_find_their_calibration(tok, tmp_path):
    calib = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    tok.calibrate(calib, alpha=np.float32(0.2))
    assert list(tok.calibrations) == [0.2]  # stored as 0.2, not 0.20000000298...
    for g in (0.8, np.float32(0.8), torch.tensor(0.8), torch.tensor(0.8, dtype=torch.float64)):
        assert tok.encode(calib[:2], 0.3, guarantee=g).guarantee == 0.8
    with pytest.raises(ValueError, match="guarantee must be"):
        tok.encode(calib[:2], 0.3, guarantee=torch.tensor([0.8]))
    with pytest.raises(ValueError, match="alpha must be a miss rate"):
        tok.calibrate(calib, alpha=0.99999999)  # rounds to 1: not a miss rate
    old = json.loads((tok.save_calibration(tmp_path / "old")).read_text())
    old["calibrations"][0]["alpha"] = float(np.float32(0.2))  # as files of earlier versions stored it
    (tmp_path / "old" / "calibration.json").write_text(json.dumps(old))
    assert list(load_calibrations(tmp_path / "old")) == [0.2]
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(ValueError, match="a file; give the checkpoint directory"):
        tok.save_calibration(tmp_path / "calibration.json")


def test_cli_calibrate_stores_it_with_the_checkpoint(tmp_path, model, cfg, capsys):
    from kolmotok.checkpoint import save_checkpoint
    from kolmotok.config import to_dict

    ck = save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})
    rc = main(["calibrate", "--ckpt", str(ck), "--data", "shapes", "--num-images", "40", "--alpha", "0.1,0.25",
               "--epsilons", "0,0.005,0.1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "eps 0.1    -> condition" in out
    assert "eps 0      -> condition 0.0000  (fixed-length mode" in out
    assert "eps 0.005  -> condition 0.0000  (below the calibrated range, which starts at 0.0102" in out
    assert sorted(load_calibrations(ck)) == [0.1, 0.25]
    tok = load(ck, device="cpu")
    assert tok.encode(torch.rand(2, 3, 16, 16), 0.1, guarantee=0.75).guarantee == 0.75


def test_save_calibration_goes_beside_the_weights_it_loaded(tmp_path, model, caplog, monkeypatch):
    from kolmotok.checkpoint import save_checkpoint
    from kolmotok.config import to_dict

    ckpt = save_checkpoint(tmp_path / "ckpt", model, {"model": to_dict(model.cfg)})
    tok = load(ckpt, device="cpu")
    tok.calibrate(torch.rand(20, 3, 16, 16), alpha=0.1)
    assert tok.save_calibration() == ckpt / "calibration.json"
    assert 0.1 in load(ckpt, device="cpu").calibrations
    elsewhere = tok.save_calibration(tmp_path / "notes")
    assert elsewhere.is_file() and "not a checkpoint directory" in caplog.text
    other = save_checkpoint(tmp_path / "other", model, {"model": to_dict(model.cfg)})
    with pytest.raises(ValueError, match="another checkpoint than the one calibrated"):
        tok.save_calibration(other)
    assert not (other / "calibration.json").exists()
    # the command refuses it before measuring anything
    monkeypatch.setattr("kolmotok.api.measure_conditions", lambda *a, **k: pytest.fail("measured"))
    assert main(["calibrate", "--ckpt", str(ckpt), "--out", str(other), "--data", "shapes", "--device", "cpu"]) == 2
    with pytest.raises(ValueError, match="not loaded from a checkpoint"):
        Tokenizer(model).save_calibration()


def test_cli_calibrate_warns_on_training_folders_and_on_replacing(tmp_path, model, cfg, caplog, capsys):
    """Calibrating on a folder the checkpoint was trained on (or one inside it) is warned about, and so
    is replacing an earlier calibration for the same alpha; a disjoint folder gets neither warning."""
    import dataclasses

    from PIL import Image

    from kolmotok.checkpoint import save_checkpoint
    from kolmotok.config import to_dict

    for sub in ("train/a", "held"):
        (tmp_path / sub).mkdir(parents=True)
        for i, im in enumerate(smooth_images(12, seed=len(sub), size=16)):
            Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / sub / f"{i}.png")
    run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data=f"shapes+folder:{tmp_path}/train@2"))
    ck = save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(run), "step": 0})
    argv = ["calibrate", "--ckpt", str(ck), "--num-images", "0", "--alpha", "0.25", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--data", f"folder:{tmp_path}/held"]) == 0
    assert "training folder" not in caplog.text and "replacing" not in caplog.text
    caplog.clear()
    assert main([*argv, "--data", f"folder:{tmp_path}/train/a"]) == 0
    assert f"{tmp_path}/train/a, which is or overlaps training data" in caplog.text
    assert f"replacing the calibration for alpha = 0.25 in {ck}, made on 12 images of folder:{tmp_path}/held" \
        in caplog.text
    caplog.clear()  # written elsewhere, nothing is replaced; a bad alpha is refused before any image is read
    assert main([*argv, "--data", f"folder:{tmp_path}/held", "--out", str(tmp_path / "notes")]) == 0
    assert "replacing" not in caplog.text
    assert main(["calibrate", "--ckpt", str(ck), "--alpha", "1.5", "--data", f"folder:{tmp_path}/nothing-here",
                 "--device", "cpu"]) == 2
    assert "alpha" in capsys.readouterr().err
