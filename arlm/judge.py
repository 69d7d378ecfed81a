"""The judge: does an image show what its caption says? For the synthetic caption grammar (docs/synth.md).

It measures every later stage (tokenizer reconstructions, generated images), so it sees only the pixels and
the caption, tolerates mild noise, blur, JPEG and colour drift, and rejects wrong content. Method:

1. the caption is parsed by a grammar built from `arlm.synth`'s palette, shapes and templates;
2. background: the median colour of the border pixels, named after the nearest background colour;
3. ink: each pixel is read as a mix of the background and one of the 6 object colours (its share t along the
   background-to-colour segment) and labelled with the colour whose segment passes nearest, if t >= 1/2 and
   that is within `color_dist`. Blurred edges keep their colour this way, and a global colour offset cancels;
4. objects: connected components of each label, small ones dropped (`min_area`), ones that blur has
   bridged split between their solid cores. The shape is the one whose moment signature (skewness,
   kurtosis-like and aspect ratios of the soft ink mass) lies nearest, "other" beyond `shape_tol`: unlike a
   thresholded outline, moments keep the apexes and corners that blur eats;
5. single / count / relation: the multiset of detected (colour, shape) must equal the caption's, nothing
   missing, nothing extra; a relation must hold between box centres by `relation_margin` of the side;
6. text: the most frequent ink must be the caption's colour; a grey mask of that ink (its measured colour,
   luma weighted) is cropped, sharpened, upscaled so letters are `ocr_height` px tall and read by tesseract
   (one line, A-Z); the read must equal the word exactly. Two more preprocessings are tried before rejecting.

The measurements behind these choices: scripts/judge_figures.py, and the notes at SIGNATURES and OCR_TRIES.
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from arlm import glyphs, ocr
from arlm.config import JudgeConfig
from arlm.errors import ConfigError
from arlm.synth import BACKGROUNDS, COLORS, KINDS, NUMBERS, RELATIONS, SHAPES, article, relation_holds

ImageLike = Image.Image | np.ndarray
OUTSIDE = "caption outside the synthetic grammar"


# ------------------------------------------------------------------------------------------------------
# caption grammar


@dataclass(frozen=True)
class Expectation:
    kind: str  # one of synth.KINDS
    objects: tuple[tuple[str, str], ...] = ()  # (color, shape) in caption order, repeated for a count
    relation: str | None = None
    word: str | None = None
    text_color: str | None = None
    background: str | None = None  # None: the caption does not say


def _alt(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


@lru_cache(maxsize=1)
def _grammar() -> dict[str, re.Pattern]:
    obj = rf"(?P<a{{i}}>an?) (?P<c{{i}}>{_alt(COLORS)}) (?P<s{{i}}>{_alt(SHAPES)})"
    tail = rf"(?: on (?P<bga>an?) (?P<bg>{_alt(BACKGROUNDS)}) background)?"
    templates = {
        "single": obj.format(i=0),
        "count": rf"(?P<n>{_alt(NUMBERS)}) (?P<c0>{_alt(COLORS)}) (?P<s0>{_alt(SHAPES)})s",
        "relation": rf"{obj.format(i=0)} (?P<rel>{_alt(RELATIONS)}) {obj.format(i=1)}",
        "text": rf'the word "(?P<word>[A-Z]{{2,6}})" in (?P<c0>{_alt(COLORS)})',
    }
    assert set(templates) == set(KINDS)
    return {kind: re.compile(body + tail) for kind, body in templates.items()}


def parse_caption(caption: str) -> Expectation | None:
    """The caption's claims, or None when it is not a sentence of the synthetic grammar."""
    text = " ".join(caption.split())
    for kind, pattern in _grammar().items():
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = m.groupdict()
        # articles must agree with the word they precede, as synth writes them
        for a, word in (("a0", "c0"), ("a1", "c1"), ("bga", "bg")):
            if g.get(a) is not None and g[a] != article(g[word]):
                return None
        bg = g["bg"]
        if kind == "text":
            return Expectation(kind, word=g["word"], text_color=g["c0"], background=bg)
        if kind == "single":
            return Expectation(kind, ((g["c0"], g["s0"]),), background=bg)
        if kind == "count":
            return Expectation(kind, ((g["c0"], g["s0"]),) * NUMBERS[g["n"]], background=bg)
        return Expectation(kind, ((g["c0"], g["s0"]), (g["c1"], g["s1"])), relation=g["rel"], background=bg)
    return None


