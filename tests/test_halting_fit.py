"""Refitting the halting head to exact labels: labels, frozen backbone, and that the fit learns."""

import pytest
import torch
from safetensors.torch import load_file

import kolmotok
from conftest import small_config
from kolmotok.checkpoint import save_checkpoint
from kolmotok.cli import main
from kolmotok.config import to_dict
from kolmotok.data import shapes
from kolmotok.models import KARLTokenizer
from kolmotok.training.halting_fit import (
    HaltingFitConfig,
    exact_halting_labels,
    fit_halting,
    prefix_error_curves,
    shortest_sufficient,
)


def test_shortest_sufficient_prefix_and_its_labels():
    curves = torch.tensor([[0.10, 0.06, 0.04, 0.03],  # eps 0.05 -> 3 tokens
                           [0.01, 0.01, 0.01, 0.01],  # flat: 1 token
                           [0.20, 0.15, 0.12, 0.11]])  # unreachable: every token
    lengths, reachable = shortest_sufficient(curves, torch.full((3,), 0.05))
    assert lengths.tolist() == [3, 1, 4] and reachable.tolist() == [True, True, False]
    labels, weights = exact_halting_labels(lengths, 4)
    assert labels.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]]  # length 1: halt from position 1
    assert weights[:, 0].eq(0).all() and weights[:, 1:].eq(1).all(), "position 0 never halts: no label"


def _checkpoint(tmp_path):
    cfg = small_config()
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model)
    model.init_linear_path(shapes.draw(256, 16, torch.Generator().manual_seed(1))[0])  # a PCA tokenizer of shapes
    return save_checkpoint(tmp_path / "start", model, {"model": to_dict(cfg.model)}), model


def _length_error(model, images, eps):
    """Mean |predicted length - exact shortest sufficient length| at targets eps."""
    curves = prefix_error_curves(model, images)
    exact, _ = shortest_sufficient(curves, eps)
    with torch.no_grad():
        predicted = model.halt(model.encode(images, eps, model.cfg.max_tokens).halt_logits, eps)
    return (predicted - exact).abs().float().mean().item()


def test_fit_changes_only_the_halting_head_and_learns_the_labels(tmp_path):
    start, model = _checkpoint(tmp_path)
    cfg = HaltingFitConfig(data="shapes", images=96, targets_per_image=4, steps=300, batch_size=64,
                           epsilon_min=0.01, epsilon_max=0.3, hidden=16, inference_batch=32)
    out = fit_halting(start, tmp_path / "fitted", cfg, progress=False)
    before, after = load_file(str(start / "model.safetensors")), load_file(str(out / "model.safetensors"))
    halting = [k for k in after if k.startswith(("halt_head.", "halt_eps_gain", "halt_mlp."))]
    assert any(k.startswith("halt_mlp.") for k in halting), "a model without a halting MLP gets one"
    assert all(torch.equal(before[k], after[k]) for k in before if k not in halting), "backbone must not change"
    assert not torch.equal(before["halt_head.weight"], after["halt_head.weight"])
    tok = kolmotok.load(out, device="cpu")
    fit = tok.meta["halting_fit"]
    assert tok.model.cfg.halting_hidden == 16 and fit["bce_last"] < fit["bce_first"]
    # on held-out shapes, the refit head predicts the exact length better than the random-weight head
    g = torch.Generator().manual_seed(99)
    images, _ = shapes.draw(64, 16, g)
    eps = torch.exp(torch.empty(64).uniform_(-4.0, -1.5, generator=g))
    assert _length_error(tok.model, images, eps) < 0.6 * _length_error(model.eval(), images, eps)


def test_halting_mlp_width_is_checked():
    with pytest.raises(ValueError, match="hidden must be >= 0"):
        HaltingFitConfig(hidden=-3).validate()


def test_fit_halting_never_overwrites_a_non_empty_directory(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        fit_halting(tmp_path / "no-ckpt-needed", tmp_path / "precious", HaltingFitConfig(), progress=False)
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "x"


def test_cli_fit_halting(tmp_path, capsys):
    start, _ = _checkpoint(tmp_path)
    rc = main(["fit-halting", "--ckpt", str(start), "--out", str(tmp_path / "cli"), "--data", "shapes",
               "--images", "16", "--steps", "3", "--device", "cpu", "--no-progress"])
    assert rc == 0 and "calibrate" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model.safetensors").is_file()
