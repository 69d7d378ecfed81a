"""Pictures for people: contact sheets of images with their captions (data inspection, sample grids)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw

from arlm.assets import bold_font


MARKS = {True: (30, 160, 60), False: (210, 40, 40)}  # accepted / rejected frames


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str] | None = None, cols: int = 8,
                  cell: int = 128, label_lines: int = 4, marks: Sequence[bool | None] | None = None) -> Image.Image:
    """Images in a grid, each scaled (nearest: pixels stay visible) to fit a cell, caption below it; `marks`
    frames each image green (True: the judge accepts it) or red (False)."""
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
        if marks is not None and marks[i] is not None:
            draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=MARKS[bool(marks[i])], width=3)
        if captions:
            lines = textwrap.wrap(captions[i], chars)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x, y + cell + 1 + j * (px + 2)), line, fill=(20, 20, 20), font=font)
    return sheet


PLOT_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def line_plot(rows: Sequence[dict], keys: Sequence[str], path, log_y: bool = False, x_key: str = "step",
              size: tuple[int, int] = (640, 360)) -> None:
    """Curves of `keys` against `x_key` from metric rows (missing keys skipped), with axes and a legend.
    Drawn with Pillow so that plots need no plotting library."""
    import math

    series = {k: [(r[x_key], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and
                  math.isfinite(r[k]) and (r[k] > 0 or not log_y)] for k in keys}
    series = {k: v for k, v in series.items() if v}
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = bold_font(11)
    left, right, top, bottom = 60, 10, 24, 26
    if not series:
        draw.text((left, top), "no data yet", fill=(0, 0, 0), font=font)
        img.save(path)
        return
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [x for s in series.values() for x, _ in s]
    ys = [f(y) for s in series.values() for _, y in s]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (f(y) - y0) / (y1 - y0) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i in range(5):  # y ticks
        yv = y0 + (y1 - y0) * i / 4
        yy = h - bottom - (yv - y0) / (y1 - y0) * (h - top - bottom)
        label = f"{10 ** yv:.3g}" if log_y else f"{yv:.3g}"
        draw.line([left - 4, yy, left, yy], fill=(0, 0, 0))
        draw.text((4, yy - 6), label, fill=(0, 0, 0), font=font)
    for i in range(5):  # x ticks
        xv = x0 + (x1 - x0) * i / 4
        xx = left + (xv - x0) / (x1 - x0) * (w - left - right)
        draw.line([xx, h - bottom, xx, h - bottom + 4], fill=(0, 0, 0))
        draw.text((xx - 10, h - bottom + 6), f"{xv:.0f}" if x1 - x0 >= 8 else f"{xv:.3g}", fill=(0, 0, 0), font=font)
    legend_x = left + 8
    for i, (k, pts) in enumerate(series.items()):
        colour = PLOT_COLOURS[i % len(PLOT_COLOURS)]
        draw.line([px(x, y) for x, y in pts] if len(pts) > 1 else [px(*pts[0]), px(*pts[0])], fill=colour, width=2)
        if len(pts) <= 20:  # few points: mark them
            for x, y in pts:
                cx, cy = px(x, y)
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        draw.text((legend_x, 6), k, fill=colour, font=font)
        legend_x += draw.textlength(k, font=font) + 16
    draw.text((w - right - 40, h - 14), x_key, fill=(0, 0, 0), font=font)
    img.save(path)