# ------------------------------------------------------------------------------------------------------
# pixels


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kind: str | None  # None: caption outside the grammar
    reason: str
    background: str | None = None  # detected background name (None: none close enough)
    # detected objects: {"color", "shape", "bbox": [x0, y0, x1, y1], "area": px, "fit": signature distance}
    objects: tuple[dict, ...] = ()
    ocr: str | None = None  # what tesseract read (text captions)
    ink: str | None = None  # text captions: the most frequent ink colour (None: no ink)
    word: str | None = None  # text captions: the word asked for


INK = np.array(list(COLORS.values()), dtype=np.float32)  # (6, 3) object colours, in COLORS order


def _as_rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxWx3, got shape {a.shape}")
    return a[:, :, :3]


def _background(rgb: np.ndarray, cfg: JudgeConfig) -> tuple[str | None, np.ndarray]:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    median = np.median(border, axis=0)  # objects may touch the border, but never cover half of it
    names = list(BACKGROUNDS)
    d = np.linalg.norm(np.array(list(BACKGROUNDS.values()), np.float32) - median, axis=1)
    return (names[int(d.argmin())] if d.min() <= cfg.bg_dist else None), median


def _mix(rgb: np.ndarray, bg: np.ndarray, inks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel as bg + t * (ink - bg) for each ink: t (H, W, K) in [0, 1] and the residual distance (H, W, K).

    Blur, resampling and JPEG turn an edge pixel into a mix of object and background colour; measuring along
    the background-to-ink segment keeps it, where nearest-palette naming would call it unknown or another
    colour (a red-white mix is nearer orange than red). Measuring from the image's own background also
    cancels a global colour offset.
    """
    v = inks - bg  # (K, 3)
    p = rgb.astype(np.float32) - bg  # (H, W, 3)
    t = np.clip(p @ v.T / np.maximum((v * v).sum(1), 1.0), 0, 1)  # (H, W, K); ink == background: t = 0
    off = np.linalg.norm(p[..., None, :] - t[..., None] * v, axis=-1)  # (H, W, K)
    return t, off


def _label(rgb: np.ndarray, bg: np.ndarray, cfg: JudgeConfig) -> tuple[np.ndarray, np.ndarray]:
    """label (H, W): index into COLORS of the ink each pixel is at least half made of, -1 for background or
    unknown; ink (H, W, 6): each pixel's share of each ink, 0 where the pixel is no mix of it and the background."""
    t, off = _mix(rgb, bg, INK)
    far = off > cfg.color_dist
    t[far] = 0
    off[far | (t < 0.5)] = np.inf  # below half ink a pixel belongs to the background: an edge sits at 0.5
    label = off.argmin(-1)
    label[np.isinf(off.min(-1))] = -1
    return label, t


# Shape signatures from the moments of an object's ink mass (x right, y down, about the centroid):
# skew = mu03 / mu02^1.5, R = mu22 / (mu20 mu02), A = mu20 / mu02, K = mass / (6 (mu20 + mu02)),
# then mu30 / mu20^1.5 and mu11 / sqrt(mu20 mu02), 0 for shapes symmetric about a vertical axis.
# Values for the continuous shapes: a square has independent uniform marginals (R = 1, K = 1); a disc of
# radius r has mu20 = r^2/4, mu22 = r^4/24 (R = 2/3, K = pi/3); an apex-up triangle of base and height s
# has mu20 = s^2/24, mu02 = s^2/18, mu22 = s^4/540 (R = 0.8, A = 0.75, K = 6/7) and the skew of a
# linearly rising density, -2 sqrt(2)/5. Unlike a box-relative profile these survive blur: blur keeps the
# mass and centroid and adds only its small variance to the moments, where thresholding eats apexes and
# corners (measured on 2x down-up resizes and JPEG: see scripts/judge_figures.py).
SIGNATURES = {
    "square": (0.0, 1.0, 1.0, 1.0, 0.0, 0.0),
    "circle": (0.0, 2 / 3, 1.0, np.pi / 3, 0.0, 0.0),
    "triangle": (-2 * np.sqrt(2) / 5, 0.8, 0.75, 6 / 7, 0.0, 0.0),
}
assert set(SIGNATURES) == set(SHAPES)


def _signature(mass: np.ndarray) -> np.ndarray | None:
    ys, xs = np.indices(mass.shape, dtype=np.float64)
    m = mass.sum()
    dx, dy = xs - (mass * xs).sum() / m, ys - (mass * ys).sum() / m

    def mu(p: int, q: int) -> float:
        return float((mass * dx**p * dy**q).sum() / m)

    mu20, mu02 = mu(2, 0), mu(0, 2)
    if min(mu20, mu02) < 0.25:  # a line, one pixel thick: no shape
        return None
    return np.array([mu(0, 3) / mu02**1.5, mu(2, 2) / (mu20 * mu02), mu20 / mu02, m / (6 * (mu20 + mu02)),
                     mu(3, 0) / mu20**1.5, mu(1, 1) / np.sqrt(mu20 * mu02)])


def _shape(mass: np.ndarray, cfg: JudgeConfig) -> tuple[str, float | None]:
    """The shape whose signature is nearest the mass's, "other" beyond shape_tol; and that distance."""
    sig = _signature(mass)
    if sig is None:
        return "other", None
    dist = {s: float(np.linalg.norm(sig - np.array(ref))) for s, ref in SIGNATURES.items()}
    best = min(dist, key=dist.get)
    return (best if dist[best] <= cfg.shape_tol else "other"), dist[best]


EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a thin triangle apex stays attached


def _parts(mine: np.ndarray, solid: np.ndarray, min_seed: float) -> np.ndarray:
    """Connected components of `mine`, each split between the solid seeds it holds (two or more when blur
    or JPEG has bridged the 2-px gap between two objects of one colour): (H, W) part ids, 0 for none."""
    comps, n = ndimage.label(mine, EIGHT)
    seeds, ns = ndimage.label(solid, EIGHT)
    big = np.flatnonzero(ndimage.sum_labels(solid, seeds, np.arange(1, ns + 1)) >= min_seed) + 1
    seeds[~np.isin(seeds, big)] = 0
    parts, nxt = np.zeros_like(comps), 1
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        comp = comps[sl] == k
        inner = np.unique(seeds[sl][comp])
        inner = inner[inner > 0]
        if len(inner) < 2:
            parts[sl][comp] = nxt
            nxt += 1
            continue
        # each pixel goes to its nearest seed
        _, (iy, ix) = ndimage.distance_transform_edt(~np.isin(seeds[sl], inner), return_indices=True)
        nearest = seeds[sl][iy, ix]
        for j in inner:
            parts[sl][comp & (nearest == j)] = nxt
            nxt += 1
    return parts


def _objects(label: np.ndarray, ink: np.ndarray, cfg: JudgeConfig) -> list[dict]:
    h, w = label.shape
    min_px = cfg.min_area * (min(h, w) / 5) ** 2
    found = []
    for ci, color in enumerate(COLORS):
        mine = label == ci
        if mine.sum() < min_px:
            continue
        t = ink[..., ci]
        parts = _parts(mine, mine & (t >= cfg.seed_level), min_px / 2)
        # the soft rim of an object (blurred edge pixels under half ink) is part of its mass: give every pixel
        # near some part to the nearest one
        _, (iy, ix) = ndimage.distance_transform_edt(parts == 0, return_indices=True)
        owner = parts[iy, ix]
        for j, (ys, xs) in enumerate(ndimage.find_objects(parts), start=1):
            area = int(ndimage.binary_fill_holes(parts[ys, xs] == j).sum())
            if area < min_px:
                continue
            y0, y1, x0, x1 = max(ys.start - 2, 0), ys.stop + 2, max(xs.start - 2, 0), xs.stop + 2
            near = ndimage.binary_dilation(parts[y0:y1, x0:x1] == j, EIGHT, iterations=2) & (owner[y0:y1, x0:x1] == j)
            shape, fit = _shape(t[y0:y1, x0:x1] * near, cfg)
            found.append({"color": color, "shape": shape, "bbox": [xs.start, ys.start, xs.stop, ys.stop],
                          "area": area, "fit": None if fit is None else round(fit, 3)})
    return found


# ------------------------------------------------------------------------------------------------------
# text


# JPEG keeps luma at full resolution but halves and coarsens chroma, so the text mask weighs luma double
# (YCbCr rows, ITU-R BT.601): purple on gray differs mostly in chroma, which JPEG smears.
LUMA2 = np.diag([2.0, 1.0, 1.0]).astype(np.float32) @ np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32)


