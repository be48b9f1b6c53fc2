"""The downstream probe benchmark (kolmotok.evaluation.downstream)."""

import math

import numpy as np
import pytest
import torch

from conftest import smooth_images
from kolmotok.api import Encoding, Tokenizer
from kolmotok.data import EvalSet
from kolmotok.evaluation.downstream import (
    DownstreamReport,
    DownstreamRow,
    ProbeSettings,
    TokenProbe,
    class_labels,
    downstream_table,
    encode_all,
    fixed_accuracy_at,
    format_table,
    pixel_patches,
    probe_accuracy,
    probe_batches,
    split_indices,
)


def encoding(tokens: torch.Tensor, lengths: torch.Tensor) -> Encoding:
    return Encoding(tokens, lengths, torch.zeros(len(lengths)), tokens.shape[1])


def test_class_labels_come_from_the_data():
    images = torch.zeros(5, 3, 4, 4)
    labels, names = class_labels(EvalSet("shapes", images, labels=torch.tensor([10, 2, 2, 0, 10])))
    assert names == ["0", "2", "10"] and labels.tolist() == [2, 1, 1, 0, 2]  # numeric order, not text order
    folder = EvalSet("folder:/d", images, names=["/d/cat/a.png", "/d/dog/b.png", "/d/cat/c.png", "/d/x.png",
                                                 "/d/dog/e.png"])
    labels, names = class_labels(folder)
    assert names == [".", "cat", "dog"] and labels.tolist() == [1, 2, 1, 0, 2]
    with pytest.raises(ValueError, match="folder:/d: every image has the same label 'cat'"):
        class_labels(EvalSet("folder:/d", images[:2], names=["/d/cat/a.png", "/d/cat/b.png"]))
    with pytest.raises(ValueError, match="photos:x: no labels"):
        class_labels(EvalSet("photos:x", images))
    crops = EvalSet("photos:test", images, names=["a.png"] * 5, scales=[4.0, 1.0, 1.5, 1.0, 2.0])
    labels, names = class_labels(crops, "scale")
    assert names == ["1", "1.5", "2", "4"] and labels.tolist() == [3, 0, 1, 0, 2]
    with pytest.raises(ValueError, match="shapes: no crop scales"):
        class_labels(EvalSet("shapes", images, labels=torch.arange(5)), "scale")
    with pytest.raises(ValueError, match="unknown label 'size'"):
        class_labels(crops, "size")


def test_split_is_disjoint_seeded_and_refuses_what_cannot_be_split():
    train, test = split_indices(20, 0.25)
    assert len(test) == 5 and sorted(train.tolist() + test.tolist()) == list(range(20))
    assert split_indices(20, 0.25)[1].tolist() == test.tolist()
    for share in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="test share"):
            split_indices(20, share)
    with pytest.raises(ValueError, match="1 images cannot be split"):
        split_indices(1, 0.5)


def test_the_probe_never_reads_padded_tokens():
    torch.manual_seed(0)
    probe = TokenProbe(token_dim=6, max_tokens=8, classes=3).eval()
    tokens, lengths = torch.randn(4, 8, 6), torch.tensor([1, 3, 8, 5])
    mask = encoding(tokens, lengths).mask
    changed = tokens.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 6) * 100
    with torch.no_grad():
        assert torch.allclose(probe(tokens, mask), probe(changed, mask), atol=1e-5)
        assert not torch.allclose(probe(tokens, mask), probe(tokens * 2, mask))
    codes = TokenProbe(1, 8, 3, codebook_size=16).eval()  # discrete tokens: -1 padding is not an index
    with torch.no_grad():
        assert codes(torch.full((2, 8), -1).index_fill(1, torch.tensor([0]), 3), mask[:2]).shape == (2, 3)


