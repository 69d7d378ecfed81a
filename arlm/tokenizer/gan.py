"""The adversarial part of the VQ-GAN stage: a patch discriminator, hinge losses, taming's adaptive weight,
and LeCAM regularisation.

- PatchGAN discriminator (Isola et al., 2017, "Image-to-Image Translation with Conditional Adversarial
  Networks"), in the configuration taming-transformers uses for VQGAN (Esser et al., 2021): 4x4
  convolutions, `n_layers` of them with stride 2, LeakyReLU(0.2), then two stride-1 convolutions, the last
  one to a single channel of logits. Each output logit judges one receptive-field patch of the image, so
  the network is fully convolutional and takes any (H, W).
- Hinge losses (Lim & Ye, 2017; Miyato et al., 2018):
      L_D = 1/2 * ( E[relu(1 - D(x))] + E[relu(1 + D(x_hat))] )
      L_G = -E[D(x_hat)]
  The 1/2 on L_D is taming's, kept so loss values compare with its logs.
- Adaptive weight, eq. 7 of Esser et al. (2021):
      lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta),   delta = 1e-4
  with G_L the decoder's last layer: the adversarial term is scaled to pull on the decoder about as hard as
  the reconstruction term does.
- LeCAM regularisation (Tseng et al., 2021, "Regularizing Generative Adversarial Networks under Limited
  Data"):
      R = E[ ||D(x) - alpha_F||^2 ] + E[ ||D(x_hat) - alpha_R||^2 ]
  where alpha_R, alpha_F are exponential moving averages of the discriminator's mean output on real and on
  fake images. We use the one-sided form of the authors' released code: only real logits above alpha_F and
  fake logits below alpha_R are penalised (relu(...)^2), which keeps D from becoming over-confident.

Shapes: images (B, 3, H, W) in [-1, 1]; logits (B, 1, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) or 1, ch)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: (B, 3, H, W) in [-1, 1] -> logits (B, 1, h, w).

    With the default 3 layers a 32x32 image gives a 2x2 grid of logits (32 -> 16 -> 8 -> 4 -> 3 -> 2), each
    with a 70x70 receptive field. The two stride-1 convolutions each take one off the side, so a side needs
    at least 3 * 2^n_layers pixels (24 for 3 layers) for the grid to be non-empty.

    Norm: GroupNorm on the middle layers, not taming's BatchNorm. BatchNorm's batch statistics are
    per-process under DDP (or need SyncBatchNorm), are noisy at the tiny per-GPU batches a tokenizer trains
    with, and differ between the real-only and fake-only batches the discriminator is called on, so D can
    tell real from fake by the statistics alone. GroupNorm normalises each sample on its own: identical in
    train and eval, for any batch size, and on any number of processes. We keep a norm (rather than none)
    because it keeps the deeper layers' activations at a steady scale, which the hinge loss's margin of 1
    assumes.
    """

    def __init__(self, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for n in range(1, n_layers + 1):
            # the last of these keeps the resolution: taming's stride-1 layer before the output
            stride = 2 if n < n_layers else 1
            ch_out = channels * min(2**n, 8)
            # no bias: the norm's shift replaces it
            layers += [
                nn.Conv2d(ch, ch_out, 4, stride=stride, padding=1, bias=False),
                _group_norm(ch_out),
                nn.LeakyReLU(0.2),
            ]
            ch = ch_out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)  # (B, 1, h, w)


def _init_weights(m: nn.Module) -> None:
    # taming's weights_init (from the DCGAN recipe): N(0, 0.02) convolutions, N(1, 0.02) norm scales
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator hinge loss, halved as in taming: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    real, fake = real.float(), fake.float()
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    """Generator hinge loss: -mean(D(fake)); lower when the discriminator scores fakes as real."""
    return -fake.float().mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """Eq. 7 of Esser et al. (2021): ||grad rec|| / (||grad g|| + 1e-4) at `last_layer`, in [0, max_weight].

    Detached: the weight is a scale, not something to differentiate through. Both backward passes keep the
    graph, since the caller still backpropagates the weighted sum.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


class LeCAM(nn.Module):
    """LeCAM regulariser (Tseng et al., 2021) with its moving anchors as buffers, so they are checkpointed.

    `update` after each discriminator step with that step's logits; `penalty` is added to the
    discriminator's loss with the config's `lecam` weight. Under DDP each process keeps its own anchors;
    they are averages over many steps, so they agree closely without a sync.
    """

    ema_real: Tensor
    ema_fake: Tensor

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        self.ema_real.lerp_(real_logits.float().mean(), 1.0 - self.decay)
        self.ema_fake.lerp_(fake_logits.float().mean(), 1.0 - self.decay)

    def penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2), a scalar in fp32."""
        real, fake = real_logits.float(), fake_logits.float()
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()
