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


def test_report_keeps_the_complexity_line_when_png_rank_is_undefined():
    """Every image at the same count (e.g. a guarantee that uses every token) leaves Spearman
    against PNG undefined; the ground-truth complexity line must still be printed."""
    from kolmotok.evaluation.evaluate import BudgetRow, EpsilonRow, EvalReport, format_report

    row = EpsilonRow(0.05, 32.0, 32.0, 0.0, 0.8, 0.8, 0.03, 29.0, 0.75)
    rep = EvalReport("shapes", 8, 32, [row], [BudgetRow(32, 0.03, 29.0, 0.75)], {"resample_4x4": 0.06},
                     float("nan"), 0.5, {"grayscale": float("nan"), "colour": float("nan")})
    text = format_report(rep)
    assert "PNG bytes): undefined" in text and "within grayscale" not in text
    assert "ground-truth complexity) = 0.500" in text