@pytest.mark.parametrize("batching", ["random", "length"])
def test_a_probe_learns_what_the_kept_tokens_hold_and_not_what_padding_would(batching):
    """The label is written into one token (+3 or -3 in its first value): learnable when that
    token is kept, chance when it sits past every image's length (2 or 3 tokens), whether the
    probe's batches are drawn at random or grouped by length and cut."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (400,), generator=g)
    tokens = torch.randn(400, 4, 6, generator=g)
    lengths = 2 + torch.randint(2, (400,), generator=g)
    train, test = split_indices(400, 0.25)
    settings = ProbeSettings(steps=60, batch_size=64, width=32, layers=1, seeds=1, batching=batching)
    accuracy = {}
    for where in (1, 3):  # the 2nd token (kept) or the 4th (past the 2 or 3 kept)
        marked = tokens.clone()
        marked[:, where, 0] = 6.0 * labels - 3.0
        accuracy[where] = probe_accuracy(encoding(marked, lengths), labels, train, test, 2, settings, seed=0)
    assert accuracy[1] > 0.95 and accuracy[3] < 0.7


def test_length_batching_runs_epochs_over_the_training_images_grouped_by_length():
    lengths = torch.tensor([1, 9, 1, 9, 2, 9, 1, 2, 9, 1, 2, 2])
    train = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 10])  # three images each of lengths 1, 2 and 9
    settings = ProbeSettings(batch_size=3, batching="length")
    stream = probe_batches(lengths[train], train, settings, seed=0)
    epochs = [[next(stream) for _ in range(3)] for _ in range(2)]  # 9 training images: 3 batches an epoch
    for epoch in epochs:
        assert sorted(torch.cat(epoch).tolist()) == train.tolist()
        assert sorted(lengths[b].unique().tolist() for b in epoch) == [[1], [2], [9]]
    assert [b.tolist() for b in epochs[0]] != [b.tolist() for b in epochs[1]]  # a new order each epoch
    with pytest.raises(ValueError, match="unknown batching 'sorted'"):
        next(probe_batches(lengths, train, ProbeSettings(batching="sorted"), seed=0))


def test_downstream_table_has_a_row_per_setting_on_the_same_split(halting_model):
    tok = Tokenizer(halting_model)
    data = EvalSet("shapes", smooth_images(24, 3), labels=torch.arange(24) % 3)
    settings = ProbeSettings(steps=3, seeds=2, test_share=0.25)
    report = downstream_table(tok, data, [0.1, 0.3], [1, tok.max_tokens], settings, progress=False)
    rows = report.rows
    assert (report.num_images, report.num_train, report.num_test, report.classes) == (24, 18, 6, ["0", "1", "2"])
    patches = (tok.image_size // halting_model.cfg.patch_size) ** 2
    assert [r.setting for r in rows] == ["karl eps=0.1", "karl eps=0.3", "fixed-1", f"fixed-{tok.max_tokens}",
                                         f"pixels ({patches} patches)"]
    assert [r.kind for r in rows] == ["karl", "karl", "fixed", "fixed", "pixels"]
    assert [r.length for r in rows] == [None, None, 1, tok.max_tokens, None] and rows[0].epsilon == 0.1
    assert rows[2].mean_tokens == 1.0 and rows[3].mean_tokens == tok.max_tokens and rows[4].mean_tokens == patches
    assert 1.0 <= rows[0].mean_tokens <= tok.max_tokens
    labels = (torch.arange(24) % 3).tolist()
    for r in rows:  # per class, over all 24 images
        lengths = [encode_all(tok, data.images[i:i + 1], r.epsilon or 0.0, r.length).lengths.item()
                   if r.kind != "pixels" else r.mean_tokens for i in range(24)]
        assert r.class_tokens == pytest.approx([np.mean([n for n, c in zip(lengths, labels) if c == k])
                                                for k in range(3)])
        assert r.class_short == pytest.approx([np.mean([n <= 2 for n, c in zip(lengths, labels) if c == k])
                                               for k in range(3)])
    chunked, whole = encode_all(tok, data.images, 0.1, None, batch=5), tok.encode(data.images, epsilon=0.1)
    assert torch.equal(chunked.lengths, whole.lengths) and torch.allclose(chunked.tokens, whole.tokens, atol=1e-5)
    for r in rows:
        assert len(r.accuracies) == 2 and all(abs(6 * a - round(6 * a)) < 1e-5 for a in r.accuracies)  # 6 scored


def test_pixel_patches_cut_each_image_into_the_models_patches_row_by_row():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    enc = pixel_patches(images, 2)
    assert enc.tokens.shape == (2, 4, 12) and enc.lengths.tolist() == [4, 4] and bool(enc.mask.all())
    assert torch.equal(enc.tokens[1, 2], images[1, :, 2:4, 0:2].reshape(-1))  # 3rd patch: 2nd row, 1st column


def test_fixed_accuracy_is_interpolated_between_the_fixed_rows():
    rows = [DownstreamRow("karl", "karl eps=0.05", 0.05, None, 3.0, 0.9, 0.0, [0.9]),
            DownstreamRow("fixed", "fixed-2", None, 2, 2.0, 0.5, 0, []),
            DownstreamRow("fixed", "fixed-4", None, 4, 4.0, 0.7, 0.0, []),
            DownstreamRow("pixels", "pixels (64 patches)", None, None, 64.0, 1.0, 0.0, [])]
    assert fixed_accuracy_at(rows, 3.0) == pytest.approx(0.6)
    assert fixed_accuracy_at(rows, 4.0) == pytest.approx(0.7)
    assert math.isnan(fixed_accuracy_at(rows, 1.5)) and math.isnan(fixed_accuracy_at(rows[:1], 3.0))


def test_the_table_lines_up_and_compares_karl_rows_only():
    rows = [DownstreamRow("karl", "karl eps=0.05", 0.05, None, 3.0, 0.9, 0.01, []),
            DownstreamRow("fixed", "fixed-2", None, 2, 2.0, 0.5, 0.0, []),
            DownstreamRow("fixed", "fixed-4", None, 4, 4.0, 0.7, 0.0, []),
            DownstreamRow("pixels", "pixels (64 patches)", None, None, 64.0, 0.8, 0.0, [])]
    report = DownstreamReport("shapes", 8, "auto", ["a", "b"], 6, 2, ProbeSettings(), rows)
    lines = format_table(report).splitlines()
    assert lines[0].startswith("data shapes: 8 images, 2 classes, probe trained on 6 and scored on 2")
    header, body = lines[2], lines[3:7]
    end = header.index("mean tokens") + len("mean tokens")
    assert [line[end - 5:end] for line in body] == [" 3.00", " 2.00", " 4.00", "64.00"]  # one column
    assert [line.split()[-1] for line in body] == ["0.600", "0.000", "0.000", "0.000"]  # interpolated: karl only
    assert all(line == line.rstrip() for line in lines)
    rows[0].class_tokens, rows[0].class_short = [1.5, 12.0], [1.0, 0.25]
    block = format_table(report, per_class=True).splitlines()[-3:]
    assert block[0] == "KARL per class, all images: mean tokens / share kept to at most 2 tokens"
    assert block[1].split() == ["setting", "a", "b"] and block[2].split() == ["karl", "eps=0.05", "1.50", "/",
                                                                              "100%", "12.00", "/", "25%"]
