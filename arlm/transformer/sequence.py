"""The unified sequence (DESIGN.md): one vocabulary of text, special and visual ids.

    [BOS] text [SOV] h w [SOT] v(0,0) v(0,1) ... v(h-1,w-1) [EOV] [EOS] [PAD] ...

Ids, in order: the 256 UTF-8 byte values (the text tokenizer's base: any UTF-8 caption has ids and none is
ever out of vocabulary), the specials below, `max_grid` grid-size ids (the `meta` tokens h and w, so a
non-square grid is representable and a sampler knows where rows end), the tokenizer's `K` visual ids,
then the vocabulary's word pieces, if it has any. The table is padded to a multiple of 64 for matmul
speed; padding ids are never targets.

Word pieces: a caption is cut into lowercase words, each with its leading space (` red`, ` circle`), and
single characters. A piece in the vocabulary's word list is one id, anything else its UTF-8 bytes, so
encoding stays lossless and open. The list holds the most frequent lowercase words of the training
captions (`top_words`): a small model reads `a red circle` as 3 ids instead of 12 bytes, and sequences get
shorter, while capitals, digits and punctuation stay bytes: the word a text prompt asks to draw
(`the word "CAT"`) is always spelled out letter by letter.

Sequences are right-padded with PAD: under a causal mask no real token ever sees a pad, so training needs
no attention mask, and pads are simply not targets. A caption dropped for classifier-free guidance is the
empty caption: `[BOS][SOV] h w [SOT] ...`.

Shapes: B batch, T sequence, L text bytes, h x w the visual grid (n = h*w).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cached_property

import torch

from arlm.errors import UserError

SPECIALS = ("PAD", "BOS", "EOS", "SOV", "SOT", "EOV")
N_BYTES = 256
PREFIX_EXTRA = 5  # BOS, SOV, h, w, SOT
SUFFIX = 2  # EOV, EOS

# what a position holds, for loss weights: the target at position t is the token at t
PAD_R, TEXT_R, VISUAL_R, END_R = 0, 1, 2, 3  # TEXT_R covers BOS, text and the layout tokens SOV h w SOT

PIECE = re.compile(r" ?[a-z]+|.", re.DOTALL)  # a lowercase word with its leading space, or one character
WORD = re.compile(r" ?[a-z]+")


def pieces(text: str) -> list[str]:
    """The pieces a caption is cut into; joined, they give the caption back."""
    return PIECE.findall(text)


def top_words(captions: Iterable[str], n: int, min_count: int = 2) -> tuple[str, ...]:
    """The `n` most frequent word pieces (seen at least `min_count` times) of `captions`, as a word list:
    most frequent first, ties in alphabetical order, so the same captions always give the same ids."""
    counts = Counter(p for c in captions for p in pieces(c) if WORD.fullmatch(p))
    ranked = sorted((p for p, k in counts.items() if k >= min_count), key=lambda p: (-counts[p], p))
    return tuple(ranked[:n])


@dataclass(frozen=True)
class Vocab:
    """The id layout of a model; saved as vocab.json beside every transformer checkpoint."""

    codebook_size: int  # K, the image tokenizer's codes
    tokenizer: str = ""  # the image tokenizer checkpoint whose codes the visual ids are
    max_grid: int = 64  # largest grid side a `meta` token can say
    text: str = "utf8-bytes"
    grid: tuple[int, int] | None = None  # the grid the model was trained on: the sampler's default
    words: tuple[str, ...] = ()  # word pieces that are one id each (see the module docstring); () = bytes only

    pad = N_BYTES + SPECIALS.index("PAD")
    bos = N_BYTES + SPECIALS.index("BOS")
    eos = N_BYTES + SPECIALS.index("EOS")
    sov = N_BYTES + SPECIALS.index("SOV")
    sot = N_BYTES + SPECIALS.index("SOT")
    eov = N_BYTES + SPECIALS.index("EOV")
    size0 = N_BYTES + len(SPECIALS)  # id of grid size 1

    @property
    def visual0(self) -> int:
        return self.size0 + self.max_grid

    @property
    def word0(self) -> int:
        return self.visual0 + self.codebook_size

    @property
    def size(self) -> int:
        """Ids in use."""
        return self.word0 + len(self.words)

    def is_text(self, i: int) -> bool:
        return 0 <= i < N_BYTES or self.word0 <= i < self.size

    @property
    def padded_size(self) -> int:
        return -(-self.size // 64) * 64

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("text") != "utf8-bytes":
            raise ValueError("not an arimg vocabulary")
        grid = tuple(raw["grid"]) if raw.get("grid") else None
        words = raw.get("words", [])
        if not isinstance(words, list) or not all(isinstance(w, str) and WORD.fullmatch(w) for w in words):
            raise ValueError("words must be a list of word pieces")
        return cls(**{k: raw[k] for k in ("codebook_size", "tokenizer", "max_grid", "text")}, grid=grid,
                   words=tuple(words))

    def compatible(self, other: "Vocab") -> bool:
        """Same ids for the same things (the tokenizer path may differ, its codebook may not)."""
        return ((self.codebook_size, self.max_grid, self.text, self.words)
                == (other.codebook_size, other.max_grid, other.text, other.words))

    # --- text -------------------------------------------------------------------------------------------
    @cached_property
    def _word_ids(self) -> dict[str, int]:
        return {w: self.word0 + j for j, w in enumerate(self.words)}

    def encode_text(self, text: str) -> list[int]:
        if not self.words:
            return list(text.encode("utf-8"))
        ids, table = [], self._word_ids
        for p in pieces(text):
            if p in table:
                ids.append(table[p])
            else:
                ids.extend(p.encode("utf-8"))
        return ids

    def decode_text(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            out.extend(bytes([i]) if i < N_BYTES else self.words[i - self.word0].encode("utf-8"))
        return out.decode("utf-8", errors="replace")

    def seq_len(self, text_len: int, h: int, w: int) -> int:
        return text_len + PREFIX_EXTRA + h * w + SUFFIX

    def check_grid(self, h: int, w: int) -> None:
        if not (1 <= h <= self.max_grid and 1 <= w <= self.max_grid):
            raise ValueError(f"grid {h}x{w} outside 1..{self.max_grid} per side")

    # --- one sequence -----------------------------------------------------------------------------------
    def prefix(self, caption: str, h: int, w: int) -> list[int]:
        """[BOS] text [SOV] h w [SOT]: what a sampler feeds before the first visual token."""
        self.check_grid(h, w)
        return [self.bos, *self.encode_text(caption), self.sov, self.size0 + h - 1, self.size0 + w - 1, self.sot]

    def sequence(self, caption: str, grid: torch.Tensor) -> list[int]:
        """The whole sequence of a caption and its (h, w) grid of codes."""
        h, w = grid.shape
        if int(grid.min()) < 0 or int(grid.max()) >= self.codebook_size:
            raise ValueError(f"visual code outside [0, {self.codebook_size - 1}]")
        return [*self.prefix(caption, h, w), *(grid.flatten() + self.visual0).tolist(), self.eov, self.eos]

    def parse(self, tokens: list[int]) -> tuple[str, torch.Tensor]:
        """(caption, grid) from a sequence (trailing pads allowed); ValueError if it is not one."""
        toks = list(tokens)
        while toks and toks[-1] == self.pad:
            toks.pop()
        if len(toks) < PREFIX_EXTRA + SUFFIX or toks[0] != self.bos or self.sov not in toks:
            raise ValueError("not a [BOS] text [SOV] ... sequence")
        s = toks.index(self.sov)
        text = toks[1:s]
        if not all(self.is_text(t) for t in text):
            raise ValueError("non-text id inside the caption")
        h, w = toks[s + 1] - self.size0 + 1, toks[s + 2] - self.size0 + 1
        self.check_grid(h, w)
        if toks[s + 3] != self.sot or len(toks) != s + 4 + h * w + SUFFIX or toks[-2:] != [self.eov, self.eos]:
            raise ValueError("layout does not match its meta tokens")
        vis = torch.tensor(toks[s + 4: s + 4 + h * w]) - self.visual0
        if int(vis.min()) < 0 or int(vis.max()) >= self.codebook_size:
            raise ValueError("non-visual id inside the grid")
        return self.decode_text(text), vis.view(h, w)

    # --- a batch, on the device, without per-sample Python ------------------------------------------------
    def build(self, text: torch.Tensor, text_len: torch.Tensor, visual: torch.Tensor, h: int, w: int,
              seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequences from padded captions `text` (B, L) of lengths `text_len` (B,) and visual codes (B, n).

        Returns tokens (B, T), positions (B, T, 2) for rope (1d uses column 0) and region (B, T)."""
        B, n = visual.shape
        dev = visual.device
        t = torch.arange(seq_len, device=dev).expand(B, seq_len)  # (B, T)
        L = text_len.view(B, 1)
        v0 = L + 5  # first visual position
        tokens = torch.full((B, seq_len), self.pad, dtype=torch.long, device=dev)
        region = torch.full((B, seq_len), PAD_R, dtype=torch.long, device=dev)
        in_text = (t >= 1) & (t <= L)
        if text.shape[1]:
            tokens = torch.where(in_text, text.gather(1, (t - 1).clamp(0, text.shape[1] - 1)).long(), tokens)
        for offset, tok in ((0, self.bos),):
            tokens = torch.where(t == offset, tok, tokens)
        for offset, tok in ((1, self.sov), (2, self.size0 + h - 1), (3, self.size0 + w - 1), (4, self.sot)):
            tokens = torch.where(t == L + offset, tok, tokens)
        in_vis = (t >= v0) & (t < v0 + n)
        vis = visual.gather(1, (t - v0).clamp(0, n - 1)).long() + self.visual0
        tokens = torch.where(in_vis, vis, tokens)
        tokens = torch.where(t == v0 + n, self.eov, tokens)
        tokens = torch.where(t == v0 + n + 1, self.eos, tokens)
        region = torch.where(t <= L + 4, TEXT_R, region)
        region = torch.where(in_vis, VISUAL_R, region)
        region = torch.where((t == v0 + n) | (t == v0 + n + 1), END_R, region)
        return tokens, positions(t, v0, h, w, n), region


def positions(t: torch.Tensor, v0: torch.Tensor, h: int, w: int, n: int) -> torch.Tensor:
    """(B, T, 2) rope positions. Text and layout tokens: (t, t). Visual token (r, c): (v0 + r, v0 + c), so
    2d rope sees rows and columns (LlamaGen); the end tokens continue after (v0 + h, v0 + w)."""
    k = t - v0
    r, c = k.div(w, rounding_mode="floor"), k.remainder(w)
    in_vis = (k >= 0) & (k < n)
    after = k >= n
    row = torch.where(in_vis, v0 + r, torch.where(after, v0 + h + (k - n), t))
    col = torch.where(in_vis, v0 + c, torch.where(after, v0 + w + (k - n), t))
    return torch.stack([row, col], dim=-1)


class LayoutError(UserError):
    """A sequence that does not fit the model: vocabulary, grid or length (exit 2, like a bad config)."""

    exit_code = 2