def _text_alpha(rgb: np.ndarray, bg: np.ndarray, label: np.ndarray, ink: np.ndarray, ci: int) -> np.ndarray:
    """(H, W) in [0, 1]: how far each pixel has moved from the background towards the text's ink.

    The ink is measured (the median of the inkiest half of the text's pixels), not taken from the palette:
    JPEG and resampling shift the colour of strokes one or two pixels wide; and a grey-level mask keeps the
    sub-pixel shape of blurred glyphs that a hard label loses.
    """
    t, mine = ink[..., ci], label == ci
    inkiest = mine & (t >= np.median(t[mine]))
    v = LUMA2 @ (np.median(rgb[inkiest].astype(np.float32), axis=0) - bg)
    p = (rgb.astype(np.float32) - bg) @ LUMA2.T  # (H, W, 3)
    alpha = np.clip(p @ v / max(float(v @ v), 1.0), 0, 1)
    alpha[(label >= 0) & ~mine] = 0  # other inks are no part of this text
    return alpha


# (binarise at this level or None for grey, unsharp-mask amount at the image's resolution), tried in order
# until one reads the word. Measured on 100 words at 64x64 after scripts/judge_figures.py's degradations:
# the first alone reads 100% with noise, 97% after JPEG, 88% after a 2x down-up resize; the three together
# 100/98/95%. Stronger sharpening alone helps blur but costs 2% on noise; without sharpening, the resized
# words read 72-79%; words 32 or 48 px tall read 1-3% worse than 64.
OCR_TRIES = ((0.5, 1.0), (None, 2.0), (0.5, 2.0))


