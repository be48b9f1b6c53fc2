"""Public API: encode/decode contract, validation, save/load round trip, the shipped checkpoint."""

import math

import pytest
import torch

import kolmotok
from kolmotok.api import Tokenizer
from kolmotok.checkpoint import load_model, save_checkpoint
from kolmotok.config import to_dict


@pytest.fixture
def tok(model) -> Tokenizer:
    return Tokenizer(model)


def test_encode_decode_contract(tok, images):
    enc = tok.encode(images, epsilon=0.05)
    assert enc.lengths.shape == (5,) and enc.lengths.dtype == torch.long
    assert enc.tokens.shape[:2] == (5, tok.max_tokens)
    assert ((enc.lengths >= 1) & (enc.lengths <= tok.max_tokens)).all()
    recon = tok.decode(enc)
    assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    assert [len(t) for t in enc.to_list()] == enc.lengths.tolist()


def test_fixed_length_mode_keeps_exactly_budget(tok, images):
    enc = tok.encode(images, epsilon=0.0, budget=3)
    assert enc.lengths.tolist() == [3] * 5
    assert enc.tokens.shape[1] == 3


def test_per_image_epsilon(tok, images):
    enc = tok.encode(images, epsilon=[0.0, 0.1, 0.0, 0.1, 0.0], budget=4)
    assert enc.lengths[0] == 4 and enc.lengths[2] == 4


@pytest.mark.parametrize("eps", [-0.1, math.nan, math.inf, [0.1, 0.2]])
def test_bad_epsilon(tok, images, eps):
    with pytest.raises(ValueError, match="epsilon"):
        tok.encode(images, epsilon=eps)


@pytest.mark.parametrize("budget", [0, -1, 9, 2.5, True])
def test_bad_budget(tok, images, budget):
    with pytest.raises(ValueError, match="budget"):
        tok.encode(images, budget=budget)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 3, 8, 8), "shape"),
    (torch.rand(2, 1, 16, 16), "shape"),
    (torch.rand(2, 3, 16, 16) * 255, r"\[0, 1\]"),
    (torch.full((1, 3, 16, 16), math.nan), "NaN"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "float"),
    (torch.zeros(0, 3, 16, 16), "empty"),
])
def test_bad_images(tok, bad, match):
    with pytest.raises(ValueError, match=match):
        tok.encode(bad)


def test_decode_rejects_bad_lengths(tok, images):
    enc = tok.encode(images, budget=4)
    with pytest.raises(ValueError, match="lengths"):
        tok.decode(enc.tokens, torch.tensor([0, 1, 1, 1, 1]))


def test_save_load_round_trip(tmp_path, model, cfg, images):
    save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})
    loaded, meta = load_model(tmp_path / "ck")
    a, b = Tokenizer(model), Tokenizer(loaded)
    ea, eb = a.encode(images, 0.05), b.encode(images, 0.05)
    assert torch.equal(ea.lengths, eb.lengths) and torch.equal(ea.tokens, eb.tokens)
    assert torch.equal(a.decode(ea), b.decode(eb))
    assert meta["step"] == 0


def test_load_rejects_unknown_config_keys(tmp_path, model, cfg):
    meta = {"model": {**to_dict(cfg.model), "wdith": 3}, "run": to_dict(cfg), "step": 0}
    save_checkpoint(tmp_path / "ck", model, meta)
    with pytest.raises(ValueError, match="wdith"):
        load_model(tmp_path / "ck")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        kolmotok.load(tmp_path)


def test_shipped_checkpoint_loads_and_runs():
    tok = kolmotok.load(device="cpu")
    assert tok.image_size >= 32 and tok.max_tokens >= 32
    x = torch.rand(2, 3, tok.image_size, tok.image_size)
    enc = tok.encode(x, epsilon=0.05)
    assert tok.decode(enc).shape == x.shape


def test_shipped_checkpoint_behaves_like_a_complexity_measure():
    """Regression guard for the shipped model in its operating range (eps >= 0.05; below
    that it is not monotone, see MODEL_CARD.md): fewer tokens as eps rises, noise keeps all."""
    from kolmotok.data import eval_set

    tok = kolmotok.load(device="cpu")
    x = eval_set("photos:test", tok.image_size, 64).images
    means = [tok.encode(x, epsilon=e).lengths.float().mean().item() for e in (0.05, 0.08, 0.12)]
    assert means[0] > means[1] > means[2]
    noise = torch.rand(8, 3, tok.image_size, tok.image_size, generator=torch.Generator().manual_seed(0))
    assert (tok.encode(noise, epsilon=0.05).lengths == tok.max_tokens).all()
