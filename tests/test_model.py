"""Model stages, gradients and halting invariants on a tiny random-weight model."""

import pytest
import torch

from conftest import small_config
from kolmotok.models import KARLTokenizer, lengths_from_halting
from kolmotok.training import KARLObjective


def test_stage_shapes(model, images):
    B, T = images.shape[0], 6
    lat = model.encode(images, torch.full((B,), 0.05), T)
    assert lat.latents.shape == (B, T, model.cfg.width)
    assert lat.halt_logits.shape == (B, T)
    q = model.quantize(lat)
    assert q.vectors.shape == (B, T, model.cfg.code_dim)
    lengths = model.halt(lat.halt_logits, torch.full((B,), 0.05))
    assert lengths.shape == (B,) and lengths.dtype == torch.long
    out = model.decode(q.vectors, lengths)
    assert out.shape == images.shape


@pytest.mark.parametrize("quantizer", ["continuous", "fsq"])
@pytest.mark.parametrize("linear_path", [True, False])
def test_every_parameter_gets_a_gradient(quantizer, linear_path):
    cfg = small_config(f"model.quantizer={quantizer}", f"model.linear_path={str(linear_path).lower()}",
                       f"model.halting_epsilon_gain={2.0 if linear_path else 0.0}",
                       f"model.halting_hidden={8 if linear_path else 0}")
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model)
    x = torch.rand(6, 3, 16, 16)
    model.init_linear_path(x)
    objective = KARLObjective(cfg.objective)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # the linear-path model zero-initialises its residual branches: they receive gradient
    # from the second step on, so take one step first
    for step in range(2):
        opt.zero_grad()
        objective(model, x, torch.Generator().manual_seed(step)).loss.backward()
        if step == 0:
            opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"


def test_lengths_from_halting_is_first_halted_prefix():
    logits = torch.tensor([[-5.0, -5.0, 5.0, -5.0, 5.0],  # first halt at 2 (later keep ignored)
                           [5.0, 5.0, 5.0, 5.0, 5.0],  # all halted -> still keeps 1
                           [-5.0] * 5])  # none halted -> all kept
    assert lengths_from_halting(logits, 0.75).tolist() == [2, 1, 5]


def test_halting_invariants(halting_model, varied_images):
    model, images, B = halting_model, varied_images, len(varied_images)
    for eps in (0.0, 0.01, 0.1, 0.15, 0.3):
        for budget in (1, 3, 8):
            out = model.tokenize(images, torch.full((B,), eps), budget)
            assert ((out.lengths >= 1) & (out.lengths <= budget)).all()
            keep = torch.arange(budget)[None, :] < out.lengths[:, None]
            assert (out.vectors[~keep] == 0).all(), "tokens past the length must be blank"
            assert (out.vectors[keep] != 0).any(-1).all(), "kept tokens are the model's, not blanks"
            if eps == 0:
                assert (out.lengths == budget).all(), "eps = 0 must keep exactly `budget` tokens"
            # the length is the first halted position: every kept position after the first is below threshold
            halted = torch.sigmoid(out.halt_logits) > model.cfg.halting_threshold
            if eps > 0:
                assert not (halted[:, 1:] & keep[:, 1:]).any()
                stopped = out.lengths < budget
                assert halted[stopped, out.lengths[stopped]].all()
    # the checks above ran on real halting: counts differ between images and fall as eps rises
    spread = model.tokenize(images, torch.full((B,), 0.1), 8).lengths
    assert spread.min() < 8 and len(spread.unique()) >= 3
    loose = model.tokenize(images, torch.full((B,), 0.15), 8).lengths
    assert (loose <= spread).all() and loose.sum() < spread.sum()


def test_direct_epsilon_term_makes_halting_monotone_in_epsilon(images):
    cfg = small_config("model.halting_epsilon_gain=3.0")
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model).eval()
    with torch.no_grad():
        model.eps_embed.mlp[-1].weight.zero_()  # eps now reaches halting only through the direct term
        model.eps_embed.mlp[-1].bias.zero_()
        model.halt_head.weight.normal_(std=0.05)  # small: the direct term decides, whatever the random stream
        model.halt_head.bias.zero_()
        B, T = len(images), 8
        logits = {e: model.encode(images, torch.full((B,), e), T).halt_logits for e in (0.01, 0.05, 0.2)}
    gain = torch.nn.functional.softplus(model.halt_eps_gain)
    assert gain.item() == pytest.approx(3.0, rel=1e-5)
    expected = gain * torch.log(torch.tensor(0.2 / 0.05)).expand(B, T)
    assert torch.allclose(logits[0.2] - logits[0.05], expected, atol=1e-4)
    lengths = [model.halt(logits[e], torch.full((B,), e)) for e in (0.01, 0.05, 0.2)]
    assert (lengths[0] >= lengths[1]).all() and (lengths[1] >= lengths[2]).all()
    assert lengths[0].sum() > lengths[2].sum(), "a 20x looser target must halt earlier somewhere"


