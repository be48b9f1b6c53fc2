"""Evaluation helpers that the acceptance report relies on."""

import numpy as np
import pytest
import torch

from conftest import smooth_images
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


def test_eval_by_source_splits_the_table_by_subfolder(halting_model):
    """Per-source rows partition the images: their counts add up, and their shares and token
    means, weighted by size, give the whole set's."""
    from kolmotok.api import Tokenizer
    from kolmotok.data import EvalSet
    from kolmotok.evaluation.evaluate import evaluate, format_report

    tok = Tokenizer(halting_model)
    images = smooth_images(7, 4)
    names = ["/d/cam1/a.png", "/d/cam1/b.png", "/d/cam2/c.png", "/d/top.png", "/d/cam2/x/e.png", "/d/cam1/f.png",
             "/d/cam2/g.png"]
    data = EvalSet("folder:/d", images, names=names)
    assert data.sources == ["cam1", "cam1", "cam2", ".", "cam2/x", "cam1", "cam2"]
    rep = evaluate(tok, data, [0.1, 0.15], by_source=True)
    assert len({round(s.mean_tokens[1], 3) for s in rep.by_source}) > 2, "the sources differ in tokens kept"
    assert [s.source for s in rep.by_source] == [".", "cam1", "cam2", "cam2/x"]
    assert [s.num_images for s in rep.by_source] == [1, 3, 2, 1]
    for i, row in enumerate(rep.epsilon_rows):
        weights = [s.num_images / 7 for s in rep.by_source]
        assert sum(w * s.meet_share[i] for w, s in zip(weights, rep.by_source)) == pytest.approx(row.meet_share)
        assert sum(w * s.mean_tokens[i] for w, s in zip(weights, rep.by_source)) == pytest.approx(row.mean_tokens)
    assert "cam2/x" in format_report(rep) and "by source" in format_report(rep)
    assert evaluate(tok, data, [0.05]).by_source == []
    with pytest.raises(ValueError, match="no sources"):
        evaluate(tok, EvalSet("shapes", images), [0.05], by_source=True)


def test_the_complexity_ranking_is_the_plain_single_pass_under_a_guarantee():
    """With --guarantee the eps rows use the calibrated condition, but the PNG-size ranking is
    the count of the plain single pass at eps 0.05, whatever eps the table shows. (Under the
    shipped calibration eps 0.05 is out of range: every image would keep 32 tokens.)"""
    import kolmotok
    from kolmotok.data import eval_set
    from kolmotok.evaluation.evaluate import evaluate

    tok = kolmotok.load(device="cpu")
    data = eval_set("photos:test", tok.image_size, 32)
    plain = evaluate(tok, data, [0.05]).spearman_tokens_vs_png
    guaranteed = evaluate(tok, data, [0.12], guarantee=0.9).spearman_tokens_vs_png
    assert np.isfinite(plain) and guaranteed == pytest.approx(plain)