def _ocr_pages(alpha: np.ndarray, cfg: JudgeConfig) -> Iterator[Image.Image]:
    ys, xs = np.nonzero(alpha >= min(0.5, alpha.max() / 2))
    y0, y1, x0, x1 = max(ys.min() - 1, 0), ys.max() + 2, max(xs.min() - 1, 0), xs.max() + 2  # keep blurred rims
    blurred = ndimage.gaussian_filter(alpha, 1.0)
    scale = cfg.ocr_height / (y1 - y0)
    size = (max(1, round((x1 - x0) * scale)), cfg.ocr_height)
    pad = round(cfg.ocr_pad * cfg.ocr_height)
    for level, amount in OCR_TRIES:
        sharp = np.clip(alpha + amount * (alpha - blurred), 0, 1)[y0:y1, x0:x1]
        # mode "F" keeps fractions through the resize
        ink = np.clip(np.asarray(Image.fromarray(sharp.astype(np.float32)).resize(size, Image.BICUBIC)), 0, 1)
        if level is not None:
            ink = (ink > level).astype(np.float32)
        page = np.full((size[1] + 2 * pad, size[0] + 2 * pad), 255, np.uint8)
        # black on white, as tesseract is trained
        page[pad : pad + size[1], pad : pad + size[0]] = np.rint(255 * (1 - ink))
        yield Image.fromarray(page)


def _read_word(alpha: np.ndarray, word: str, cfg: JudgeConfig) -> str:
    """Tesseract's read of the word: the first read that equals `word`, else the first read."""
    first = None
    for page in _ocr_pages(alpha, cfg):
        text = ocr.read_line(page, cfg.tesseract, psm=7, whitelist="ABCDEFGHIJKLMNOPQRSTUVWXYZ").upper()
        if text == word:
            return text
        first = text if first is None else first
    return first


# ------------------------------------------------------------------------------------------------------
# verdicts


