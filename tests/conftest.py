import pytest
import torch
import torch.nn.functional as F

from kolmotok.config import RunConfig, apply_overrides, get_preset
from kolmotok.models import KARLTokenizer

TINY_TEST = [
    "model.image_size=16", "model.patch_size=4", "model.stem_channels=8", "model.width=32",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.num_heads=2", "model.max_tokens=8",
    "model.linear_path_resolution=16", "train.batch_size=4", "train.eval_images=8", "train.pca_init_images=64",
    "train.eval_every=2", "train.checkpoint_every=2", "optim.warmup_steps=2",
]


def small_config(*extra: str) -> RunConfig:
    return apply_overrides(get_preset("tiny"), TINY_TEST + list(extra))


@pytest.fixture
def cfg() -> RunConfig:
    return small_config()


@pytest.fixture
def model(cfg) -> KARLTokenizer:
    torch.manual_seed(0)
    m = KARLTokenizer(cfg.model)
    m.init_linear_path(torch.rand(64, 3, 16, 16))
    return m.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def smooth_images(n: int, seed: int, size: int = 16, noise: float = 0.6) -> torch.Tensor:
    """Smooth random colour fields with noise of a random amplitude up to ``noise``: images
    whose error curves differ."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False)
    amplitude = torch.rand(n, 1, 1, 1, generator=g) * noise
    return (smooth + amplitude * (torch.rand(n, 3, size, size, generator=g) - 0.5)).clamp(0, 1)


HALTING_TOY = ("model.halting_hidden=4",)  # the config of halting_toy's model


def halting_toy(*overrides: str) -> KARLTokenizer:
    """A random model that halts, by a rule the tests can reason about.

    Fresh from initialisation the model is its linear (PCA) path: the transformer branches
    start at zero, so the reconstruction from t tokens has exactly the error e_t that
    ``LinearPath.prefix_errors`` reports. The halting head here ignores the latents and halts
    at position t (keeping t tokens) once e_{t+1}, the error with one token more, is below
    about 0.93 eps. So the counts differ between images and fall as eps rises, and the single
    pass keeps one token too few: images miss eps, which calibration and verification repair.
    """
    cfg = small_config(*HALTING_TOY, *overrides)
    torch.manual_seed(0)
    model = KARLTokenizer(cfg.model)
    model.init_linear_path(smooth_images(256, 5))
    with torch.no_grad():
        for p in (model.halt_head.weight, model.halt_head.bias, *model.halt_mlp.parameters()):
            p.zero_()
        model.halt_mlp[0].weight[0, cfg.model.width] = -20.0  # hidden unit 0 reads log(e_t / eps)
        model.halt_mlp[2].weight[0, 0] = 1.0  # logit = GELU(-20 log(e_t / eps)) > logit(0.75) when e_t < ~0.93 eps
    return model.eval()


@pytest.fixture
def halting_model() -> KARLTokenizer:
    return halting_toy()


@pytest.fixture
def varied_images() -> torch.Tensor:
    return smooth_images(16, 1)
