"""What the tokenizer is measured by: reconstruction quality, the JPEG baseline at equal rate, codebook use.

- PSNR in dB with peak 255, from the MSE over all channels and pixels of each image.
- SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment: From Error Visibility to
  Structural Similarity"): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, each RGB
  channel on its own, over the valid region only (no padding), averaged over channels and positions. This
  is skimage's `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False,
  data_range=255, channel_axis=...)`.
- `jpeg_near_bpp`: Pillow's JPEG at the quality whose file, headers included, is closest to a bit rate.
- `CodeUsage`: codebook usage and perplexity over a rolling window of the latest tokens.
- `bits_per_pixel`: the rate of a token grid, log2(codebook size) bits per token.

Image batches are (B, 3, H, W), either uint8 or floating point on the [0, 255] scale; both are computed in
float64, so a uint8 batch and the same values as floats give the same numbers.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from PIL import Image

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_float64(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"image batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected image batches (B, C, H, W), got shape {tuple(x.shape)}")
    return x.to(torch.float64), y.to(torch.float64)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (B,) float64 with peak 255; x, y are (B, 3, H, W) uint8 or float in [0, 255].
    Identical images give inf."""
    x, y = _as_float64(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(PEAK**2 / mse)  # mse == 0 -> inf, not an error


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (B,) float64; x, y are (B, 3, H, W) uint8 or float in [0, 255], at least 11x11.

    Local statistics use a normalised 11x11 Gaussian (sigma 1.5), applied as two separable 1D passes
    over the valid region; variances are population ones (divided by the window weight, not weight - 1).
    """
    x, y = _as_float64(x, y)
    B, C, H, W = x.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")

    # the five local moments of every channel in one grouped convolution
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    n = stats.shape[1]
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)  # (B, 5C, H-10, W)
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)  # (B, 5C, H-10, W-10)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5, dim=1)  # each (B, C, h, w)

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # every channel has the same number of positions, so this is also the mean of per-channel means
    return s.flatten(1).mean(1)  # (B,)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def jpeg_near_bpp(image: Image.Image, target_bpp: float) -> tuple[int, float, Image.Image]:
    """JPEG-encode an RGB image at the quality in 1..95 whose file is closest to `target_bpp`.

    Bits per pixel count the whole file (headers included): bytes * 8 / (W * H). Pillow's default chroma
    subsampling (4:2:0) is kept and `optimize=True` computes Huffman tables for the image, so each file is
    the smallest Pillow can write at its quality. Size grows with quality nearly monotonically: a binary
    search for the first quality at or above the target, then its two neighbours: at most 9 encodes.
    Ties go to the lower quality. Returns (quality, achieved bpp, decoded RGB image).
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    n_pixels = image.width * image.height
    files: dict[int, bytes] = {}

    def bpp(q: int) -> float:
        if q not in files:
            files[q] = _jpeg_bytes(image, q)
        return len(files[q]) * 8 / n_pixels

    lo, hi = 1, 95
    while lo < hi:  # first quality with bpp >= target, or 95 if none
        mid = (lo + hi) // 2
        if bpp(mid) >= target_bpp:
            hi = mid
        else:
            lo = mid + 1
    # non-monotonic steps make either side of the crossing the closer one
    candidates = [q for q in (lo - 1, lo, lo + 1) if 1 <= q <= 95]
    best = min(candidates, key=lambda q: (abs(bpp(q) - target_bpp), q))
    decoded = Image.open(io.BytesIO(files[best]))
    decoded = decoded.convert("RGB")  # convert() also loads, so the buffer can go
    return best, bpp(best), decoded


def bits_per_pixel(n_tokens: int, codebook_size: int, n_pixels: int) -> float:
    """Rate of n_tokens indices from a codebook of codebook_size, spread over n_pixels, without entropy coding."""
    return n_tokens * math.log2(codebook_size) / n_pixels


class CodeUsage:
    """Codebook usage and perplexity over the latest `window` tokens seen, across any number of updates.

    The default window of 65,536 tokens follows LlamaGen's protocol (Sun et al. 2024) of measuring
    codebook usage over at least 65,536 tokens: a few batches use only a fraction of a large codebook
    even when the codebook is healthy. Tokens are kept in a CPU ring buffer (int64) of `window` entries.
    """

    def __init__(self, codebook_size: int, window: int = 65536):
        if codebook_size < 1 or window < 1:
            raise ValueError(f"codebook_size and window must be positive, got {codebook_size} and {window}")
        self.codebook_size = codebook_size
        self.window = window
        self._buffer = torch.zeros(window, dtype=torch.long)  # (window,)
        self._pos = 0  # next slot to write
        self._seen = 0  # valid tokens; until the first wrap they are _buffer[:_seen]

    @property
    def seen(self) -> int:
        """Tokens now in the window (at most `window`)."""
        return self._seen

    def update(self, indices: torch.Tensor) -> None:
        """Add code indices of any shape; only the last `window` tokens seen overall are kept."""
        flat = indices.detach().reshape(-1).to("cpu", torch.long)
        if flat.numel() == 0:
            return
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}), got [{lo}, {hi}]")
        n = flat.numel()
        if n >= self.window:
            self._buffer.copy_(flat[-self.window :])
            self._pos, self._seen = 0, self.window
            return
        slots = (self._pos + torch.arange(n)) % self.window
        self._buffer[slots] = flat
        self._pos = (self._pos + n) % self.window
        self._seen = min(self._seen + n, self.window)

    def counts(self) -> torch.Tensor:
        """Occurrences of each code in the window, (codebook_size,) int64."""
        return torch.bincount(self._buffer[: self._seen], minlength=self.codebook_size)

    def usage(self) -> float:
        """Fraction of the codebook that appears at least once in the window (0.0 when empty)."""
        return (self.counts() > 0).sum().item() / self.codebook_size

    def perplexity(self) -> float:
        """exp of the entropy (nats) of the code frequencies in the window: codebook_size when uniform, 1 for a
        single code, 0.0 when the window is empty."""
        if self._seen == 0:
            return 0.0
        p = self.counts().to(torch.float64) / self._seen
        p = p[p > 0]
        return math.exp(-(p * p.log()).sum().item())

    def state_dict(self) -> dict:
        return {
            "codebook_size": self.codebook_size,
            "window": self.window,
            "buffer": self._buffer.clone(),
            "pos": self._pos,
            "seen": self._seen,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["codebook_size"] != self.codebook_size or state["window"] != self.window:
            raise ValueError(
                f"state is for codebook_size={state['codebook_size']}, window={state['window']}; "
                f"this tracker has codebook_size={self.codebook_size}, window={self.window}"
            )
        self._buffer = state["buffer"].to("cpu", torch.long).clone()
        self._pos = int(state["pos"])
        self._seen = int(state["seen"])
