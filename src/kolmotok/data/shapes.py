"""``shapes``: procedural images whose complexity is known.

Kinds and their ground-truth complexity (an integer that orders them):

* ``flat``       one colour                              -> 0
* ``gradient``   a linear blend of two colours           -> 1
* ``primitives`` k discs/rectangles on a flat background -> 1 + k   (k = 1..MAX_PRIMITIVES)
* ``noise``      i.i.d. uniform pixels                   -> NOISE_COMPLEXITY (the maximum)

Everything is drawn from the ``torch.Generator`` passed in, so a seed fixes the images.
The data spec ``shapes:KIND`` (for example ``shapes:gradient``) draws one kind only, to weight a
kind up in a training mixture (``photos@3+shapes@1+shapes:gradient@0.5``) or to evaluate it alone.
"""

from __future__ import annotations

import torch

MAX_PRIMITIVES = 8
NOISE_COMPLEXITY = MAX_PRIMITIVES + 4
KINDS = ("flat", "gradient", "primitives", "noise")
KIND_PROBS = torch.tensor([0.15, 0.15, 0.6, 0.1])


def _colour(g: torch.Generator) -> torch.Tensor:
    return torch.rand(3, 1, 1, generator=g)


def render(kind: str, size: int, g: torch.Generator, k: int = 0) -> torch.Tensor:
    """One (3, size, size) image of ``kind`` (``k`` primitives for kind 'primitives')."""
    if kind == "flat":
        return _colour(g).expand(3, size, size).clone()
    if kind == "noise":
        return torch.rand(3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    if kind == "gradient":
        angle = torch.rand((), generator=g) * 2 * torch.pi
        t = (xx * angle.cos() + yy * angle.sin())
        t = (t - t.min()) / (t.max() - t.min()).clamp(min=1e-6)
        return _colour(g) * (1 - t) + _colour(g) * t
    if kind == "primitives":
        img = _colour(g).expand(3, size, size).clone()
        for _ in range(k):
            cy, cx = torch.rand(2, generator=g)
            r = 0.08 + 0.22 * torch.rand((), generator=g)
            if bool(torch.rand((), generator=g) < 0.5):
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                ry, rx = r * (0.5 + torch.rand(2, generator=g))
                mask = ((yy - cy).abs() < ry) & ((xx - cx).abs() < rx)
            img = torch.where(mask, _colour(g), img)
        return img
    raise ValueError(f"unknown shapes kind {kind!r}; known: {KINDS}")


def _kind_probs(kind: str | None) -> torch.Tensor:
    if kind is None:
        return KIND_PROBS
    if kind not in KINDS:
        raise ValueError(f"shapes:{kind}: unknown kind; known: {', '.join(KINDS)}")
    return torch.tensor([float(k == kind) for k in KINDS])


def draw(n: int, size: int, g: torch.Generator, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n random shapes images (n, 3, S, S) and their complexities (n,) long; all of one ``kind``
    if given, else the kinds drawn with ``KIND_PROBS``."""
    probs = _kind_probs(kind)
    images, complexity = torch.empty(n, 3, size, size), torch.empty(n, dtype=torch.long)
    for i in range(n):
        kind_i = KINDS[int(torch.multinomial(probs, 1, generator=g))]
        k = int(torch.randint(1, MAX_PRIMITIVES + 1, (1,), generator=g)) if kind_i == "primitives" else 0
        images[i] = render(kind_i, size, g, k)
        complexity[i] = {"flat": 0, "gradient": 1, "primitives": 1 + k, "noise": NOISE_COMPLEXITY}[kind_i]
    return images, complexity


class Shapes:
    def __init__(self, image_size: int, kind: str | None = None) -> None:
        _kind_probs(kind)  # validates
        self.image_size, self.kind = image_size, kind
        self.name = "shapes" if kind is None else f"shapes:{kind}"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return draw(n, self.image_size, generator, self.kind)[0]