def test_pca_of_too_few_images_whitens_only_real_components(cfg, caplog):
    """40 distinct images span 39 directions: the rest of the PCA basis is rounding noise, and
    whitening it (dividing by ~0) made encodings depend on the batch they were computed in."""
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model).eval()
    few = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    model.init_linear_path(few.repeat(50, 1, 1, 1))
    weight = model.linear_path.enc_weight
    assert (weight.abs().sum(1) > 0).sum() == 39 and "span only 39" in caplog.text
    assert weight.abs().max() < 100
    new = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    one_by_one = torch.cat([model.linear_path.encode(im[None]) for im in new])
    assert torch.allclose(model.linear_path.encode(new), one_by_one, atol=1e-5)


def test_linear_path_prefix_errors_match_decoding_each_prefix(model, images):
    lp = model.linear_path
    vectors = lp.encode(images)[:, :8]
    errors = lp.prefix_errors(images, vectors)
    assert errors.shape == (len(images), 8)
    for t in (1, 4, 8):
        kept = torch.nn.functional.pad(vectors[:, :t], (0, 0, 0, model.cfg.max_tokens - t))
        expected = (lp.decode(kept, images.shape[-1]).clamp(0, 1) - images).abs().mean((1, 2, 3))
        assert torch.allclose(errors[:, t - 1], expected, atol=1e-5)


def test_halting_mlp_reads_the_linear_path_error_curve(images):
    cfg = small_config("model.halting_hidden=8")
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model)
    model.init_linear_path(torch.rand(64, 3, 16, 16))
    eps = torch.full((len(images),), 0.05)
    lat = model.encode(images, eps, 8)
    errors = model.linear_path.prefix_errors(images, lat.direct)
    with torch.no_grad():
        other = model.halting_logits(lat.latents, eps, errors * 2)
        without_mlp = model.halt_head(lat.latents).squeeze(-1)
    assert not torch.allclose(other, lat.halt_logits), "the error curve must reach the halting logits"
    assert not torch.allclose(without_mlp, lat.halt_logits)
    with pytest.raises(ValueError, match="prefix errors"):
        model.halting_logits(lat.latents, eps)
    with pytest.raises(ValueError, match="linear_path"):
        small_config("model.halting_hidden=8", "model.linear_path=false").model.validate()
    with pytest.raises(ValueError, match="halting_hidden"):
        small_config("model.halting_hidden=-1").model.validate()


def test_decoder_never_reads_halted_tokens(model, images):
    B, T = len(images), 8
    with torch.no_grad():  # fresh, the transformer branch outputs zero; give it a say in the image
        torch.nn.init.normal_(model.head.output_layer.weight, std=0.1)
    lat = model.encode(images, torch.zeros(B), T)
    vectors = model.quantize(lat).vectors
    lengths = torch.tensor([1, 3, 5, 8, 2])
    ref = model.decode(vectors, lengths)
    keep = torch.arange(T)[None, :] < lengths[:, None]
    garbage = torch.where(keep[..., None], vectors, torch.randn_like(vectors) * 100)
    assert torch.allclose(model.decode(garbage, lengths), ref, atol=1e-6)
    # the comparison can fail: a change inside the kept prefix does change the image, through
    # the transformer branch as well as the linear path
    inside = vectors.clone()
    inside[:, 0] += 1.0
    assert (model.decode(inside, lengths) - ref).abs().amax(dim=(1, 2, 3)).gt(1e-3).all()
    def transformer_branch(v):
        return model.decode(v, lengths) - model.linear_path.decode(v * keep[..., None], 16)
    assert not torch.allclose(transformer_branch(inside), transformer_branch(vectors), atol=1e-3)


def test_fsq_codes_round_trip():
    cfg = small_config("model.quantizer=fsq")
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model).eval()
    x = torch.rand(3, 3, 16, 16)
    out = model.tokenize(x, torch.zeros(3), 8)
    assert out.codes.dtype == torch.long and out.codes.shape == (3, 8)
    assert torch.allclose(model.codes_to_vectors(out.codes), out.vectors, atol=1e-6)


def test_linear_path_stays_fp32_under_mixed_precision(halting_model, varied_images):
    """Its whitened weights and the exact prefix errors the halting head reads are not rounded
    to bf16 when training runs under autocast (the transformers are)."""
    model, x, B = halting_model, varied_images, len(varied_images)
    eps = torch.full((B,), 0.1)
    with torch.no_grad():
        exact = model.encode(x, eps, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.encode(x, eps, 8)
            recon = model.linear_path.decode(exact.direct, 16)
            assert model.to_token(torch.zeros(1, model.cfg.width)).dtype == torch.bfloat16  # autocast is on
    assert torch.equal(mixed.linear_errors, exact.linear_errors) and torch.equal(mixed.direct, exact.direct)
    assert recon.dtype == torch.float32 and torch.equal(recon, model.linear_path.decode(exact.direct, 16))
