"""The caption as a caption-aware decoder reads it (`tokenizer.caption=decoder`): its UTF-8 bytes, a small
transformer over them, and cross-attention from the decoder's feature maps to what it gives.

The tokens of an image keep where things are and roughly what they look like; the caption names them, and for
a word it names every letter. A decoder that reads the caption can spend the tokens' few bits on layout and
take the letters' shapes from the bytes, as TexTok (Zha et al., 2024) gives its tokenizer the caption and as
character-level text encoders (Liu et al., 2022; Glyph-ByT5, 2024) make spelling work. The text encoder reads
bytes, not word pieces, so a word it never saw is still a sequence of letters it knows.

Every caption starts with a NULL position; the empty caption is that position alone, the null caption a
decoder falls back to for an image without one (a bare file, a real photo). A caption longer than
`caption_len` bytes is cut to its first `caption_len` bytes (a warning says so once per process).

Shapes: bytes (B, 1 + L) int64 with NULL first and PAD after the end, mask (B, 1 + L) True where a position
is read; states (B, 1 + L, caption_dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from arlm.errors import UserError
from arlm.log import log
from arlm.tokenizer.blocks import Block, attend

NULL, PAD = 256, 257  # after the 256 byte values
QUOTE = ord('"')
GLYPH = 12  # side of the bitmap each printable byte is drawn in (`glyph_bitmaps`)
FREQS = 8  # sine-cosine pairs of a place's share of its quoted span, and of a map position's share of its side
_warned = False


def glyph_bitmaps() -> torch.Tensor:
    """(258, GLYPH * GLYPH) in [0, 1]: each printable ASCII byte drawn in the project's font, centred in a GLYPH
    square (other bytes, NULL and PAD: zeros). What a letter looks like, for a reader that must draw it."""
    from PIL import Image, ImageDraw

    from arlm.assets import bold_font

    font, out = bold_font(GLYPH - 1), torch.zeros(258, GLYPH * GLYPH)
    for b in range(33, 127):
        img = Image.new("L", (GLYPH, GLYPH))
        x0, y0, x1, y1 = font.getbbox(chr(b))
        ImageDraw.Draw(img).text(((GLYPH - (x1 - x0)) // 2 - x0, (GLYPH - (y1 - y0)) // 2 - y0), chr(b), fill=255,
                                 font=font)
        out[b] = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float() / 255
    return out


def _waves(share: torch.Tensor) -> torch.Tensor:
    """share (...,) in [0, 1] -> (..., 2 * FREQS): sin and cos of pi * k * share, k = 1..FREQS."""
    angles = share[..., None] * torch.pi * torch.arange(1, FREQS + 1, dtype=torch.float32, device=share.device)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def quoted_spans(ids: torch.Tensor) -> torch.Tensor:
    """(B, 1 + L) bytes -> (B, 1 + L, 2 + 2 * FREQS): per byte inside a pair of double quotes (the text a prompt
    asks to be written, as text-rendering systems take it), 1, its span's length / 8 and the waves of its place's
    share of the span ((i + 0.5) / n); zeros elsewhere."""
    feats = torch.zeros(*ids.shape, 2 + 2 * FREQS)
    for row, seq in enumerate(ids.tolist()):
        quotes = [i for i, b in enumerate(seq) if b == QUOTE]
        for start, end in zip(quotes[::2], quotes[1::2]):
            n = end - start - 1
            if n > 0:
                place = (torch.arange(n, dtype=torch.float32) + 0.5) / n
                feats[row, start + 1:end] = torch.cat([torch.ones(n, 1), torch.full((n, 1), n / 8), _waves(place)], 1)
    return feats.to(ids.device)


def map_waves(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h * w, 4 * FREQS): the waves of each position's share of the map's width and of its height."""
    col = _waves((torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w)
    row = _waves((torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h)
    return torch.cat([col[None].expand(h, w, -1), row[:, None].expand(h, w, -1)], dim=-1).reshape(h * w, -1)


def utf8(caption: str) -> bytes:
    """A caption's UTF-8 bytes; a UserError for what is not text or has no UTF-8 form (a lone surrogate, as a
    JSON escape can carry)."""
    if not isinstance(caption, str):
        raise UserError(f"a caption must be a string, got {type(caption).__name__}")
    try:
        return caption.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"the caption is not valid UTF-8 text ({e.reason} at character {e.start})") from None


def caption_bytes(caption: str, max_len: int) -> bytes:
    """A caption's UTF-8 bytes (`utf8`), cut to `max_len`."""
    global _warned
    data = utf8(caption)
    if len(data) > max_len and not _warned:
        log.warning("a caption of %d bytes was cut to the decoder's %d (tokenizer.caption_len)", len(data), max_len)
        _warned = True
    return data[:max_len]


def caption_batch(captions: Sequence[str | None], max_len: int, device: torch.device | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions (None or "": the null caption) -> (bytes (B, 1 + L), mask (B, 1 + L)), L the longest's length."""
    rows = [caption_bytes(c or "", max_len) for c in captions]
    width = 1 + max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), PAD, dtype=torch.int64)
    ids[:, 0] = NULL
    for i, r in enumerate(rows):
        if r:
            ids[i, 1:1 + len(r)] = torch.frombuffer(bytearray(r), dtype=torch.uint8).long()
    return ids.to(device), (ids != PAD).to(device)


