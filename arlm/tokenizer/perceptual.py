"""Perceptual losses for the tokenizer: LPIPS when weights are at hand, a weight-free edge loss otherwise.

- LPIPS (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
  eq. 1, on a VGG16 backbone (Simonyan & Zisserman, 2015):
      d(x, y) = sum_l 1/(H_l W_l) sum_{h,w} || w_l * (f_l(x)_{hw} - f_l(y)_{hw}) ||_2^2
  with f_l the channel-wise unit-normalised activations after relu1_2, relu2_2, relu3_3, relu4_3 and
  relu5_3, and w_l a learned non-negative per-channel weight (a 1x1 convolution without bias). Taming's
  VQGAN (Esser et al., 2021) adds it to the reconstruction loss. The machine that trains may have no
  network, so nothing is downloaded: the weights come from one local file (`LPIPS.from_file`).
- EdgeLoss: L1 between finite-difference image gradients at three scales, for when there are no weights.

Both take x, y (B, 3, H, W) in [-1, 1], of any size, and return a per-image loss (B,), computed in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm.errors import UserError

# (index in torchvision's vgg16().features, in channels, out channels) of each convolution; the ReLUs and
# max-pools between them take the remaining indices, so parameter names match torchvision's.
_VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]  # fmt: skip
_VGG16_POOLS = (4, 9, 16, 23)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS distance on VGG16: forward(x, y) -> (B,), 0 for identical images.

    Weights file (`from_file`): one `.safetensors` file (or anything `torch.load(weights_only=True)` reads
    as a flat dict of tensors) holding exactly these keys, loaded strictly:

    - `features.{i}.weight`, `features.{i}.bias` for i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28:
      the convolutions of VGG16's feature extractor;
    - `lin0.weight` ... `lin4.weight`, shapes (1, C, 1, 1) with C = 64, 128, 256, 512, 512.

    Converting the official weights is left to the user (it needs the network this module avoids): take
    torchvision's `vgg16(weights=IMAGENET1K_V1).features` state dict with its names unchanged (prefixed
    `features.`), take the official lpips package's `weights/v0.1/vgg.pth` and rename each
    `lin{k}.model.1.weight` to `lin{k}.weight`, merge the two dicts, and save them with
    safetensors.torch.save_file. Any other key (e.g. lpips' `scaling_layer.*` buffers) must be dropped:
    the scaling constants are fixed here.

    A freshly constructed LPIPS has a random backbone and all-ones `lin` weights (LPIPS' unweighted
    "baseline" variant); it is only meaningful once loaded. Parameters are frozen and the module stays in
    eval mode, so it can sit inside a model that is switched to train().
    """

    shift: Tensor
    scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        convs = {i: nn.Conv2d(c_in, c_out, 3, padding=1) for i, c_in, c_out in _VGG16_CONVS}
        layers: list[nn.Module] = []
        for i in range(_TAPS[-1] + 1):  # the last max-pool (index 30) comes after the last tap: not needed
            # not in-place: the tapped activations must survive the next layer
            layers.append(convs[i] if i in convs else nn.MaxPool2d(2, 2) if i in _VGG16_POOLS else nn.ReLU())
        self.features = nn.Sequential(*layers)
        for k, ch in enumerate(_TAP_CHANNELS):
            lin = nn.Conv2d(ch, 1, 1, bias=False)
            nn.init.ones_(lin.weight)
            self.add_module(f"lin{k}", lin)
        # LPIPS' ScalingLayer: maps [-1, 1] images onto the ImageNet normalisation VGG was trained with.
        # Fixed constants, so not part of the state dict (the weights file carries learned tensors only).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # a fixed metric: no mode changes with the model around it
        return super().train(False)

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"LPIPS weights {path}: no such file")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file: one line, not a traceback
            raise UserError(f"LPIPS weights {path}: cannot read ({type(e).__name__}: {_one_line(e)})") from e
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UserError(f"LPIPS weights {path}: not a flat dict of tensors")
        model = cls()
        problem = _key_problems(model.state_dict(), state)
        if problem:
            raise UserError(f"LPIPS weights {path}: {problem}")
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            b = x.shape[0]
            # one backbone pass over both images
            h = (torch.cat([x.float(), y.float()]) - self.shift) / self.scale  # (2B, 3, H, W)
            lins = [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]
            total = x.new_zeros(b, dtype=torch.float32)
            k = 0
            for i, layer in enumerate(self.features):
                h = layer(h)
                if i == _TAPS[k]:
                    f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm along channels
                    d = (f[:b] - f[b:]).pow(2)  # (B, C_k, h, w)
                    total = total + lins[k](d).mean(dim=(1, 2, 3))  # (B,)
                    k += 1
            return total


def _one_line(e: Exception) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= 160 else s[:157] + "..."


def _key_problems(expected: dict[str, Tensor], got: dict[str, Tensor]) -> str:
    """'' if `got` loads strictly into `expected`, else what is wrong, in one line."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(got))
        if got[k].shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {some(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch {some(shapes)}")
    return "; ".join(parts)


class EdgeLoss(nn.Module):
    """Weight-free perceptual fallback: L1 between image gradients at 3 scales -> (B,).

    Why: the images this project tokenizes are flat colour fields with hard edges and text. A pixel loss
    averages over every pixel, so the flat regions, which are easy, dominate it, and a blurred edge or a
    broken thin stroke costs little. Finite differences are zero on flat regions and large exactly at edges
    and strokes, so an L1 between the gradients of the two images spends the loss where the structure is,
    which is what a perceptual loss buys on natural images. The coarser scales (2x and 4x average-pooled)
    see an edge that moved by a few pixels as moved, where at full scale a 1-pixel and a 4-pixel shift cost
    the same.

    Gradients ignore a uniform colour shift (a constant offset gives a loss of 0), so this complements the
    pixel loss rather than replacing it.
    """

    def __init__(self, scales: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.scales = scales

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.float(), y.float()
            terms = []
            for s in self.scales:
                if min(x.shape[-2:]) // s < 2:  # too small to have a difference at this scale
                    continue
                xs, ys = (F.avg_pool2d(x, s), F.avg_pool2d(y, s)) if s > 1 else (x, y)
                for dim in (-1, -2):  # x then y direction, per channel
                    gx, gy = xs.diff(dim=dim), ys.diff(dim=dim)  # (B, 3, h, w - 1) / (B, 3, h - 1, w)
                    terms.append((gx - gy).abs().mean(dim=(1, 2, 3)))
            if not terms:  # a 1-pixel side: no differences at any scale
                return x.new_zeros(x.shape[0])
            return torch.stack(terms).mean(dim=0)  # (B,)


def build_perceptual(weights: str | None) -> nn.Module:
    """LPIPS from the local file `weights`, or the weight-free EdgeLoss when there is none."""
    return LPIPS.from_file(weights) if weights else EdgeLoss()
