"""Length-grouped batches for downstream models (kolmotok.length_batches, Encoding.take)."""

import pytest
import torch

import kolmotok
from kolmotok.api import Tokenizer


def slots(lengths: torch.Tensor, batches: list[torch.Tensor]) -> int:
    """Token positions processed when each batch is padded to its own longest sequence."""
    return sum(len(b) * int(lengths[b].max()) for b in batches)


LENGTHS = torch.tensor([1, 32, 2, 1, 5, 32, 1, 3, 2, 1, 8, 1, 4, 1, 2, 16, 1, 1, 2, 6])


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_image_once_and_no_batch_over_its_limits(shuffle):
    batches = kolmotok.length_batches(LENGTHS, batch_size=4, max_tokens=40, shuffle=shuffle, seed=3)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(LENGTHS)))
    assert all(1 <= len(b) <= 4 for b in batches)
    assert all(len(b) * int(LENGTHS[b].max()) <= 40 for b in batches)
    # a token limit lets short sequences travel in bigger batches than long ones
    wide = kolmotok.length_batches(LENGTHS, batch_size=20, max_tokens=64, shuffle=shuffle)
    sizes = {int(LENGTHS[b].max()): len(b) for b in wide}
    assert sizes[min(sizes)] > sizes[16] > sizes[32] == 2


def test_grouping_by_length_pads_less_than_random_batches():
    """The point of it: the same number of images per batch, far fewer padded slots."""
    grouped = kolmotok.length_batches(LENGTHS, batch_size=5)
    random = list(torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).split(5))
    assert slots(LENGTHS, grouped) < 0.6 * slots(LENGTHS, random)
    unshuffled = kolmotok.length_batches(LENGTHS, batch_size=5, shuffle=False)
    assert [LENGTHS[b].max().item() for b in unshuffled] == [1, 2, 5, 32]  # shortest first
    assert slots(LENGTHS, unshuffled) == slots(LENGTHS, grouped)


def test_lengths_may_be_a_list_or_an_array_such_as_a_token_tables_column():
    import numpy as np

    expected = [b.tolist() for b in kolmotok.length_batches(LENGTHS, 4, seed=2)]
    for given in (LENGTHS.tolist(), LENGTHS.numpy().astype(np.int32)):
        assert [b.tolist() for b in kolmotok.length_batches(given, 4, seed=2)] == expected


def test_the_seed_decides_the_order():
    a, b = (kolmotok.length_batches(LENGTHS, 3, seed=7) for _ in range(2))
    c = kolmotok.length_batches(LENGTHS, 3, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("lengths, kwargs, message", [
    (LENGTHS.float(), {"batch_size": 4}, "1-D tensor of integers"),
    (LENGTHS[None], {"batch_size": 4}, "1-D tensor of integers"),
    (torch.tensor([2, -1]), {"batch_size": 4}, ">= 0"),
    (LENGTHS, {"batch_size": 0}, "batch_size"),
    (LENGTHS, {"batch_size": 4, "max_tokens": 31}, r"longest sequence \(32\)"),
])
def test_bad_arguments_say_what_is_wrong(lengths, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kolmotok.length_batches(lengths, **kwargs)


def test_take_cuts_a_batch_to_its_longest_and_decodes_the_same(halting_model, varied_images):
    tok = Tokenizer(halting_model)
    enc = tok.encode(varied_images, epsilon=0.1)
    assert len(enc.lengths.unique()) > 2
    full = tok.decode(enc)
    for idx in kolmotok.length_batches(enc.lengths, batch_size=4, shuffle=False):
        part = enc.take(idx)
        assert part.budget == int(enc.lengths[idx].max()) == part.tokens.shape[1]
        assert torch.equal(part.lengths, enc.lengths[idx]) and torch.equal(part.mask.sum(1), part.lengths)
        torch.testing.assert_close(tok.decode(part), full[idx], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="indices must be in 0..15"):
        enc.take([0, 16])
    with pytest.raises(ValueError, match="non-empty"):
        enc.take([])