class CaptionEncoder(nn.Module):
    """Bytes -> states: an embedding of the 256 byte values, NULL and PAD, learned positions, `layers` blocks.
    With `glyphs`, each byte's embedding also has its glyph's bitmap (projected) and each byte in quotes where it
    stands in its span (`quoted_spans`, projected): what to draw and in which part of the word."""

    def __init__(self, dim: int, layers: int, heads: int, max_len: int, glyphs: bool = False) -> None:
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(258, dim)
        self.pos = nn.Parameter(torch.randn(1 + max_len, dim) * 0.02)
        if glyphs:
            self.register_buffer("bitmaps", glyph_bitmaps())
            self.glyph, self.span = nn.Linear(GLYPH * GLYPH, dim), nn.Linear(2 + 2 * FREQS, dim)
        self.glyphs = glyphs
        self.blocks = nn.ModuleList(Block(dim, heads, zero_init=False) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = self.embed(ids) + self.pos[: ids.shape[1]]
        if self.glyphs:
            t = t + self.glyph(self.bitmaps[ids]) + self.span(quoted_spans(ids))
        for block in self.blocks:
            t = block(t, mask)
        return self.norm(t)


class CrossAttention(nn.Module):
    """The feature map (B, C, h, w) reads the caption's states: queries from the map (with its 2-D positions),
    keys and values from the states; the output projection starts at zero, so that a block added to a
    trained decoder leaves its images as they were until it learns."""

    def __init__(self, ch: int, text_dim: int, heads: int, waves: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.norm, self.q = nn.GroupNorm(1, ch, eps=1e-6), nn.Linear(ch, ch)
        # with glyphs: each position's share of the width and height too, on the scale of `quoted_spans`
        self.where = nn.Linear(4 * FREQS, ch) if waves else None
        self.kv, self.proj = nn.Linear(text_dim, 2 * ch), nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """pos (h * w, C): the map's fixed positions."""
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2) + pos.to(x.dtype)
        if self.where is not None:
            t = t + self.where(map_waves(h, w, x.device).to(x.dtype))
        k, v = self.kv(states).chunk(2, dim=-1)
        y = self.proj(attend(self.q(t), k, v, self.heads, mask))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class CaptionReader(nn.Module):
    """The caption encoder, one cross-attention per decoder level (`widths`: their channels, the token grid's
    first) and `joint` (None: none): blocks over one sequence of the token grid's positions and the caption's
    (the states projected to the grid's width by `into`), where letters and places can find each other in both
    directions."""

    def __init__(self, widths: Sequence[int], dim: int, layers: int, heads: int, max_len: int,
                 joint: nn.Module | None = None, glyphs: bool = False) -> None:
        super().__init__()
        self.text = CaptionEncoder(dim, layers, heads, max_len, glyphs)
        self.attn = nn.ModuleList(CrossAttention(ch, dim, heads, glyphs) for ch in widths)
        self.joint = joint
        self.into = nn.Linear(dim, widths[0]) if joint is not None else None

    def read(self, captions: Sequence[str | None] | None, batch: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The states and mask of `captions` (None: the null caption for every image of the batch)."""
        if captions is None:
            captions = [None] * batch
        elif len(captions) != batch:
            raise ValueError(f"{len(captions)} captions for {batch} images")
        ids, mask = caption_batch(captions, self.text.max_len, device)
        return self.text(ids, mask), mask
