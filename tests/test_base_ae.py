"""A frozen diffusers autoencoder as the base 2D representation (KARL's latent-distillation setting)."""

import pytest
import torch

from conftest import small_config
from kolmotok.api import load
from kolmotok.cli import main
from kolmotok.config import get_preset
from kolmotok.training import train

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


def test_train_and_encode_through_a_base_autoencoder(tmp_path, vae_dir):
    cfg = small_config("train.steps=2", "train.data=shapes", "model.linear_path=false", "model.patch_size=2",
                       f"model.base_autoencoder={vae_dir}")
    fresh = diffusers.AutoencoderKL.from_pretrained(vae_dir).state_dict()
    frozen, stems = [], []

    def after_step(step, model):  # inside the model being trained, after each optimizer step
        module = getattr(model, "module", model)
        frozen.append(all(torch.equal(v, module.base.ae.state_dict()[k]) for k, v in fresh.items()))
        stems.append(next(module.stem.parameters()).detach().clone())

    ckpt = train(cfg, tmp_path / "run", progress=False, on_step_end=after_step)
    assert frozen == [True, True] and not torch.equal(*stems), "the autoencoder stays as loaded; the rest learns"
    tok = load(ckpt, device="cpu")
    assert tok.model.cfg.base_channels == 4 and tok.model.cfg.grid_size == 4  # 16 px / 2 (VAE) / 2 (patch)
    assert not any(k.startswith("base.") for k in tok.model.own_state_dict())  # the VAE is not copied
    base_params = [p for n, p in tok.model.named_parameters() if n.startswith("base.")]
    assert base_params and not any(p.requires_grad for p in base_params)
    images = torch.rand(3, 3, 16, 16)
    enc = tok.encode(images, epsilon=0.1)
    assert tok.decode(enc).shape == images.shape


def test_vae_presets_demand_an_autoencoder(tmp_path, capsys):
    assert get_preset("small-vae").model.linear_path is False
    rc = main(["train", "--preset", "small-vae", "--out", str(tmp_path / "r"), "--steps", "1"])
    assert rc == 2 and "--base-autoencoder" in capsys.readouterr().err
    rc = main(["train", "--preset", "small-vae", "--base-autoencoder", str(tmp_path), "--out", str(tmp_path / "r")])
    assert rc == 2 and "config.json" in capsys.readouterr().err


def test_the_autoencoder_runs_in_fp32_under_fp16_autocast(vae_dir):
    """fp16 overflows in some autoencoders: under fp16 autocast the frozen one runs in fp32
    (same numbers as without autocast); under bf16 it stays in bf16."""
    from kolmotok.models.base_ae import BaseAutoencoder

    base, x = BaseAutoencoder(str(vae_dir)), torch.rand(2, 3, 16, 16)
    z, y = base.encode(x), base.decode(base.encode(x))
    with torch.autocast("cpu", dtype=torch.float16):
        z16, y16 = base.encode(x), base.decode(base.encode(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb = base.encode(x)
    assert z16.dtype == y16.dtype == torch.float32 and torch.equal(z16, z) and torch.equal(y16, y)
    assert zb.dtype == torch.bfloat16
