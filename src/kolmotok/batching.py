"""Batches of variable-length token sequences that pay only for the padding they need.

Fewer tokens per image save a downstream model compute only where its batches are cut to
their own longest sequence: a random batch of KARL encodings usually still holds one image
that kept all its tokens, so the whole batch is padded to the budget. Grouping images of
similar length into a batch (bucketing by length, as sequence models for text do) keeps the
padding small. ``benchmarks/downstream_cost.py`` measures what it saves.

>>> enc = tok.encode(images, epsilon=0.08)
>>> for epoch in range(epochs):
...     for idx in kolmotok.length_batches(enc.lengths, batch_size=128, seed=epoch):
...         part = enc.take(idx)        # tokens cut to the longest kept in this batch
...         logits = model(part.tokens, part.mask)
"""

from __future__ import annotations

import torch


def length_batches(lengths, batch_size: int, *, max_tokens: int | None = None, shuffle: bool = True,
                   seed: int = 0) -> list[torch.Tensor]:
    """Indices into ``lengths`` grouped into batches of images with similar lengths.

    lengths: (N,) tokens kept per image (``Encoding.lengths``), integers >= 0.
    batch_size: at most this many images per batch.
    max_tokens: also at most this many padded token slots per batch (images x the batch's
        longest length), so batches of short sequences hold more images; None: no such limit.
    shuffle: break ties between equal lengths at random and return the batches in random
        order (seeded by ``seed``; pass the epoch for a new order each epoch). False: batches
        from shortest to longest, ties in index order.

    Returns a list of (b,) long index tensors; every index appears in exactly one batch.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D tensor of integers, got {tuple(lengths.shape)} {lengths.dtype}")
    if len(lengths) and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {int(lengths.min())}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    longest = int(lengths.max()) if len(lengths) else 0
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < max(longest, 1)):
        raise ValueError(f"max_tokens must be an integer no smaller than the longest sequence ({longest}), "
                         f"got {max_tokens!r}")
    g = torch.Generator().manual_seed(seed)
    ties = torch.randperm(len(lengths), generator=g) if shuffle else torch.arange(len(lengths))
    order = ties[torch.argsort(lengths.cpu()[ties], stable=True)]  # by length; equal lengths in `ties` order
    batches: list[list[int]] = [[]]
    for i, n in zip(order.tolist(), lengths.cpu()[order].tolist()):
        batch = batches[-1]
        # ascending order: the image being added is the batch's longest
        if batch and (len(batch) == batch_size or (max_tokens is not None and (len(batch) + 1) * n > max_tokens)):
            batches.append(batch := [])
        batch.append(i)
    out = [torch.tensor(b, dtype=torch.long) for b in batches if b]
    if shuffle:
        out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
    return out