def _plural(n: int, color: str, shape: str) -> str:
    return f"{n} {color} {shape}" + ("s" if n != 1 else "")


def _describe(counts: Counter, order: Sequence[tuple[str, str]] = ()) -> str:
    if not counts:
        return "nothing"
    keys = sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(_plural(counts[k], *k) for k in keys)


READERS = ("tesseract", "glyphs")


def check_reader(cfg: JudgeConfig, evaluation: bool = False) -> None:
    """ConfigError for a reader that is not one, or (`evaluation`) one an evaluation may not use."""
    if cfg.reader not in READERS:
        raise ConfigError(f"judge.reader must be tesseract or glyphs, got {cfg.reader!r}")
    if evaluation and cfg.reader != "tesseract":
        raise ConfigError("judge.reader=glyphs is for training rewards: an evaluation keeps the full judge "
                          "(judge.reader=tesseract)")


def judge(image: ImageLike, caption: str, cfg: JudgeConfig = JudgeConfig()) -> Verdict:
    """Does `image` (PIL image or HxWx3 uint8 array, any size) show what `caption` says?"""
    check_reader(cfg)
    exp = parse_caption(caption)
    if exp is None:
        return Verdict(False, None, OUTSIDE)
    if exp.kind == "text" and cfg.ocr:
        ocr.find_tesseract(cfg.tesseract)  # fail loudly before any work (the glyph reader defers to it too)
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    bg, bg_rgb = _background(rgb, cfg)
    label, ink = _label(rgb, bg_rgb, cfg)

    def verdict(ok: bool, reason: str, **found) -> Verdict:
        return Verdict(ok, exp.kind, reason, bg, word=exp.word, **found)

    if exp.background is not None and bg != exp.background:
        return verdict(False, f"expected a {exp.background} background, found {bg or 'no palette colour'}")

    if exp.kind == "text":
        counts = np.bincount(label[label >= 0], minlength=len(COLORS))
        if counts.max() == 0:
            return verdict(False, "found no text")
        ci = int(counts.argmax())
        dominant = list(COLORS)[ci]
        if dominant != exp.text_color:
            return verdict(False, f"expected {exp.text_color} text, found mostly {dominant}", ink=dominant)
        if not cfg.ocr:
            return verdict(True, f"{dominant} text (ocr off)", ink=dominant)
        alpha = _text_alpha(rgb, bg_rgb, label, ink, ci)
        read = glyphs.read_word(alpha, exp.word) if cfg.reader == "glyphs" else None
        if read is None:  # tesseract, or what the glyph reader leaves to it
            read = _read_word(alpha, exp.word, cfg)
        ok = read == exp.word
        return verdict(ok, f"ocr read {read!r}" + ("" if ok else f", expected {exp.word!r}"), ocr=read, ink=dominant)

    objects = _objects(label, ink, cfg)
    found = tuple(objects)
    want, got = Counter(exp.objects), Counter((o["color"], o["shape"]) for o in objects)
    if want != got:
        return verdict(False, f"expected {_describe(want, exp.objects)}, found {_describe(got, exp.objects)}",
                       objects=found)
    if exp.kind != "relation":
        return verdict(True, f"found {_describe(got, exp.objects)}", objects=found)

    first = [o for o in objects if (o["color"], o["shape"]) == exp.objects[0]]
    second = [o for o in objects if (o["color"], o["shape"]) == exp.objects[1]]
    # with two identical objects either may be "the first": try both assignments
    holds = any(relation_holds(a["bbox"], b["bbox"], exp.relation, h, w, cfg.relation_margin)
                for a in first for b in second if a is not b)
    a, b = (" ".join(o) for o in exp.objects)
    return verdict(holds, f"{a} {'is' if holds else 'is not'} {exp.relation} {b}", objects=found)


