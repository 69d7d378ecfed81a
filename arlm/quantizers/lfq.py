"""Lookup-free quantization (Yu et al., 2023, "Language Model Beats Diffusion: Tokenizer is Key to Visual
Generation", MAGVIT-v2, section 3.1).

Each of the d channels is quantized to its sign, so the codebook is the 2^d corners of the hypercube
{-1, 1}^d and the index is the binary number the signs spell. Nothing is looked up and nothing is learned.
An entropy penalty (eq. 5) makes each latent confident about its code (low per-sample entropy) while the
batch as a whole spreads over the codebook (high entropy of the mean distribution); the distribution
over codes is a softmax of -||z - c||^2 / T, which factorises over bits: p(bit_i = 1) = sigmoid(4 z_i / T).
The batch entropy is taken over the exact code distribution when 2^d <= 1024, else over each bit's
marginal (an upper bound that still pushes every bit to be used half the time). Under data parallelism
the batch is the global one: the mean distribution is averaged over processes (`sync`, handed in by the
trainer), with its gradient.

Shapes: z (B, d, H, W) -> quantized (B, d, H, W) in {-1, 1}, indices (B, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlm.quantizers.common import LOCAL, fp32, straight_through

EXACT_MAX_BITS = 10  # (2^d, N) probabilities in memory: 1024 x 16k latents is 64 MB


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp(min=1e-8))).sum(dim)


class LFQ(nn.Module):
    def __init__(self, dim: int, entropy_weight: float = 0.1, diversity_weight: float = 1.0, beta: float = 0.25,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not 1 <= dim <= 30:
            raise ValueError(f"LFQ needs 1..30 bits, got {dim}")
        self.dim, self.codebook_size = dim, 2**dim
        self.entropy_weight, self.diversity_weight, self.beta, self.temperature = (
            entropy_weight, diversity_weight, beta, temperature)
        self.register_buffer("bits", 2 ** torch.arange(dim), persistent=False)
        self.sync = LOCAL  # collectives over data-parallel processes (arlm.parallel.Collectives)

    def _entropy_loss(self, flat: torch.Tensor) -> torch.Tensor:
        p1 = torch.sigmoid(4 * flat / self.temperature)  # (N, d): p(bit = 1)
        bit_p = torch.stack([1 - p1, p1], -1)  # (N, d, 2)
        per_sample = _entropy(bit_p).sum(-1).mean()  # independent bits: entropies add
        if self.dim <= EXACT_MAX_BITS:
            codes = ((torch.arange(self.codebook_size, device=flat.device).unsqueeze(1) & self.bits) > 0).float()
            log_p = codes @ torch.log(p1.clamp(min=1e-8)).T + (1 - codes) @ torch.log((1 - p1).clamp(min=1e-8)).T
            # entropy of the mean distribution over codes
            batch = _entropy(self.sync.all_mean(log_p.exp().mean(1)), dim=0)
        else:
            batch = _entropy(self.sync.all_mean(bit_p.mean(0))).sum()
        return per_sample - self.diversity_weight * batch

    @fp32
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, d, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"LFQ over {self.dim} channels got {d}")
        flat = z.movedim(1, -1).reshape(-1, d)
        positive = flat > 0
        q = torch.where(positive, 1.0, -1.0)
        indices = (positive.long() * self.bits).sum(-1)
        losses = {"commit": self.beta * F.mse_loss(flat, q)}
        if self.training and self.entropy_weight > 0:
            losses["entropy"] = self.entropy_weight * self._entropy_loss(flat)
        quantized = straight_through(flat, q).reshape(b, h, w, d).movedim(-1, 1)
        return quantized, indices.reshape(b, h, w), losses

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, d, H, W), the same values forward gives."""
        bits = (indices.unsqueeze(-1) & self.bits) > 0
        return torch.where(bits, 1.0, -1.0).movedim(-1, 1)
