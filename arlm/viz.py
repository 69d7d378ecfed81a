"""Pictures for people: contact sheets of images with their captions (data inspection, sample grids)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw

from arlm.assets import bold_font


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str] | None = None, cols: int = 8,
                  cell: int = 128, label_lines: int = 4) -> Image.Image:
    """Images in a grid, each scaled (nearest: pixels stay visible) to fit a cell, caption below it."""
    if not images:
        raise ValueError("no images for a contact sheet")
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    px = max(8, cell // 12)
    font = bold_font(px)
    label_h = (px + 2) * label_lines if captions else 0
    pad = 4
    sheet = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(8, int(cell / (px * 0.62)))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + label_h + pad)
        scale = cell / max(img.size)
        thumb = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                          Image.NEAREST if scale >= 1 else Image.BICUBIC)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        if captions:
            lines = textwrap.wrap(captions[i], chars)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x, y + cell + 1 + j * (px + 2)), line, fill=(20, 20, 20), font=font)
    return sheet