def test_per_image_rows_add_up_to_the_table(halting_model, tmp_path):
    """eval --per-image: one CSV row per image whose tokens, l1 and meets average to the table's rows."""
    import csv

    from kolmotok.api import Tokenizer
    from kolmotok.data import EvalSet
    from kolmotok.evaluation.evaluate import evaluate, image_table_csv
    from kolmotok.evaluation.metrics import png_bytes

    tok = Tokenizer(halting_model)
    images = smooth_images(6, 5)
    data = EvalSet("shapes", images, labels=torch.arange(6.0))
    rep = evaluate(tok, data, [0.1, 0.15], per_image=True)
    rows = list(csv.DictReader(image_table_csv(rep).splitlines()))
    for e in ("0.1", "0.15"):  # a spread of counts, and of images meeting eps
        assert len({r[f"tokens@{e}"] for r in rows}) > 2 and len({r[f"meets@{e}"] for r in rows}) == 2
    assert [int(r["index"]) for r in rows] == list(range(6)) and [float(r["label"]) for r in rows] == list(range(6))
    assert [int(r["png_bytes"]) for r in rows] == [png_bytes(im) for im in images]
    for row in rep.epsilon_rows:
        e = f"{row.epsilon:g}"
        assert np.mean([int(r[f"tokens@{e}"]) for r in rows]) == pytest.approx(row.mean_tokens)
        assert np.mean([float(r[f"l1@{e}"]) for r in rows]) == pytest.approx(row.l1, abs=1e-5)
        assert np.mean([int(r[f"meets@{e}"]) for r in rows]) == pytest.approx(row.meet_share)
    assert evaluate(tok, data, [0.05]).images == []
    # a folder's images carry the subfolder --by-source groups them under
    files = [f"/r/{d}/{i}.png" for i, d in enumerate(["a", "a", "b", "b/c", ".", "a"])]
    rows = list(csv.DictReader(image_table_csv(evaluate(tok, EvalSet("folder:/r", images, names=files), [0.1],
                                                        per_image=True)).splitlines()))
    assert [r["source"] for r in rows] == ["a", "a", "b", "b/c", ".", "a"] and [r["name"] for r in rows] == files
    odd = EvalSet("folder:/d", images, names=[f"/d/{c}.png" for c in ("a\rb", "c\nd", "e,f", 'g"h', "i", "j\udcff")])
    rows = list(csv.reader(image_table_csv(evaluate(tok, odd, [0.05], per_image=True)).splitlines()))
    assert [r[1] for r in rows[1:]] == ["/d/a\\rb.png", "/d/c\\nd.png", "/d/e,f.png", '/d/g"h.png', "/d/i.png",
                                        "/d/j\\xff.png"]  # one line per image, whatever its name


def complexity_rank_script():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "complexity_rank.py"
    spec = importlib.util.spec_from_file_location("complexity_rank", path)
    script = importlib.util.module_from_spec(spec)
    sys.modules["complexity_rank"] = script  # its dataclass looks its module up there
    spec.loader.exec_module(script)
    return script


def test_the_within_photograph_ceiling_keeps_each_groups_values_and_never_lowers_rho():
    """benchmarks/complexity_rank.py's ``ceiling``: each group keeps its own values, reordered to
    follow the key within the group; by the rearrangement inequality rho can only rise, and a
    single group reaches 1."""
    from kolmotok.evaluation.metrics import spearman

    script = complexity_rank_script()
    rng = np.random.default_rng(0)
    groups = np.repeat(np.array(["a", "b", "c"]), 20)
    key = rng.random(60) + np.repeat([0.0, 2.0, 1.0], 20)
    values = rng.integers(1, 33, 60).astype(float) + np.repeat([0, 5, 30], 20)
    ceiled = script.follow_within(values, key, groups)
    for g in "abc":
        sel = groups == g
        assert sorted(ceiled[sel]) == sorted(values[sel]) and spearman(ceiled[sel], key[sel]) > 0.99
    assert spearman(values, key) < spearman(ceiled, key) < 1.0  # group c's level is out of key order
    assert spearman(script.follow_within(values, key, np.zeros(60)), key) > 0.99  # ties keep it under 1


def test_subset_rhos_score_every_k_photograph_test_set_on_its_own_crops():
    """complexity_rank.py --subsets: one rho per k-subset of the photographs, computed on that
    subset's crops alone; all-equal counts give 0, not nan. Photograph "d" is out of key order,
    so the sets holding it rank worse than the set without it."""
    from math import comb

    from kolmotok.evaluation.metrics import spearman

    script = complexity_rank_script()
    rng = np.random.default_rng(1)
    photos = np.repeat(np.array(["a", "b", "c", "d"]), 10)
    key = np.repeat([1.0, 2.0, 3.0, 4.0], 10) + 0.1 * rng.random(40)
    values = np.repeat([1.0, 2.0, 3.0, 0.5], 10)  # each photograph one count; d's is lowest, key highest
    subsets, rho = script.subset_rhos(photos, key, values, 3)
    assert len(subsets) == comb(4, 3) and subsets[0] == ("a", "b", "c")
    for s, r in zip(subsets, rho):
        sel = np.isin(photos, s)
        assert r == pytest.approx(spearman(values[sel], key[sel]))
    assert rho[0] > 0.9 and (rho[1:] < rho[0]).all()
    _, flat = script.subset_rhos(photos, key, np.ones(40), 2)
    assert (flat == 0).all()
    with pytest.raises(ValueError, match="--subsets 5"):
        script.subset_rhos(photos, key, values, 5)
