"""Evaluation helpers that the acceptance report relies on."""

import numpy as np
import pytest
import torch

from kolmotok.evaluation.evaluate import spearman_by_colour


def test_spearman_by_colour_splits_grayscale_from_colour_crops():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 4, 4, generator=g)
    images[:12] = images[:12, :1].expand(-1, 3, -1, -1)  # the first 12 are grayscale
    values = np.arange(24.0)
    png = np.concatenate([np.arange(12.0) + 100, np.arange(12.0)])  # rising within each group, offset between
    by = spearman_by_colour(images, values, png)
    assert by == {"grayscale": pytest.approx(1.0), "colour": pytest.approx(1.0)}
    assert spearman_by_colour(images[:14], values[:14], png[:14]) == {"grayscale": pytest.approx(1.0)}