def judge_many(items: Iterable[tuple[ImageLike, str]], cfg: JudgeConfig = JudgeConfig()) -> Iterator[Verdict]:
    """Verdicts in input order; cfg.workers threads judge at once (tesseract is a subprocess)."""
    workers = max(1, cfg.workers)
    pending = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for image, caption in items:
                pending.append(pool.submit(judge, image, caption, cfg))
                # a bounded window: a long stream is never held in memory
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def score(verdict: Verdict, caption: str) -> float:
    """Partial credit in [0, 1] for a verdict on `caption`, 1 exactly when the verdict accepts: the mean of
    the caption's claims, each scored on its own. The background, when the caption names one (right or
    not); text: the ink colour, and the word's similarity 1 - edit distance / length of the longer; objects:
    each asked (colour, shape) found (the share of asked objects present), the asked colours present
    whatever their shape, nothing extra (1 / (1 + extra objects)), for a count 1 - |found - asked| / asked,
    for a relation whether it holds. `arimg eval generator` reports it; `arimg sample --rerank` ranks by it."""
    exp = parse_caption(caption)
    if exp is None or verdict.kind is None:
        return 0.0
    if verdict.ok:
        return 1.0
    parts: list[float] = []
    if exp.background is not None:
        parts.append(float(verdict.background == exp.background))
    if exp.kind == "text":
        read = verdict.ocr or ""
        parts.append(float(verdict.ink == exp.text_color))
        parts.append(1 - _edit_distance(read, exp.word) / max(len(read), len(exp.word)) if verdict.ink == exp.text_color else 0.0)
        return sum(parts) / len(parts)
    want = Counter(exp.objects)
    got = Counter((o["color"], o["shape"]) for o in verdict.objects)
    matched = sum(min(n, got[k]) for k, n in want.items())
    colours_want = Counter(c for c, _ in exp.objects)
    colours_got = Counter(o["color"] for o in verdict.objects)
    parts.append(matched / sum(want.values()))
    parts.append(sum(min(n, colours_got[c]) for c, n in colours_want.items()) / sum(colours_want.values()))
    parts.append(1 / (1 + sum(got.values()) - matched))
    if exp.kind == "count":
        (key, n), = want.items()
        parts.append(max(0.0, 1 - abs(got[key] - n) / n))
    if exp.kind == "relation":
        parts.append(float(verdict.ok))  # with the objects right, the verdict is the relation's
    return sum(parts) / len(parts)


def paired_change(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """The same images judged under two settings (the same noise per image): how many the second setting
    gains and loses, and the two-sided exact sign test's p-value of that split (McNemar's exact test)."""
    if len(before) != len(after):
        raise ValueError(f"paired verdicts need equal lengths, got {len(before)} and {len(after)}")
    gained = sum(bool(b) and not a for a, b in zip(before, after))
    lost = sum(bool(a) and not b for a, b in zip(before, after))
    n, k = gained + lost, min(gained, lost)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"gained": gained, "lost": lost, "p": p}


def summarize(verdicts: Iterable[Verdict]) -> dict:
    """{"n", "correct", "accuracy", "per_kind": {kind: {"n", "correct", "accuracy"}}, "unparsed"}; the text
    kind also has "by_length": {letters: {"n", "correct", "accuracy"}}, as what a tokenizer keeps of a word
    depends on its length (its font is as large as fits)."""
    per_kind: dict[str, list[int]] = {}
    by_length: dict[int, list[int]] = {}
    n = correct = unparsed = 0
    for v in verdicts:
        n += 1
        correct += bool(v.ok)
        if v.kind is None:
            unparsed += 1
            continue
        tallies = [per_kind.setdefault(v.kind, [0, 0])]
        if v.word:
            tallies.append(by_length.setdefault(len(v.word), [0, 0]))
        for tally in tallies:
            tally[0] += 1
            tally[1] += bool(v.ok)

    def acc(c: int, k: int) -> float | None:
        return c / k if k else None

    def table(tallies: dict) -> dict:
        return {str(k): {"n": kn, "correct": kc, "accuracy": acc(kc, kn)} for k, (kn, kc) in tallies.items()}

    report = {
        "n": n,
        "correct": correct,
        "accuracy": acc(correct, n),
        "per_kind": table({k: per_kind[k] for k in sorted(per_kind, key=KINDS.index)}),
        "unparsed": unparsed,
    }
    if by_length:
        report["per_kind"]["text"]["by_length"] = table(dict(sorted(by_length.items())))
    return report
