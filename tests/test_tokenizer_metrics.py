"""Metric invariants: PSNR/SSIM against closed forms and an independent scipy SSIM, JPEG rate matching by
brute force, and the exact contents of the rolling code-usage window."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from arlm.tokenizer import metrics
from arlm.tokenizer.metrics import CodeUsage, bits_per_pixel, jpeg_near_bpp, psnr, ssim


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images with texture, (b, 3, h, w) uint8: SSIM of white noise sits near 0 and tests little."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, h // 4 + 2, w // 4 + 2, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    x = 255 * smooth + 10 * torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)
    return x.clamp(0, 255).round().to(torch.uint8)


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return (x.double() + n).clamp(0, 255).round().to(torch.uint8)


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two (3, H, W) images written from the paper: full-image correlation with a 2D 11x11 kernel,
    border of 5 dropped, per-channel means averaged."""
    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):

        def filt(img):
            return ndimage.correlate(img, kernel, mode="reflect")[5:-5, 5:-5]

        ma, mb = filt(a), filt(b)
        va = filt(a * a) - ma**2
        vb = filt(b * b) - mb**2
        cab = filt(a * b) - ma * mb
        s = (2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf():
    x = _images(2, 16, 16)
    out = psnr(x, x)
    assert out.shape == (2,) and out.dtype == torch.float64
    assert torch.isinf(out).all() and (out > 0).all()


def test_psnr_constant_difference_matches_closed_form():
    x = torch.full((2, 3, 8, 12), 100, dtype=torch.uint8)
    y = x + 10
    y[1] = x[1] - 10  # the sign of the error does not matter
    expected = 20 * math.log10(255 / 10)
    assert torch.allclose(psnr(x, y), torch.full((2,), expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_psnr_is_per_image():
    x = _images(3, 16, 16)
    y = _noisy(x, 20)
    y[1] = x[1]
    out = psnr(x, y)
    assert math.isinf(out[1]) and math.isfinite(out[0]) and math.isfinite(out[2])
    assert out[0] == psnr(x[:1], y[:1])[0]


def test_uint8_and_float_inputs_agree():
    x, y = _images(2, 20, 24), _noisy(_images(2, 20, 24), 15)
    assert torch.equal(psnr(x, y), psnr(x.float(), y.double()))
    assert torch.equal(ssim(x, y), ssim(x.double(), y.float()))


# ---------------------------------------------------------------- SSIM


def test_ssim_of_identical_is_one_and_symmetric():
    x, y = _images(2, 24, 24), _noisy(_images(2, 24, 24), 25)
    out = ssim(x, x)
    assert out.shape == (2,) and out.dtype == torch.float64
    assert torch.allclose(out, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(ssim(x, y), ssim(y, x), rtol=0, atol=1e-12)


def test_ssim_decreases_with_noise():
    x = _images(2, 32, 32)
    scores = torch.stack([ssim(x, _noisy(x, s)) for s in (2, 8, 20, 50)])  # (4, B)
    assert (scores[1:] < scores[:-1]).all(), scores
    assert (scores < 1).all()


@pytest.mark.parametrize("hw", [(32, 32), (23, 37), (11, 11)])
def test_ssim_matches_independent_reference(hw):
    x = _images(2, *hw, seed=3)
    y = _noisy(x, 18, seed=4)
    ours = ssim(x, y)
    ref = [_ssim_reference(x[i].numpy(), y[i].numpy()) for i in range(2)]
    assert np.allclose(ours.numpy(), ref, rtol=0, atol=1e-6), (ours, ref)
    # unrelated images too, where SSIM is far from 1
    z = _images(2, *hw, seed=5)
    assert np.allclose(ssim(x, z).numpy(), [_ssim_reference(x[i].numpy(), z[i].numpy()) for i in range(2)], atol=1e-6)


def test_ssim_rejects_small_images():
    x = _images(1, 8, 8)
    with pytest.raises(ValueError):
        ssim(x, x)
    x = _images(1, 10, 40)
    with pytest.raises(ValueError):
        ssim(x, x)


# ---------------------------------------------------------------- JPEG


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(_images(1, 48, 64, seed=9)[0].permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def all_bpp(photo) -> dict[int, float]:
    n = photo.width * photo.height
    return {q: len(metrics._jpeg_bytes(photo, q)) * 8 / n for q in range(1, 96)}


@pytest.mark.parametrize("target", [0.05, 1.5, 2.6, 4.0, 30.0])
def test_jpeg_near_bpp_is_closest_over_all_qualities(photo, all_bpp, target, monkeypatch):
    encodes = []
    real = metrics._jpeg_bytes
    monkeypatch.setattr(metrics, "_jpeg_bytes", lambda im, q: encodes.append(q) or real(im, q))
    q, bpp, decoded = jpeg_near_bpp(photo, target)
    assert 1 <= q <= 95 and bpp == all_bpp[q]
    assert abs(bpp - target) == min(abs(b - target) for b in all_bpp.values())
    assert len(encodes) == len(set(encodes)) <= 9
    assert decoded.mode == "RGB" and decoded.size == photo.size


def test_jpeg_near_bpp_decodes_the_chosen_file(photo):
    q, bpp, decoded = jpeg_near_bpp(photo, 2.0)
    data = metrics._jpeg_bytes(photo, q)
    assert len(data) * 8 / (photo.width * photo.height) == bpp
    assert np.array_equal(np.array(decoded), np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    assert not np.array_equal(np.array(decoded), np.array(photo))  # lossy: the decode, not the input
    with pytest.raises(ValueError):
        jpeg_near_bpp(photo.convert("L"), 2.0)


# ---------------------------------------------------------------- code usage and rate


def test_usage_full_then_rolled_past_old_codes():
    u = CodeUsage(8, window=16)
    assert u.seen == 0 and u.usage() == 0.0 and u.perplexity() == 0.0
    u.update(torch.arange(8).view(2, 4))
    assert u.seen == 8 and u.usage() == 1.0
    u.update(torch.tensor([0, 1, 2, 3] * 2))
    assert u.seen == 16 and u.usage() == 1.0  # window now full, codes 4..7 still in it
    u.update(torch.tensor([0, 1, 2, 3, 0]))  # wraps: pushes out codes 0..4 of the first batch
    assert u.counts().tolist() == [4, 3, 3, 3, 0, 1, 1, 1]
    u.update(torch.tensor([[1, 2], [3, 0]]))
    assert u.seen == 16 and u.usage() == 0.5
    assert u.counts().tolist() == [4, 4, 4, 4, 0, 0, 0, 0]


def test_counts_equal_bincount_of_last_window_tokens():
    g = torch.Generator().manual_seed(0)
    u = CodeUsage(32, window=100)
    history = []
    for size in [7, 50, 1, 43, 99, 100, 250, 3, 0, 61]:  # straddles wrap points and whole-window batches
        chunk = torch.randint(0, 32, (size,), generator=g)
        u.update(chunk)
        history += chunk.tolist()
        tail = torch.tensor(history[-100:], dtype=torch.long)
        assert u.seen == len(tail)
        assert torch.equal(u.counts(), torch.bincount(tail, minlength=32))


def test_perplexity_uniform_and_single_code():
    u = CodeUsage(16, window=64)
    u.update(torch.arange(16).repeat(4))
    assert abs(u.perplexity() - 16) < 1e-6
    u.update(torch.full((64,), 5))
    assert abs(u.perplexity() - 1) < 1e-12 and u.usage() == 1 / 16


def test_update_rejects_out_of_range_codes():
    u = CodeUsage(8, window=16)
    with pytest.raises(ValueError):
        u.update(torch.tensor([0, 8]))
    with pytest.raises(ValueError):
        u.update(torch.tensor([-1]))
    assert u.seen == 0


def test_state_dict_round_trip(tmp_path):
    g = torch.Generator().manual_seed(1)
    u = CodeUsage(64, window=200)
    u.update(torch.randint(0, 64, (4, 7, 9), generator=g))  # 252 tokens: one wrap
    u.update(torch.randint(0, 40, (30,), generator=g))
    torch.save(u.state_dict(), tmp_path / "usage.pt")
    v = CodeUsage(64, window=200)
    v.load_state_dict(torch.load(tmp_path / "usage.pt", weights_only=True))
    assert v.seen == u.seen and torch.equal(v.counts(), u.counts())
    assert v.usage() == u.usage() and v.perplexity() == u.perplexity()
    more = torch.randint(0, 64, (77,), generator=g)  # and they keep rolling the same way
    u.update(more)
    v.update(more)
    assert torch.equal(v.counts(), u.counts())
    with pytest.raises(ValueError):
        CodeUsage(64, window=100).load_state_dict(u.state_dict())


def test_bits_per_pixel():
    assert bits_per_pixel(256, 1024, 64 * 64) == 0.625
    assert bits_per_pixel(16 * 16, 2**14, 256 * 256) == 256 * 14 / 65536
