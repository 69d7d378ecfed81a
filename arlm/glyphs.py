"""A fast reader of the synthetic set's one font, for training rewards only (`judge.reader=glyphs`).

The judge reads words with tesseract: a subprocess per try, up to three tries per image, which bounds how
fast preference data can be made. Every synthetic word is drawn in one font (arlm.assets.bold_font), upper
case, at the largest size that fits, centred; so a reader can lay the font's own capitals over the ink.
Given the word the caption asks for, `measure`:

1. checks that the ink looks like a word at all: the expected word, drawn as the set draws it, correlates
   with the ink at least `MIN_MATCH` at some shift of a few pixels;
2. takes the ink's top row and cap height from the rows that cross at least half the letters' strokes, and
   the font sizes whose capitals are that tall;
3. at each of those sizes finds the row of as many capitals as the expected word has, each pen placed the
   kerned advance after the last (give or take `SLACK`), that explains the ink best: a letter's gain is how
   much it lowers the squared difference between ink and drawing in its columns, and a dynamic programme
   over the pen positions picks the best sequence, so no letter depends on a guess at the others;
4. does the same with the expected word's letters forced, for the share of the ink they explain.

`read_word` reads the best row where it is clear, and returns None where the font cannot tell (the judge
then asks tesseract): a read of the expected word explaining less than `ACCEPT` of the ink, or another read
leading the expected word by less than `LEAD`. Ink and glyphs are compared softened (`BLUR`). It reads only
words of the expected length, in this font: what a reward on the synthetic set needs, not what an evaluation
may use (evaluations refuse it; scripts/reader_agreement.py measures its agreement with tesseract).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from arlm.assets import bold_font
from arlm.synth import draw_word

BLUR = 0.7  # px: a stroke a pixel off still overlaps
MIN_MATCH = 0.3  # correlation of the expected word's drawing with the ink below which the read is empty
ACCEPT = 0.95  # the share of the ink's energy a read of the expected word explains, to be taken without tesseract
LEAD = 0.12  # ... and the lead, in that share, another read needs over the expected word
SHIFT = 3  # px: the expected word is laid on the ink at offsets up to this far
SIZES = 1  # px: the cap heights tried either side of the ink's
ROWS = 0  # px: vertical offsets tried either side of the one the ink gives
SLACK = 1  # px: a letter may start this far from where the last one's advance ends
LETTERS = string.ascii_uppercase


def _soft(a: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(a.astype(np.float32), BLUR)


def _standard(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-6)


@lru_cache(maxsize=4096)
def _word(word: str, h: int, w: int) -> np.ndarray:
    """The word drawn as the synthetic set draws it, softened."""
    canvas = Image.new("L", (w, h), 0)
    draw_word(ImageDraw.Draw(canvas), word, h, w, 255)
    return _soft(np.asarray(canvas, dtype=np.float32) / 255)


@lru_cache(maxsize=1024)
def _glyphs(px: int, h: int, y: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each capital at size px with its pen at row y, softened: (the glyph's columns (h, width), the column of
    its first one relative to the pen, and [a, b] the pen step from letter a to letter b in whole pixels: a's
    advance with the pair's kerning)."""
    font = bold_font(px)
    pad = 2 * px
    bitmaps, lefts = [], []
    for c in LETTERS:
        canvas = Image.new("L", (4 * px + 2 * pad, h), 0)
        draw = ImageDraw.Draw(canvas)
        draw.fontmode = "1"
        draw.text((pad, y), c, fill=255, font=font)
        a = _soft(np.asarray(canvas, dtype=np.float32) / 255)
        cols = np.flatnonzero(a.max(axis=0) > 1e-3)
        bitmaps.append(a[:, cols[0]:cols[-1] + 1])
        lefts.append(cols[0] - pad)
    steps = np.array([[round(font.getlength(a + b) - font.getlength(b)) for b in LETTERS] for a in LETTERS])
    return bitmaps, np.array(lefts), steps


def _reads_at(ink: np.ndarray, word: str, px: int, y: int) -> tuple[float, str, float]:
    """At size px, pen row y: the row of len(word) capitals that explains `ink` best (its total gain, its
    letters), and the total gain of the word's own letters at their best placement; the gains computed once."""
    h, w = ink.shape
    bitmaps, lefts, pair_steps = _glyphs(px, h, y)
    margin = int(max(b.shape[1] for b in bitmaps) + abs(lefts).max()) + 1
    padded = np.pad(ink, ((0, 0), (margin, margin)))
    pens = np.arange(-margin + 1, w)  # pen positions (image columns) a letter may take
    # gain[c, i]: letter c with its pen at pens[i] lowers the squared error by 2 ink.glyph - glyph.glyph
    gain = np.full((len(LETTERS), len(pens)), -np.inf, dtype=np.float64)
    for k, b in enumerate(bitmaps):
        wb = b.shape[1]
        starts = pens + lefts[k] + margin
        ok = (starts >= 0) & (starts + wb <= padded.shape[1])
        windows = np.lib.stride_tricks.sliding_window_view(padded, wb, axis=1)  # (h, W', wb)
        dots = np.einsum("hpw,hw->p", windows, b)
        gain[k, ok] = 2 * dots[starts[ok]] - float((b * b).sum())
    # the row is read left to right; score[k, i]: the best total of a row so far whose last letter is k with its
    # pen at pens[i]. A letter b follows a letter a whose pen is at q with its own pen at q + steps[a, b] + s,
    # |s| <= SLACK.
    P, L = len(pens), len(LETTERS)
    before = np.arange(P)[None, None, :] - pair_steps[:, :, None]  # [a, b, i]: q + s for b's pen at pens[i]
    inside = (before >= 0) & (before < P)
    before = np.clip(before, 0, P - 1)
    total, read = _best_row(gain, len(word), before, inside)
    return total, read, _best_row(gain, len(word), before, inside, forced=word)[0]


