"""The image tokenizer: a convolutional autoencoder with a quantizer between encoder and decoder.

The layout follows taming-transformers' VQGAN autoencoder (Esser et al., 2021) and LlamaGen's VQ tokenizer
(Sun et al., 2024): residual blocks at each resolution, stride-2 convolutions down, nearest-neighbour
upsampling plus a convolution up, an optional self-attention block at the lowest resolution, a 1x1
projection to the quantizer's few dimensions and back. `len(channel_mult)` levels give a downsampling of
2^(levels - 1). Nothing fixes the input size: the grid of a (H, W) image is (H / f, W / f).

Measured on a 2-core CPU (docs/results.md): normalisation at full resolution is the costliest part of the
network, so `norm` can be GroupNorm (taming) or none, and `stem_patch` lets the first level start at half
resolution (a 2x2 space-to-depth of the pixels, lossless) instead of running convolutions at full size.
With `caption=decoder` the decoder also reads the image's caption (arlm.tokenizer.caption).

Images enter as floats in [-1, 1] (`to_unit` / `from_unit` convert uint8). Shapes: x (B, 3, H, W),
z (B, d, H/f, W/f), indices (B, H/f, W/f).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import TokenizerConfig
from arlm.errors import ConfigError
from arlm.quantizers import FSQ, LFQ, VectorQuantizer
from arlm.tokenizer.blocks import Block, grid_positions
from arlm.tokenizer.caption import CaptionReader


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8, rounded."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _norm(kind: str, ch: int) -> nn.Module:
    return nn.GroupNorm(min(32, ch // 4) or 1, ch, eps=1e-6) if kind == "group" else nn.Identity()


class ResBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(norm, ch_in), nn.Conv2d(ch_in, ch_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(norm, ch_out), nn.Conv2d(ch_out, ch_out, 3, padding=1)
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of the lowest-resolution grid."""

    def __init__(self, ch: int, norm: str) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(norm, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(y)


class GridContext(nn.Module):
    """Blocks on the feature map (B, C, h, w) (`decoder_attn`; `caption_blocks`, with the caption's states as
    `extra` positions of the sequence, `mask` their keys that may be attended to); the positions are added
    before the first and taken off after the last, so that blocks at their initial zeros leave the map as it was."""

    def __init__(self, ch: int, blocks: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(ch, heads) for _ in range(blocks))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, c, h, w = x.shape
        pos = grid_positions(h, w, c, x.device).to(x.dtype)
        t = x.flatten(2).transpose(1, 2) + pos
        if extra is not None:  # the map's own positions are always attended to
            t = torch.cat([t, extra], dim=1)
            mask = torch.cat([torch.ones(b, h * w, dtype=torch.bool, device=x.device), mask], dim=1)
        for block in self.blocks:
            t = block(t, mask)
        return (t[:, :h * w] - pos).transpose(1, 2).reshape(b, c, h, w)


def _mid(ch: int, cfg: TokenizerConfig) -> nn.Sequential:
    blocks = [ResBlock(ch, ch, cfg.norm)]
    if cfg.mid_attn:
        blocks += [AttnBlock(ch, cfg.norm), ResBlock(ch, ch, cfg.norm)]
    return nn.Sequential(*blocks)


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        chs = [cfg.channels * m for m in cfg.channel_mult]
        if cfg.stem_patch:  # (B, 3, H, W) -> (B, 12, H/2, W/2): the first level runs at half resolution
            self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, chs[0], 3, padding=1))
        else:
            self.stem = nn.Conv2d(3, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        ch = chs[0]
        for i, ch_out in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, ch_out, cfg.norm))
                ch = ch_out
            if i < len(chs) - 1 - int(cfg.stem_patch):
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = _mid(ch, cfg)
        self.out = nn.Sequential(_norm(cfg.norm, ch), nn.SiLU(), nn.Conv2d(ch, cfg.code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.down(self.stem(x))))  # (B, d, H/f, W/f)


