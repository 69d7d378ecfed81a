"""The synthetic data set: captioned images whose content a program can check.

The spec is docs/synth.md; this file is its one implementation and the one home of the palette, the
shapes and the caption grammar (the judge imports them from here).

Every sample is a pure function of (seed, index): its own seed is drawn from numpy's SeedSequence of the
pair, and the record stores that seed, so an image can be redrawn from it (given the same size and
kinds); the output does not depend on how the work is split. Shapes and text are drawn without
anti-aliasing, so object pixels carry exact palette colours; only the background gets noise or a gradient.

Sizes are (H, W) throughout; the record's "size" is [H, W] and "bbox" is [x0, y0, x1, y1], x1/y1 exclusive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from arlm.assets import bold_font, read_text
from arlm.errors import UserError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
KINDS = ("single", "count", "relation", "text")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {"two": 2, "three": 3}

# Background perturbations stay far inside the gap to the next palette entry (the closest pair,
# gray vs purple/green, is > 60 apart per channel on some axis): a pixel never changes name.
MAX_NOISE = 6
MAX_GRADIENT = 10
MIN_GAP = 2  # background pixels between any two objects' boxes
MIN_SIZE = 16


def article(word: str) -> str:
    # Every palette and background name that starts with a vowel letter also starts with a vowel sound.
    return "an" if word[0] in "aeiou" else "a"


def single_prompts() -> list[str]:
    """Every single-object caption without a background: 6 colours x 3 shapes (the training stages' sample grids)."""
    return [f"{article(c)} {c} {s}" for s in SHAPES for c in COLORS]


def parse_size(text: str | int | Sequence[int]) -> tuple[int, int]:
    """'64' -> (64, 64); '64x128' -> (64, 128) as (H, W)."""
    if isinstance(text, int):
        h = w = text
    elif isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise UserError(f"size must be N or HxW, got {text!r}")
        h, w = int(parts[0]), int(parts[-1])
    else:
        h, w = (int(v) for v in text)
    if min(h, w) < MIN_SIZE or max(h, w) > 4096:
        raise UserError(f"image sides must be in [{MIN_SIZE}, 4096], got {h}x{w}")
    return h, w


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    return tuple(read_text("words.txt").split())


@lru_cache(maxsize=4096)
def _fit_font(word: str, h: int, w: int) -> int:
    """Largest font size whose rendered word fits inside the image with a small margin."""
    margin = max(2, min(h, w) // 16)
    lo, hi = 4, 2 * h
    while lo < hi:
        mid = (lo + hi + 1) // 2
        x0, y0, x1, y1 = bold_font(mid).getbbox(word)
        if x1 - x0 <= w - 2 * margin and y1 - y0 <= h - 2 * margin:
            lo = mid
        else:
            hi = mid - 1
    return lo


def draw_word(draw: ImageDraw.ImageDraw, word: str, h: int, w: int, fill) -> None:
    """The word as the set draws it: bold, at the largest size that fits, centred, and without
    anti-aliasing, so that its pixels carry the exact colour `fill`."""
    font = bold_font(_fit_font(word, h, w))
    x0, y0, x1, y1 = font.getbbox(word)
    draw.fontmode = "1"
    draw.text(((w - (x1 - x0)) // 2 - x0, (h - (y1 - y0)) // 2 - y0), word, fill=fill, font=font)


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------------
# drawing


def _background(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    style = rng.integers(3)  # plain, noise, gradient
    if style == 1:
        img += rng.integers(-MAX_NOISE, MAX_NOISE + 1, size=(h, w, 1))
    elif style == 2:
        amp = rng.uniform(-MAX_GRADIENT, MAX_GRADIENT)
        ramp = np.linspace(-amp, amp, w if rng.integers(2) else h, dtype=np.float32)
        img += ramp[None, :, None] if ramp.size == w else ramp[:, None, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, box: tuple[int, int, int, int], h: int, w: int) -> Image.Image:
    x0, y0, x1, y1 = box
    mask = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=1)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=1)
    else:  # isosceles, apex up
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=1)
    return mask


def _apart(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] - b[2] >= MIN_GAP or b[0] - a[2] >= MIN_GAP or a[1] - b[3] >= MIN_GAP or b[1] - a[3] >= MIN_GAP


def _place(rng: np.random.Generator, n: int, h: int, w: int, smax_frac: float, relation: str | None = None):
    """n square boxes, side >= min(h, w)/5, pairwise apart; for a relation, box 0 on that side of box 1."""
    side = min(h, w)
    smin = math.ceil(side / 5)
    smax = max(smin, int(side * smax_frac))
    for _ in range(2000):
        boxes = []
        for _ in range(n):
            s = int(rng.integers(smin, smax + 1))
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            boxes.append((x0, y0, x0 + s, y0 + s))
        if not all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            continue
        if relation is not None and not relation_holds(boxes[0], boxes[1], relation, h, w, min_frac=1 / 8):
            continue
        return boxes
    raise RuntimeError(f"could not place {n} objects in a {h}x{w} image")  # unreachable for side >= 16


def box_center(box: Sequence[int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def relation_holds(a: Sequence[int], b: Sequence[int], relation: str, h: int, w: int, min_frac: float) -> bool:
    """Is box a on the `relation` side of box b, centres at least min_frac of the image side apart?"""
    (ax, ay), (bx, by) = box_center(a), box_center(b)
    if relation == "left of":
        return bx - ax >= min_frac * w
    if relation == "right of":
        return ax - bx >= min_frac * w
    if relation == "above":
        return by - ay >= min_frac * h
    if relation == "below":
        return ay - by >= min_frac * h
    raise ValueError(f"unknown relation {relation!r}")


# ------------------------------------------------------------------------------------------------------
# samples


@dataclass(frozen=True)
class Sample:
    key: str
    image: Image.Image
    record: dict

    @property
    def caption(self) -> str:
        return self.record["caption"]


def word_list(spec: str | None, exclude: str | None = None) -> tuple[str, ...] | None:
    """The words a set draws from: `spec` (a file of words, or a comma-separated list; None: the shipped list)
    less `exclude` (the same forms), or None for the shipped list unchanged. Words are 2 to 6 capitals A-Z."""
    def read(text: str) -> list[str]:
        path = Path(text)
        items = path.read_text().split() if path.is_file() else [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in items if not re.fullmatch(r"[A-Z]{2,6}", w)]
        if bad:
            raise UserError(f"words must be 2 to 6 capital letters A-Z, got {bad[0]!r}")
        return items

    if spec is None and exclude is None:
        return None
    chosen = read(spec) if spec is not None else list(words())
    dropped = set(read(exclude)) if exclude is not None else set()
    kept = tuple(dict.fromkeys(w for w in chosen if w not in dropped))
    if not kept:
        raise UserError("no words left to draw from (--words less --exclude-words is empty)")
    return kept


def make_sample(seed: int, size: tuple[int, int], kinds: Sequence[str] = KINDS,
                vocabulary: Sequence[str] | None = None) -> tuple[Image.Image, dict]:
    """One image and its attribute record, a pure function of (seed, size, kinds, vocabulary): the text kind
    draws its word from `vocabulary` (None: the shipped list)."""
    h, w = size
    rng = np.random.default_rng(seed)
    kind = kinds[int(rng.integers(len(kinds)))]
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    say_bg = bool(rng.integers(2))
    img = Image.fromarray(_background(rng, bg, h, w))
    draw = ImageDraw.Draw(img)
    colors, shapes = list(COLORS), list(SHAPES)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    objects, relation, word = [], None, None
    if kind == "text":
        word, color = pick(vocabulary or words()), pick(colors)
        draw_word(draw, word, h, w, COLORS[color])
        caption = f'the word "{word}" in {color}'
    else:
        if kind == "single":
            specs, smax = [(pick(colors), pick(shapes))], 0.5
        elif kind == "count":
            n = int(rng.integers(2, 4))
            specs, smax = [(pick(colors), pick(shapes))] * n, 0.3
        else:  # relation: two objects that differ, so "the first" is well defined
            relation = pick(RELATIONS)
            a = (pick(colors), pick(shapes))
            b = a
            while b == a:
                b = (pick(colors), pick(shapes))
            specs, smax = [a, b], 0.35
        boxes = _place(rng, len(specs), h, w, smax, relation)
        for (color, shape), box in zip(specs, boxes):
            mask = _shape_mask(shape, box, h, w)
            img.paste(COLORS[color], (0, 0), mask)
            objects.append({"shape": shape, "color": color, "bbox": list(mask.getbbox())})
        (c0, s0) = specs[0]
        if kind == "single":
            caption = f"{article(c0)} {c0} {s0}"
        elif kind == "count":
            caption = f"{[k for k, v in NUMBERS.items() if v == len(specs)][0]} {c0} {s0}s"
        else:
            c1, s1 = specs[1]
            caption = f"{article(c0)} {c0} {s0} {relation} {article(c1)} {c1} {s1}"
    if say_bg:
        caption += f" on {article(bg)} {bg} background"
    record = {
        "kind": kind,
        "caption": caption,
        "size": [h, w],
        "background": bg,
        "objects": objects,
        "relation": relation,
        "word": word,
        "seed": seed,
    }
    return img, record


def check_kinds(kinds: Sequence[str]) -> None:
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"kinds must be a non-empty subset of {','.join(KINDS)}, got {','.join(kinds) or 'nothing'}")


def generate(n: int, size: tuple[int, int], seed: int = 0, kinds: Sequence[str] = KINDS, start: int = 0,
             vocabulary: Sequence[str] | None = None) -> Iterator[Sample]:
    """Samples start..start+n-1 of the set named by (seed, size, kinds, vocabulary)."""
    check_kinds(kinds)
    for i in range(start, start + n):
        img, record = make_sample(sample_seed(seed, i), size, tuple(kinds), vocabulary)
        yield Sample(key=f"{i:08d}", image=img, record=record)
