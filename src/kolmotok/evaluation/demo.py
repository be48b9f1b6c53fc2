"""``kolmotok demo``: the tokenizer on built-in images of rising complexity, as a PNG sheet."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..api import Tokenizer
from ..data import eval_set
from ..data.images import to_uint8
from ..data.shapes import render
from ..io import atomic_path
from .metrics import l1_per_image


def demo_images(size: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Photo test crops, a linear gradient, shapes of rising complexity, a flat image and pure noise."""
    g = torch.Generator().manual_seed(seed)
    photos = eval_set("photos:test", size, 8, seed=seed).images
    items = [(f"photo {i}", im) for i, im in enumerate(photos)]
    items += [("gradient", render("gradient", size, g))]
    items += [(f"{k} shapes", render("primitives", size, g, k)) for k in (1, 2, 4, 8)]
    items += [("flat", torch.full((3, size, size), 0.4)), ("noise", torch.rand(3, size, size, generator=g))]
    names, images = zip(*items)
    return torch.stack(images), list(names)


def contact_sheet(originals: torch.Tensor, recons: torch.Tensor, captions: list[str], scale: int = 4) -> Image.Image:
    """Columns of (original over reconstruction) with a caption under each."""
    n, _, h, w = originals.shape
    cell_w, cell_h, text_h = w * scale + 8, 2 * h * scale + 4, 26
    sheet = Image.new("RGB", (cell_w * n + 8, cell_h + text_h + 8), "white")
    draw = ImageDraw.Draw(sheet)

    def to_pil(t: torch.Tensor) -> Image.Image:
        return Image.fromarray(to_uint8(t)).resize((w * scale, h * scale), Image.NEAREST)

    for i in range(n):
        x = 8 + i * cell_w
        sheet.paste(to_pil(originals[i]), (x, 4))
        sheet.paste(to_pil(recons[i]), (x, 8 + h * scale))
        for j, line in enumerate(captions[i].split("\n")):
            draw.text((x, cell_h + 6 + 11 * j), line, fill="black")
    return sheet


def run_demo(tok: Tokenizer, out_dir: Path, epsilon: float = 0.05) -> str:
    images, names = demo_images(tok.image_size)
    enc = tok.encode(images, epsilon=epsilon)
    recon = tok.decode(enc).cpu()
    errors = l1_per_image(recon, images)
    order = torch.argsort(enc.lengths.cpu(), stable=True)
    captions = [f"{names[i]}\n{int(enc.lengths[i])} tok, l1 {errors[i]:.3f}" for i in order]
    sheet = contact_sheet(images[order], recon[order], captions)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.png"
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    rows = [f"kolmotok demo: eps = {epsilon}, T_max = {tok.max_tokens}, image size {tok.image_size}",
            f"{'image':<12} {'tokens':>6} {'l1':>7}  meets eps", "-" * 38]
    for i in order:
        rows.append(f"{names[i]:<12} {int(enc.lengths[i]):>6} {float(errors[i]):>7.4f}  "
                    f"{'fixed-length' if epsilon == 0 else 'yes' if errors[i] <= epsilon else 'no'}")
    rows.append(f"sheet (originals over reconstructions, sorted by tokens kept): {path}")
    return "\n".join(rows)