class Decoder(nn.Module):
    """Tokens' vectors (B, d, h, w) -> image. With `caption=decoder` it also reads the caption
    (arlm.tokenizer.caption): a cross-attention after the middle block and after each level's residual
    blocks, in `caption.*` (so that the other keys are those of a decoder without it)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        chs = [(cfg.decoder_channels or cfg.channels) * m for m in cfg.channel_mult][::-1]
        ch = chs[0]
        self.inp = nn.Conv2d(cfg.code_dim, ch, 3, padding=1)
        # global context over the token grid (decoder_attn blocks); absent, the checkpoint's keys are those of before
        self.context = GridContext(ch, cfg.decoder_attn, cfg.decoder_heads) if cfg.decoder_attn else nn.Identity()
        self.mid = _mid(ch, cfg)
        layers: list[nn.Module] = []
        self.read_after: dict[int, int] = {}  # index in `up` -> the cross-attention that follows it
        widths = [ch]  # the middle block's
        for i, ch_out in enumerate(chs):
            for _ in range(cfg.decoder_res_blocks or cfg.num_res_blocks):
                layers.append(ResBlock(ch, ch_out, cfg.norm))
                ch = ch_out
            self.read_after[len(layers) - 1] = len(widths)
            widths.append(ch)
            if i < len(chs) - 1 - int(cfg.stem_patch):
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        self.up = nn.Sequential(*layers)
        if cfg.stem_patch:  # mirror of the encoder's stem: 12 channels at half resolution -> (B, 3, H, W)
            self.out = nn.Sequential(_norm(cfg.norm, ch), nn.SiLU(), nn.Conv2d(ch, 12, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.out = nn.Sequential(_norm(cfg.norm, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
        self.caption = None
        if cfg.caption == "decoder":
            joint = GridContext(widths[0], cfg.caption_blocks, cfg.caption_heads) if cfg.caption_blocks else None
            self.caption = CaptionReader(widths, cfg.caption_dim, cfg.caption_layers, cfg.caption_heads,
                                         cfg.caption_len, joint, cfg.caption_glyphs)

    def forward(self, z: torch.Tensor, captions: Sequence[str | None] | None = None) -> torch.Tensor:
        """z (B, d, h, w) -> (B, 3, H, W); `captions` (B strings, None or "" for the null caption) are read by
        a caption-aware decoder and ignored by another; None: the null caption for every image."""
        h = self.context(self.inp(z))
        if self.caption is None:
            return self.out(self.up(self.mid(h)))
        states, mask = self.caption.read(captions, len(z), z.device)
        states = states.to(h.dtype)
        if self.caption.joint is not None:  # the token grid and the caption in one sequence: each attends to both
            h = self.caption.joint(h, self.caption.into(states), mask)
        h = self.mid(h)
        read = lambda x, i: self.caption.attn[i](x, states, mask, grid_positions(*x.shape[-2:], x.shape[1], x.device))  # noqa: E731
        h = read(h, 0)
        for j, layer in enumerate(self.up):
            h = layer(h)
            if j in self.read_after:
                h = read(h, self.read_after[j])
        return self.out(h)


def build_quantizer(cfg: TokenizerConfig) -> nn.Module:
    if cfg.quantizer == "vq":
        return VectorQuantizer(cfg.codebook_size, cfg.code_dim, beta=cfg.beta, l2norm=cfg.l2norm, ema=cfg.ema,
                               decay=cfg.decay, kmeans_init=cfg.kmeans_init, dead_threshold=cfg.dead_threshold)
    if cfg.quantizer == "fsq":
        return FSQ(cfg.fsq_levels)
    if cfg.quantizer == "lfq":
        return LFQ(cfg.code_dim, entropy_weight=cfg.entropy_weight, beta=cfg.beta)
    raise ConfigError(f"tokenizer.quantizer must be vq, fsq or lfq, got {cfg.quantizer!r}")


def check_config(cfg: TokenizerConfig) -> None:
    levels = len(cfg.channel_mult)
    if cfg.downsample not in (4, 8, 16) or 2 ** (levels - 1) != cfg.downsample:
        raise ConfigError(f"tokenizer.downsample must be 4, 8 or 16 and equal 2^(len(channel_mult) - 1); got "
                          f"downsample={cfg.downsample} with {levels} levels in channel_mult")
    if cfg.quantizer == "fsq" and len(cfg.fsq_levels) != cfg.code_dim:
        raise ConfigError(f"tokenizer.code_dim ({cfg.code_dim}) must equal len(tokenizer.fsq_levels) "
                          f"({len(cfg.fsq_levels)}) for fsq")
    for key in ("decoder_channels", "decoder_res_blocks"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"tokenizer.{key} must be at least 1 (or null: the encoder's), got {getattr(cfg, key)}")
    if cfg.decoder_attn < 0 or cfg.decoder_heads < 1:
        raise ConfigError(f"tokenizer.decoder_attn must be at least 0 and tokenizer.decoder_heads at least 1; got "
                          f"{cfg.decoder_attn} and {cfg.decoder_heads}")
    width = (cfg.decoder_channels or cfg.channels) * cfg.channel_mult[-1]
    if cfg.decoder_attn and width % cfg.decoder_heads:
        raise ConfigError(f"tokenizer.decoder_heads ({cfg.decoder_heads}) must divide the decoder's lowest-resolution "
                          f"width ({width})")
    if cfg.norm not in ("group", "none"):
        raise ConfigError(f"tokenizer.norm must be group or none, got {cfg.norm!r}")
    if cfg.caption not in ("none", "decoder"):
        raise ConfigError(f"tokenizer.caption must be none or decoder, got {cfg.caption!r}")
    if cfg.caption != "none":
        if cfg.caption_blocks < 0:
            raise ConfigError(f"tokenizer.caption_blocks must be at least 0, got {cfg.caption_blocks}")
        if cfg.caption_dim < 1 or cfg.caption_layers < 0 or cfg.caption_heads < 1 or cfg.caption_len < 1:
            raise ConfigError(f"tokenizer.caption_dim, caption_heads and caption_len must be at least 1 and "
                              f"caption_layers at least 0; got {cfg.caption_dim}, {cfg.caption_heads}, "
                              f"{cfg.caption_len} and {cfg.caption_layers}")
        narrowest = min(cfg.decoder_channels or cfg.channels, cfg.caption_dim)
        if any(((cfg.decoder_channels or cfg.channels) * m) % cfg.caption_heads for m in cfg.channel_mult) or \
                cfg.caption_dim % cfg.caption_heads or narrowest < cfg.caption_heads:
            raise ConfigError(f"tokenizer.caption_heads ({cfg.caption_heads}) must divide tokenizer.caption_dim "
                              f"({cfg.caption_dim}) and every width of the decoder")


class Tokenizer(nn.Module):
    """Encoder -> quantizer -> decoder. `encode` gives token ids, `decode` turns ids back into images."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = build_quantizer(cfg)
        self.codebook_size: int = self.quantizer.codebook_size
        self.stride: int = cfg.downsample

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Token grid of an (h, w) image; the sides must be multiples of the stride."""
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the tokenizer's stride {self.stride}")
        return h // self.stride, w // self.stride

    def forward(self, x: torch.Tensor, token_noise: float = 0.0, draw: Callable[[torch.Tensor], torch.Tensor] | None = None,
                captions: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, 3, H, W) in [-1, 1] -> (reconstruction, indices (B, h, w), quantizer losses). What the decoder
        sees may differ from the indices (no gradient reaches the encoder through such tokens: for a decoder
        trained alone): `token_noise`, that share of the tokens replaced by random codes; `draw`, a function of
        the indices giving the codes to decode instead (a transformer's teacher-forced draws). `captions`: what
        a caption-aware decoder reads (None: the null caption)."""
        self.grid(*x.shape[-2:])
        quantized, indices, losses = self.quantizer(self.encoder(x))
        seen = indices
        if token_noise > 0:
            swap = torch.rand(indices.shape, device=x.device) < token_noise
            seen = torch.where(swap, torch.randint_like(indices, self.codebook_size), indices)
        if draw is not None:
            seen = draw(seen)
        if seen is not indices:
            swap = (seen != indices).unsqueeze(1)
            quantized = torch.where(swap, self.quantizer.decode(seen).to(quantized.dtype), quantized)
        # one memory layout on both paths: a convolution may pick another kernel for another layout, and then
        # decode(indices) would differ from the reconstruction in the last bits
        return self.decoder(quantized.contiguous(), captions), indices, losses

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> indices (B, H/f, W/f)."""
        self.grid(*x.shape[-2:])
        return self.quantizer(self.encoder(x))[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, captions: Sequence[str | None] | None = None) -> torch.Tensor:
        """indices (B, h, w) -> images (B, 3, h*f, w*f) in [-1, 1]; `captions` as in `forward`."""
        if indices.min() < 0 or indices.max() >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size - 1}], got "
                             f"{int(indices.min())}..{int(indices.max())}")
        return self.decoder(self.quantizer.decode(indices).contiguous(), captions)
