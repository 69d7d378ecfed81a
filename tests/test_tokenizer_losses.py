"""Invariants of the VQ-GAN stage's losses: discriminator shapes and batch independence, hinge losses and the
adaptive weight against hand-computed values, LeCAM's one-sided penalty and checkpointed anchors, the edge
loss's ordering on shifted and blurred edges, and LPIPS' weight file round trip and its errors."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from arlm.errors import UserError
from arlm.tokenizer.gan import LeCAM, PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from arlm.tokenizer.perceptual import LPIPS, EdgeLoss, build_perceptual


def _edge(h: int, w: int, col: float, width: float = 1.0) -> torch.Tensor:
    """(1, 3, h, w): -1 left of column `col`, +1 right of it, a linear ramp `width` pixels wide between."""
    c = torch.arange(w, dtype=torch.float32) + 0.5
    row = ((c - col) * 2 / width).clamp(-1, 1)
    return row.expand(1, 3, h, w).clone()


# --- discriminator and GAN losses ---------------------------------------------------------------------


@pytest.mark.parametrize("hw, grid", [((32, 32), (2, 2)), ((32, 64), (2, 6))])
def test_discriminator_shape(hw, grid):
    d = PatchDiscriminator(channels=8, n_layers=3)
    out = d(torch.rand(2, 3, *hw) * 2 - 1)
    assert out.shape == (2, 1, *grid)


def test_discriminator_has_no_batch_statistics():
    # a sample's logits must not depend on what else is in the batch (BatchNorm's would, in train mode)
    torch.manual_seed(0)
    d = PatchDiscriminator(channels=8).train()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    torch.testing.assert_close(d(x)[:1], d(x[:1]), rtol=1e-5, atol=1e-6)


def test_hinge_d_loss_values():
    t = torch.full((2, 1, 3, 3), 1.0)
    assert hinge_d_loss(2 * t, -2 * t).item() == 0.0  # both beyond the margin
    assert hinge_d_loss(0 * t, 0 * t).item() == pytest.approx(1.0)  # 0.5 * (1 + 1)
    assert hinge_d_loss(0.5 * t, 0.25 * t).item() == pytest.approx(0.5 * (0.5 + 1.25))
    # only the sides inside the margin count
    assert hinge_d_loss(torch.tensor([3.0, 0.0]), torch.tensor([-1.0, -1.0])).item() == pytest.approx(0.25)
    assert hinge_d_loss(t.half(), t.half()).dtype == torch.float32


def test_hinge_g_loss_sign():
    assert hinge_g_loss(torch.full((2, 1, 2, 2), 3.0)).item() == pytest.approx(-3.0)
    # the generator gains (loss falls) when the discriminator scores its fakes higher
    assert hinge_g_loss(torch.tensor([1.0])) < hinge_g_loss(torch.tensor([-1.0]))
    assert hinge_g_loss(torch.ones(3).half()).dtype == torch.float32


def test_adaptive_weight_is_ratio_of_gradient_norms():
    torch.manual_seed(0)
    last = nn.Linear(4, 3, bias=False)
    x, t, c = torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3)
    out = last(x)
    rec = ((out - t) ** 2).sum()  # dW = 2 (out - t)^T x
    g = -(c * out).sum()  # dW = -c^T x
    with torch.no_grad():
        expected = (2 * (out - t).T @ x).norm() / ((-c.T @ x).norm() + 1e-4)
    w = adaptive_weight(rec, g, last.weight)
    assert w.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not w.requires_grad
    (rec + w * g).backward()  # the graph survived both autograd.grad calls
    assert last.weight.grad is not None
    # a vanishing adversarial gradient hits the clamp
    out = last(x)
    w = adaptive_weight(((out - t) ** 2).sum(), 1e-12 * out.sum(), last.weight, max_weight=50.0)
    assert w.item() == 50.0


def test_lecam_penalty_is_one_sided():
    reg = LeCAM()
    reg.ema_real.fill_(1.0)
    reg.ema_fake.fill_(-1.0)
    real_low, fake_high = torch.full((2, 1, 2, 2), -2.0), torch.full((2, 1, 2, 2), 2.0)
    assert reg.penalty(real_low, fake_high).item() == 0.0
    zeros = torch.zeros(2, 1, 2, 2)
    # relu(0 - (-1))^2 + relu(1 - 0)^2
    assert reg.penalty(zeros, zeros).item() == pytest.approx(2.0)
    assert reg.penalty(zeros, fake_high).item() == pytest.approx(1.0)
    assert reg.penalty(real_low, zeros).item() == pytest.approx(1.0)


def test_lecam_update_and_state_dict_round_trip():
    reg = LeCAM(decay=0.9)
    assert reg.ema_real.item() == 0.0 and reg.ema_fake.item() == 0.0
    reg.update(torch.full((4, 1, 2, 2), 1.0, requires_grad=True), torch.full((4, 1, 2, 2), -2.0))
    assert reg.ema_real.item() == pytest.approx(0.1)
    assert reg.ema_fake.item() == pytest.approx(-0.2)
    assert not reg.ema_real.requires_grad
    sd = reg.state_dict()
    assert set(sd) == {"ema_real", "ema_fake"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = LeCAM(decay=0.9)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.ema_real.item() == pytest.approx(0.1)
    assert other.ema_fake.item() == pytest.approx(-0.2)


# --- edge loss ----------------------------------------------------------------------------------------


def test_edge_loss_zero_on_identical_and_on_constant_offset():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 64) * 1.6 - 0.8
    loss = EdgeLoss()
    assert loss(x, x).shape == (2,)
    assert torch.equal(loss(x, x), torch.zeros(2))
    # gradients ignore a uniform shift in colour: the pixel loss must still see it
    torch.testing.assert_close(loss(x, x + 0.2), torch.zeros(2), rtol=0, atol=1e-6)
    offset = torch.tensor([0.1, -0.2, 0.15]).view(1, 3, 1, 1)
    torch.testing.assert_close(loss(x, x + offset), torch.zeros(2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(32, 32), (32, 64)])
def test_edge_loss_orders_shifts_and_blurs(hw):
    h, w = hw
    loss = EdgeLoss()
    ref = _edge(h, w, col=12)
    shift1, shift4 = loss(ref, _edge(h, w, col=13)), loss(ref, _edge(h, w, col=16))
    assert shift1.item() > 0
    assert shift4.item() > shift1.item()  # the pooled scales see the larger move
    blur2, blur8 = loss(ref, _edge(h, w, col=12, width=2)), loss(ref, _edge(h, w, col=12, width=8))
    assert 0 < blur2.item() < blur8.item()


def test_build_perceptual_without_weights_is_edge_loss():
    assert isinstance(build_perceptual(None), EdgeLoss)
    assert isinstance(build_perceptual(""), EdgeLoss)


# --- LPIPS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """A random LPIPS (positive random lin weights, as trained LPIPS has) and its weights as .safetensors."""
    torch.manual_seed(0)
    model = LPIPS()
    with torch.no_grad():
        for k in range(5):
            getattr(model, f"lin{k}").weight.uniform_(0.0, 1.0)
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_lpips_state_dict_names():
    sd = LPIPS().state_dict()
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    expected |= {f"lin{k}.weight" for k in range(5)}
    assert set(sd) == expected
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["features.28.weight"].shape == (512, 512, 3, 3)
    assert [sd[f"lin{k}.weight"].shape[1] for k in range(5)] == [64, 128, 256, 512, 512]


def test_lpips_from_file_matches_original(lpips_file):
    model, path = lpips_file
    loaded = LPIPS.from_file(path)
    assert isinstance(build_perceptual(str(path)), LPIPS)
    torch.manual_seed(1)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    # one batch of three pairs: (x, y), (x, x), (x, mirrored x); VGG16 is the slow part of this file
    d = loaded(x.expand(3, -1, -1, -1), torch.cat([y, x, x.flip(-1)]))
    assert d.shape == (3,)
    torch.testing.assert_close(d[:1], model(x, y))
    assert d[1].item() == 0.0
    assert d[0].item() > 0 and d[2].item() > 0


def test_lpips_reads_torch_files(lpips_file, tmp_path):
    model, _ = lpips_file
    path = tmp_path / "lpips.pth"
    torch.save(model.state_dict(), path)
    loaded = LPIPS.from_file(path).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())


def test_lpips_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(UserError) as e:
        LPIPS.from_file(path)
    msg = str(e.value)
    assert str(path) in msg and "no such file" in msg and "\n" not in msg
    with pytest.raises(UserError):
        build_perceptual(str(path))


def test_lpips_missing_and_mismatched_keys(lpips_file, tmp_path):
    model, _ = lpips_file
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    missing = dict(sd)
    del missing["lin3.weight"]
    path = tmp_path / "missing.safetensors"
    save_file(missing, str(path))
    with pytest.raises(UserError) as e:
        LPIPS.from_file(path)
    msg = str(e.value)
    assert str(path) in msg and "lin3.weight" in msg and "missing" in msg and "\n" not in msg

    # the official lpips naming, not converted
    renamed = {(k.replace("lin0.weight", "lin0.model.1.weight")): v for k, v in sd.items()}
    path = tmp_path / "renamed.safetensors"
    save_file(renamed, str(path))
    with pytest.raises(UserError, match="lin0.model.1.weight") as e:
        LPIPS.from_file(path)
    assert "\n" not in str(e.value)

    wrong = dict(sd, **{"lin1.weight": torch.ones(1, 64, 1, 1)})
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, str(path))
    with pytest.raises(UserError, match="shape mismatch lin1.weight") as e:
        LPIPS.from_file(path)
    assert "\n" not in str(e.value)

    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="cannot read") as e:
        LPIPS.from_file(path)
    assert "\n" not in str(e.value)


# --- both perceptual losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["edge", "lpips"])
def test_gradients_reach_input_not_loss_parameters(kind, lpips_file):
    loss = EdgeLoss() if kind == "edge" else LPIPS.from_file(lpips_file[1])
    loss.train()  # a parent model's train() must not unfreeze the metric, nor take LPIPS out of eval
    assert kind == "edge" or not loss.training
    assert all(not p.requires_grad for p in loss.parameters())
    torch.manual_seed(2)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    d = loss(x, y)
    assert d.dtype == torch.float32
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_losses_run_in_fp32_under_autocast(lpips_file):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert EdgeLoss()(x.bfloat16(), x.bfloat16() * 0.5).dtype == torch.float32
        model = lpips_file[0]
        d = model(x.bfloat16(), -x.bfloat16())
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, model(x.bfloat16().float(), -x.bfloat16().float()))
