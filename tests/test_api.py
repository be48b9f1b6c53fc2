"""Public API: encode/decode contract, validation, save/load round trip, the shipped checkpoint."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

import kolmotok
from conftest import HALTING_TOY, halting_toy, small_config, smooth_images
from kolmotok.api import Tokenizer
from kolmotok.checkpoint import load_model, save_checkpoint
from kolmotok.config import to_dict
from kolmotok.evaluation.metrics import l1_per_image
from kolmotok.models import KARLTokenizer


@pytest.fixture
def tok(model) -> Tokenizer:
    return Tokenizer(model)


@pytest.fixture
def fsq_tok() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(KARLTokenizer(small_config("model.quantizer=fsq").model))


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


def test_per_image_epsilon(halting_model, varied_images):
    tok, images = Tokenizer(halting_model), varied_images[:6]
    eps = [0.0, 0.15, 0.0, 0.1, 0.0, 0.3]
    enc = tok.encode(images, epsilon=eps, budget=8)
    assert enc.lengths[[0, 2, 4]].tolist() == [8, 8, 8]
    for i, e in enumerate(eps):  # each image as if encoded alone at its own target
        assert enc.lengths[i] == tok.encode(images[i:i + 1], epsilon=e, budget=8).lengths[0]
    assert enc.lengths[[1, 3, 5]].max() < 8 and len(enc.lengths[[1, 3, 5]].unique()) == 3


def test_error_curve_explains_the_count(halting_model, varied_images):
    """The curve holds decode's error at the kept length, and the shortest prefix within eps is
    at most one token off this model's halting (conftest.halting_toy keeps one too few)."""
    tok, x = Tokenizer(halting_model), varied_images
    enc = tok.encode(x, 0.12)
    curve = tok.error_curve(x, enc.condition)
    assert curve.shape == (len(x), 8)
    torch.testing.assert_close(curve[torch.arange(len(x)), enc.lengths - 1], l1_per_image(tok.decode(enc), x))
    meets = curve <= 0.12
    shortest = torch.where(meets, torch.arange(1, 9), 9).min(1).values
    assert ((shortest == enc.lengths + 1) | (shortest == enc.lengths) | (enc.lengths == 8)).all()
    assert (shortest == enc.lengths + 1).any(), "halting here keeps one too few for some images"
    fixed = tok.error_curve(x, 0.0, budget=4)  # fixed-length tokens: the last entry is encode at budget 4
    torch.testing.assert_close(fixed[:, -1], l1_per_image(tok.decode(tok.encode(x, 0.0, budget=4)), x))
    with pytest.raises(ValueError, match="budget"):
        tok.error_curve(x, 0.1, budget=99)


