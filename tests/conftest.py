import pytest
import torch

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
