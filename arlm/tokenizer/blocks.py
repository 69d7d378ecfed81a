"""Pieces of attention shared by the tokenizer's decoder and its caption reader: fixed 2-D positions for a
feature map, and a pre-norm transformer block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grid_positions(h: int, w: int, ch: int, device: torch.device) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (h * w, ch) for any grid: a quarter of the channels each for sin and cos
    of the row and of the column, at geometric frequencies (MAE's 2-D form of the transformer's)."""
    quarter = ch // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq  # (h, quarter)
    cols = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq  # (w, quarter)
    pos = torch.cat([rows.sin()[:, None].expand(h, w, quarter), rows.cos()[:, None].expand(h, w, quarter),
                     cols.sin()[None].expand(h, w, quarter), cols.cos()[None].expand(h, w, quarter)], dim=-1)
    return F.pad(pos.reshape(h * w, 4 * quarter), (0, ch - 4 * quarter))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Multi-head attention of q (B, N, C) over k, v (B, L, C); mask (B, L): the keys that may be attended to
    (None: all)."""
    b, n, c = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    keep = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=keep).transpose(1, 2).reshape(b, n, c)


class Block(nn.Module):
    """A pre-norm transformer block (multi-head self-attention, then an MLP) over a sequence: the positions of the
    decoder's lowest-resolution grid (so that what a position draws can depend on the whole image's tokens
    rather than on its neighbours' alone), or a caption's bytes. With `zero_init` both branches end in
    zero-initialised projections: a block added to a trained decoder starts as the identity."""

    def __init__(self, ch: int, heads: int, zero_init: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(ch), nn.Linear(ch, 3 * ch), nn.Linear(ch, ch)
        self.norm2 = nn.LayerNorm(ch)
        self.mlp = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        for layer in (self.proj, self.mlp[-1]) if zero_init else ():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """t (B, N, C); mask (B, N): the positions that may be attended to (None: all)."""
        t = t + self.proj(attend(*self.qkv(self.norm1(t)).chunk(3, dim=-1), self.heads, mask))
        return t + self.mlp(self.norm2(t))
