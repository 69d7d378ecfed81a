"""Quantizer invariants: decode(indices) == quantized exactly, fp32 under bf16 autocast, gradients pass."""

import math

import pytest
import torch

from arlm.quantizers import FSQ, LFQ, VectorQuantizer
from arlm.quantizers.lfq import _entropy


def _make(name):
    torch.manual_seed(0)
    return {
        "vq": lambda: VectorQuantizer(64, dim=8),
        "vq-ema": lambda: VectorQuantizer(64, dim=8, ema=True, dead_threshold=0.01),
        "vq-plain": lambda: VectorQuantizer(64, dim=8, l2norm=False, kmeans_init=False),
        "fsq": lambda: FSQ([8, 5, 5, 5]),
        "lfq": lambda: LFQ(8),
    }[name]()


NAMES = ["vq", "vq-ema", "vq-plain", "fsq", "lfq"]


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_indices_is_exactly_the_quantized_latents(name):
    q = _make(name)
    z = torch.randn(4, q.dim, 6, 5)
    q.train()
    q(z)  # a training step first: data init, EMA and restarts must keep the invariant
    q.eval()
    quantized, indices, _ = q(z)
    assert indices.shape == (4, 6, 5) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < q.codebook_size
    assert torch.equal(q.decode(indices), quantized)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_under_bf16_autocast(name):
    q = _make(name).eval()
    z = torch.randn(2, q.dim, 4, 4)
    with torch.no_grad():
        ref, ref_idx, _ = q(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, idx, losses = q(z)
            out16, _, _ = q(z.bfloat16())  # a bf16 activation is cast up, not searched in bf16
    assert out.dtype == out16.dtype == torch.float32 and all(v.dtype == torch.float32 for v in losses.values())
    assert torch.equal(idx, ref_idx) and torch.equal(out, ref)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_pass_straight_through(name):
    q = _make(name).train()
    z = torch.randn(2, q.dim, 4, 4, requires_grad=True)
    quantized, _, losses = q(z)
    (quantized.square().sum() + sum(losses.values())).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vq", "vq-plain", "lfq"])
def test_codes_map_back_to_their_own_index(name):
    q = _make(name).eval()
    every = torch.arange(q.codebook_size).reshape(1, 1, -1)
    _, indices, _ = q(q.decode(every))
    assert torch.equal(indices, every)


def test_fsq_grid():
    q = FSQ([8, 5, 5, 5]).eval()
    assert q.codebook_size == 1000
    every = torch.arange(1000).reshape(1, 1, -1)
    codes = q.decode(every)
    assert len({tuple(c) for c in codes[0, :, 0].T.tolist()}) == 1000 and codes.abs().max() <= 1
    torch.manual_seed(0)
    _, indices, _ = q(torch.randn(1, 4, 200, 200))
    assert len(indices.unique()) == 1000  # unit-variance latents reach every grid point
    with pytest.raises(ValueError):
        FSQ([8, 1])


def _two_clusters(n=512, d=4):
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, d), dim=1)
    z = centres[torch.randint(2, (n,))] + 0.01 * torch.randn(n, d)
    return centres, z.T.reshape(1, d, 16, n // 16)


def test_vq_kmeans_init_puts_codes_on_the_data():
    centres, z = _two_clusters()
    q = VectorQuantizer(16, dim=4).train()
    before = q.codebook.detach().clone()
    q(z)
    assert bool(q.initialised) and not torch.equal(before, q.codebook)
    assert ((q.codebook.detach() @ centres.T).max(1).values > 0.99).all()


@pytest.mark.parametrize("threshold, all_alive", [(0.5, True), (0.0, False)])
def test_vq_dead_codes_are_restarted_onto_latents(threshold, all_alive):
    centres, z = _two_clusters()
    q = VectorQuantizer(16, dim=4, ema=True, kmeans_init=False, decay=0.5, dead_threshold=threshold).train()
    for _ in range(10):
        q(z)
    near = (q.codebook.detach() @ centres.T).max(1).values > 0.99
    assert bool(near.all()) == all_alive  # without restarts, codes no latent picks stay where they started


def test_lfq_entropy_terms():
    q = LFQ(6).train()
    confident = torch.randn(1, 6, 32, 32) * 10
    _, _, losses = q(confident)
    # confident, well-spread latents: per-sample entropy near 0, batch entropy near log(64)
    assert losses["entropy"] / q.entropy_weight < -0.9 * math.log(64)
    # the per-bit batch entropy bounds the exact one from above
    flat = confident.movedim(1, -1).reshape(-1, 6)
    p1 = torch.sigmoid(4 * flat)
    per_bit = _entropy(torch.stack([1 - p1, p1], -1).mean(0)).sum()
    exact = -(q._entropy_loss(flat) - _entropy(torch.stack([1 - p1, p1], -1)).sum(-1).mean())
    assert per_bit >= exact - 1e-4


@pytest.mark.parametrize("l2norm", [True, False])
def test_vq_search_in_chunks_finds_the_nearest_code(l2norm):
    torch.manual_seed(0)
    q = VectorQuantizer(300, dim=8, l2norm=l2norm, kmeans_init=False)
    flat = torch.randn(1000, 8)
    flat = torch.nn.functional.normalize(flat, dim=1) if l2norm else flat
    brute = torch.cdist(flat, q._codes()).argmin(1)  # every distance at once
    assert torch.equal(q._nearest(flat, chunk=64), brute)


@pytest.mark.parametrize("ema, threshold", [(False, 0.0), (False, 0.5), (True, 0.5)])
def test_vq_training_indices_are_nearest_to_the_updated_codes(ema, threshold):
    """One search per step unless the codes moved (init, EMA, restart): the indices still name the nearest codes."""
    torch.manual_seed(0)
    q = VectorQuantizer(32, dim=4, ema=ema, decay=0.5, dead_threshold=threshold).train()
    for _ in range(5):
        z = torch.randn(2, 4, 8, 8)
        _, indices, _ = q(z)
        flat = torch.nn.functional.normalize(z.movedim(1, -1).reshape(-1, 4), dim=1)
        assert torch.equal(indices.flatten(), (flat @ q._codes().T).argmax(1))