def _best_row(gain: np.ndarray, n: int, before: np.ndarray, inside: np.ndarray,
              forced: str | None = None) -> tuple[float, str]:
    """The dynamic programme over (letter, pen) of `_reads_at`: the best row of n letters (with `forced`, that
    word's letters) and its total gain."""
    L, P = gain.shape

    def allowed(t: int) -> np.ndarray:  # the gains of the letters step t may take
        if forced is None:
            return gain
        only = np.full_like(gain, -np.inf)
        k = LETTERS.index(forced[t])
        only[k] = gain[k]
        return only

    score, back = allowed(0), []
    for t in range(1, n):
        near = np.full((L, P), -np.inf)  # near[a, r]: a's best total with its pen within SLACK of r
        pen = np.zeros((L, P), dtype=np.int64)  # ... and that pen
        for s in range(-SLACK, SLACK + 1):
            lo, hi = max(0, s), min(P, P + s)
            cand = np.full((L, P), -np.inf)
            cand[:, lo:hi] = score[:, lo - s:hi - s]
            better = cand > near
            near[better] = cand[better]
            pen[better] = (np.arange(P)[None, :] - s).repeat(L, 0)[better]
        cand = np.where(inside, np.take_along_axis(near, before.reshape(L, -1), axis=1).reshape(L, L, P), -np.inf)
        a = cand.argmax(axis=0)  # (L, P): the best letter before b at pens[i]
        q = pen[a, np.take_along_axis(before, a[None], axis=0)[0]]  # its pen
        back.append((a, q))
        score = cand.max(axis=0) + allowed(t)
    flat = int(score.argmax())
    total = float(score.reshape(-1)[flat])
    k, i = divmod(flat, P)
    read = [LETTERS[k]]
    for a, q in reversed(back):
        k, i = int(a[k, i]), int(q[k, i])
        read.append(LETTERS[k])
    return total, "".join(reversed(read))


@lru_cache(maxsize=512)
def _cap(px: int) -> tuple[int, int]:
    """The capitals' top below the pen and their height at size px (those of H: J and Q reach lower)."""
    _, top, _, bottom = bold_font(px).getbbox("H")
    return top, bottom - top


def _rows(alpha: np.ndarray, n: int) -> tuple[int, int] | None:
    """The ink's top row and cap height for a word of n letters: every capital has ink in every row from its
    top to the baseline, so those rows cross at least half the letters' strokes, where a descender's rows
    (J, Q) cross one or two. Strokes are runs of pixels with alpha >= 1/2. None without such rows."""
    on = (alpha >= 0.5).astype(np.int8)
    runs = (np.diff(on, axis=1, prepend=0) == 1).sum(axis=1)
    core = np.flatnonzero(runs >= (n + 1) // 2)
    if len(core) == 0:
        return None
    return int(core[0]), int(core[-1] - core[0] + 1)


def read_word(alpha: np.ndarray, word: str) -> str | None:
    """The read of the text ink `alpha` (H, W in [0, 1]) given the expected `word` (upper case), or None where
    the font alone cannot tell (the judge then asks tesseract): a read of the expected word that explains less
    than `ACCEPT` of the ink, or another read whose lead over the expected word is under `LEAD`."""
    m = measure(alpha, word)
    if m.match < MIN_MATCH or m.explained <= 0:
        return ""
    if m.read == word:
        return word if m.explained >= ACCEPT else None
    return m.read if m.explained - m.expected >= LEAD else None


@dataclass(frozen=True)
class Measure:
    read: str  # the best row of letters
    match: float  # the expected word's correlation with the ink at its best shift
    explained: float  # the share of the ink's energy that row explains
    expected: float  # ... and the share the expected word's letters explain, placed at their best


def measure(alpha: np.ndarray, word: str) -> Measure:
    """What `read_word` decides on, before its thresholds."""
    h, w = alpha.shape
    if not word or alpha.max() < 0.5:
        return Measure("", 0.0, 0.0, 0.0)
    ink = _soft(alpha)
    drawn = _word(word, h, w)
    pad = np.pad(_standard(ink), SHIFT, mode="edge")
    shifted = np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(2 * SHIFT + 1) for dx in range(2 * SHIFT + 1)])
    match = float(np.einsum("shw,hw->s", shifted, _standard(drawn)).max()) / (h * w)
    rows = _rows(alpha, len(word))
    if rows is None:
        return Measure("", match, 0.0, 0.0)
    top, height = rows
    places = [(px, top - _cap(px)[0] + dy) for px in range(4, 2 * h) if abs(_cap(px)[1] - height) <= SIZES
              for dy in range(-ROWS, ROWS + 1)]
    if not places:
        return Measure("", match, 0.0, 0.0)
    energy = float((ink * ink).sum())
    reads = [_reads_at(ink, word, px, y) for px, y in places]
    total, read = max((r[0], r[1]) for r in reads)
    forced = max(r[2] for r in reads)
    return Measure(read, match, total / energy, forced / energy)