def test_one_encoder_and_one_decoder_pass_per_batch(halting_model, varied_images, monkeypatch):
    """Counted, not reported: tok.encode runs the encoder once and tok.decode the decoder
    once per batch, whatever eps is (the images keep different counts)."""
    tok, model = Tokenizer(halting_model), halting_model
    calls = {"encode": 0, "decode": 0}

    def counted(name):
        inner = getattr(model, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(model, "encode", counted("encode"))
    monkeypatch.setattr(model, "decode", counted("decode"))
    for eps in (0.0, 0.05, 0.1, 0.15, [0.0, 0.3] * 8):
        calls.update(encode=0, decode=0)
        enc = tok.encode(varied_images, epsilon=eps)
        tok.decode(enc)
        assert calls == {"encode": 1, "decode": 1}, eps
    assert len(tok.encode(varied_images, epsilon=0.1).lengths.unique()) > 1


@pytest.mark.parametrize("eps", [-0.1, 1.5, [0.1, 0.2, 0.3, 0.4, 2.0], math.nan, math.inf, [0.1, 0.2], "abc", None,
                                 ["0.1"], [], True, torch.tensor([True] * 5), [[0.1] * 5], torch.full((5, 1), 0.1)])
def test_bad_epsilon(tok, images, eps):
    with pytest.raises(ValueError, match="epsilon"):
        tok.encode(images, epsilon=eps)


def test_an_encoding_keeps_its_own_targets(tok, images):
    eps = torch.full((5,), 0.05, requires_grad=True)
    enc = tok.encode(images, epsilon=eps)
    with torch.no_grad():
        eps += 1.0  # the caller reuses its tensor
    assert torch.equal(enc.epsilon, torch.full((5,), 0.05)) and not enc.epsilon.requires_grad
    assert enc == enc and enc != copy.deepcopy(enc)  # identity, not an elementwise tensor comparison


def test_continuous_decode_ignores_padding_after_each_length(tok, images):
    enc = tok.encode(images, epsilon=0.0, budget=4)
    lengths = torch.tensor([1, 2, 3, 4, 4])
    padded = enc.tokens.clone()
    padded[torch.arange(4)[None, :] >= lengths[:, None]] = math.inf  # never read
    torch.testing.assert_close(tok.decode(padded, lengths), tok.decode(enc.tokens, lengths), rtol=0, atol=0)


@pytest.mark.parametrize("eps", ["abc", None, [], 1.01, [0.05, 1.5]])
def test_check_options_rejects_bad_epsilon(tok, eps):
    with pytest.raises(ValueError, match="epsilon"):
        tok.check_options(eps)


@pytest.mark.parametrize("budget", [0, -1, 9, 2.5, True, np.float64(4.0), torch.tensor(4.0), torch.tensor(True)])
def test_bad_budget(tok, images, budget):
    with pytest.raises(ValueError, match="budget"):
        tok.encode(images, budget=budget)


@pytest.mark.parametrize("budget", [np.int64(4), torch.tensor(4)])
def test_budget_accepts_integer_scalars(tok, images, budget):
    enc = tok.encode(images, epsilon=0.0, budget=budget)
    assert enc.budget == 4 and type(enc.budget) is int and enc.lengths.tolist() == [4] * 5


@pytest.mark.parametrize("alpha", [[0.1], "0.1", None, 0, 1.5, True])
def test_calibrate_rejects_bad_alpha(tok, images, alpha):
    with pytest.raises(ValueError, match="alpha must be a miss rate in"):
        tok.calibrate(images, alpha=alpha)


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


@pytest.mark.parametrize("lengths", [[1.5] * 5, torch.full((5,), 2.0), [True] * 5, 3, [1, 2]])
def test_decode_rejects_lengths_that_are_not_integers_per_image(tok, images, lengths):
    enc = tok.encode(images, budget=4)
    with pytest.raises(ValueError, match=r"lengths must be \(5,\) integers in 1\.\.4"):
        tok.decode(enc.tokens, lengths)


@pytest.mark.parametrize("tokens, match", [
    (torch.rand(2, 4, 3), r"tokens must be \(B, T, 6\) float vectors for this model, got \(2, 4, 3\) float32"),
    (torch.rand(2, 4), r"\(B, T, 6\) float vectors .* got \(2, 4\)"),
    (torch.rand(2, 4, 6, 1), r"\(B, T, 6\) float vectors .* got \(2, 4, 6, 1\)"),
    (torch.ones(2, 4, 6, dtype=torch.long), r"\(B, T, 6\) float vectors .* int64"),
    (torch.rand(2, 9, 6), r"1\.\.8 tokens per image"),
    (torch.full((2, 4, 6), math.nan), "NaN"),
    (torch.full((2, 4, 6), math.inf), "infinite"),
    ("abc", "takes an Encoding"),
    (np.array([["a", "b"]]), "tokens must be a tensor or array of numbers"),
])
def test_decode_rejects_tokens_continuous_models_cannot_read(tok, tokens, match):
    with pytest.raises(ValueError, match=match):
        tok.decode(tokens, torch.tensor([2, 3]))


FSQ_CODES = r"\(B, T\) integer codes in 0\.\.\d+"


@pytest.mark.parametrize("tokens, lengths, match", [
    (torch.rand(2, 4, 6), [2, 3], FSQ_CODES + " for this model, got \\(2, 4, 6\\) float32"),
    (torch.rand(2, 4), [2, 3], FSQ_CODES + " for this model, got \\(2, 4\\) float32"),
    (torch.ones(2, 4, 6, dtype=torch.long), [2, 3], FSQ_CODES + " for this model, got \\(2, 4, 6\\) int64"),
    (torch.ones(4, dtype=torch.long), [2], FSQ_CODES + " for this model, got \\(4,\\)"),
    (torch.full((2, 4), 10**6), [2, 3], FSQ_CODES + " within each image's length, got code 1000000"),
    (torch.tensor([[1, -1, 2], [3, 4, 5]]), [3, 3], FSQ_CODES + " within each image's length, got code -1"),
])
def test_decode_rejects_tokens_discrete_models_cannot_read(fsq_tok, tokens, lengths, match):
    with pytest.raises(ValueError, match=match):
        fsq_tok.decode(tokens, torch.tensor(lengths))


def test_discrete_decode_rejects_a_continuous_encoding(tok, fsq_tok, images):
    with pytest.raises(ValueError, match=FSQ_CODES + r" for this model, got \(5, 8, 6\) float32"):
        fsq_tok.decode(tok.encode(images))


def test_discrete_decode_ignores_padding_after_each_length(fsq_tok, images):
    enc = fsq_tok.encode(images, epsilon=0.0, budget=6)
    padded = torch.where(torch.arange(6) < 4, enc.tokens, -1)
    assert torch.equal(fsq_tok.decode(padded, torch.full((5,), 4)), fsq_tok.decode(enc.tokens, torch.full((5,), 4)))


@pytest.mark.parametrize("args, match", [
    ((None,), "decode\\(\\) takes an Encoding, padded tokens \\+ lengths, or a list"),
    ((torch.rand(2, 4, 6),), "lengths are required with a padded tokens tensor"),
    (([],), "empty list of token sequences"),
    (([torch.rand(2, 6), torch.rand(3, 4)],), r"tokens\[1\] must be \(T, 6\) float vectors"),
    (([torch.rand(2, 6), torch.rand(0, 6)],), r"tokens\[1\] must hold 1\.\.8 tokens per image"),
    (([torch.rand(2, 6)], torch.tensor([2])), "carries its own lengths"),
])
def test_decode_rejects_calls_it_cannot_read(tok, args, match):
    with pytest.raises(ValueError, match=match):
        tok.decode(*args)


def test_decode_rejects_lengths_beside_an_encoding(tok, images):
    enc = tok.encode(images, budget=4)
    with pytest.raises(ValueError, match="carries its own lengths"):
        tok.decode(enc, enc.lengths)


@pytest.mark.parametrize("make_tok", ["tok", "fsq_tok"])
def test_decode_reads_sequences_and_numpy_arrays(make_tok, images, request):
    t = request.getfixturevalue(make_tok)
    enc = t.encode(images, epsilon=0.1, budget=6)
    enc.lengths[:2] = torch.tensor([2, 5])  # unequal lengths, so the sequences need padding
    expected = t.decode(enc)
    assert torch.equal(t.decode(enc.to_list()), expected)
    assert torch.equal(t.decode([s.tolist() for s in enc.to_list()]), expected)
    assert torch.equal(t.decode(enc.tokens.numpy(), enc.lengths.numpy()), expected)


def _write_png(path, size=20):
    Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(path)
    return path


def test_load_images_takes_one_path(tok, tmp_path):
    path = _write_png(tmp_path / "good.png")
    for one in (path, str(path)):
        assert tok.load_images(one).shape == (1, 3, 16, 16)
    assert tok.load_images(p for p in [path, path]).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("paths, match", [
    ([None], r"paths\[0\] must be a file path \(str or Path\), got NoneType"),
    (["a.png", 3], r"paths\[1\] must be a file path"),
    (5, "paths must be an image file path or a list of them"),
    (b"a.png", "got bytes"),
])
def test_load_images_rejects_what_is_not_a_path(tok, paths, match):
    with pytest.raises(ValueError, match=match):
        tok.load_images(paths)


@pytest.mark.parametrize("quantizer", ["continuous", "fsq"])
def test_save_load_round_trip(tmp_path, varied_images, quantizer):
    """Every weight (halting head included), the calibration and hence every output come back."""
    extra = (f"model.quantizer={quantizer}",)
    model, cfg = halting_toy(*extra), small_config(*HALTING_TOY, *extra)
    save_checkpoint(tmp_path / "ck", model, {"model": to_dict(cfg.model), "run": to_dict(cfg), "step": 0})
    a = Tokenizer(model)
    a.calibrate(smooth_images(40, 2), alpha=0.2)
    a.save_calibration(tmp_path / "ck")
    b = kolmotok.load(tmp_path / "ck", device="cpu")
    sa, sb = model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.calibrations.keys() == a.calibrations.keys() and b.calibrations[0.2] == a.calibrations[0.2]
    for guarantee in (None, 0.8):
        ea, eb = a.encode(varied_images, 0.15, guarantee=guarantee), b.encode(varied_images, 0.15, guarantee=guarantee)
        assert len(ea.lengths.unique()) > 2, "outputs that depend on the halting weights"
        assert torch.equal(ea.lengths, eb.lengths) and torch.equal(ea.tokens, eb.tokens)
        assert torch.equal(ea.condition, eb.condition) and torch.equal(a.decode(ea), b.decode(eb))
    assert b.discrete == (quantizer == "fsq") and b.meta["step"] == 0


def test_shipped_checkpoint_by_name(tmp_path, monkeypatch):
    from kolmotok.checkpoint import checkpoint_label, resolve_checkpoint, shipped_checkpoint

    assert resolve_checkpoint("shipped") == resolve_checkpoint("shipped:tiny") == shipped_checkpoint()
    assert checkpoint_label(None) == checkpoint_label("shipped") == checkpoint_label("shipped:tiny") == "shipped:tiny"
    with pytest.raises(FileNotFoundError, match="'nope' is missing"):
        resolve_checkpoint("shipped:nope")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shipped").mkdir()  # a local directory of that name is what the user means
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_checkpoint("shipped")


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
    that it is not monotone, see MODEL_CARD.md): fewer tokens as eps rises, noise keeps all,
    flat colours take at most a tenth."""
    from kolmotok.data import eval_set

    tok = kolmotok.load(device="cpu")
    x = eval_set("photos:test", tok.image_size, 64).images
    means = [tok.encode(x, epsilon=e).lengths.float().mean().item() for e in (0.05, 0.08, 0.12)]
    assert means[0] > means[1] > means[2]
    noise = torch.rand(8, 3, tok.image_size, tok.image_size, generator=torch.Generator().manual_seed(0))
    assert (tok.encode(noise, epsilon=0.05).lengths == tok.max_tokens).all()
    flat = torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(1)).expand(-1, -1, tok.image_size,
                                                                                  tok.image_size)
    assert (tok.encode(flat, epsilon=0.05).lengths <= 0.1 * tok.max_tokens).all(), "flat colours take few tokens"


def test_mask_marks_the_kept_prefix_for_a_downstream_model(halting_model, varied_images):
    """enc.mask is True exactly at each image's kept tokens; a torch transformer reading the padded
    tokens with src_key_padding_mask=~enc.mask gives kept positions that ignore the padding."""
    from kolmotok.api import Tokenizer

    enc = Tokenizer(halting_model).encode(varied_images, epsilon=0.1)
    assert len(enc.lengths.unique()) > 1 and torch.equal(enc.mask.sum(1), enc.lengths)
    assert torch.equal(enc.mask, torch.stack([torch.arange(enc.budget) < n for n in enc.lengths]))
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(enc.tokens.shape[-1], 2, 16, dropout=0.0, batch_first=True).eval()
    noisy = torch.where(enc.mask[..., None], enc.tokens, torch.randn_like(enc.tokens) * 100)
    a, b = (layer(x, src_key_padding_mask=~enc.mask) for x in (enc.tokens, noisy))
    torch.testing.assert_close(a[enc.mask], b[enc.mask])
