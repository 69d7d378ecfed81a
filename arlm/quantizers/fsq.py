"""Finite scalar quantization (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the d channels is squashed to a bounded range and rounded to one of L_i levels; the codebook is
the implicit grid of prod(L_i) points, so there is nothing to learn, nothing to collapse and no auxiliary
loss. The paper's recommended level sets: [8, 6, 5] (240 codes), [8, 5, 5, 5] (1000), [7, 5, 5, 5, 5]
(4375), [8, 8, 8, 6, 5] (15360).

Shapes: z (B, d, H, W) -> quantized (B, d, H, W) in [-1, 1], indices (B, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from arlm.quantizers.common import fp32, round_ste


class FSQ(nn.Module):
    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        if not levels or any(lv < 2 for lv in levels):
            raise ValueError(f"FSQ levels must all be >= 2, got {list(levels)}")
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("levels", lv, persistent=False)
        # mixed-radix place values: index = sum(digit_i * prod(L_j for j < i))
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """tanh squash to (-L/2, L/2) for odd L; for even L shifted by half a step so that rounding gives
        exactly L values, -L/2 .. L/2 - 1."""
        half = (self.levels - 1) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    @fp32
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z = z.movedim(1, -1)  # (B, H, W, d)
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ over {self.dim} channels got {z.shape[-1]}")
        steps = round_ste(self._bound(z))  # integers in [-L//2, (L-1)//2]
        width = torch.div(self.levels, 2, rounding_mode="floor")
        quantized = steps / width
        indices = ((steps.detach() + width).long() * self.basis).sum(-1)
        return quantized.movedim(-1, 1), indices, {}

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, d, H, W), the same values forward gives."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels.long()
        width = torch.div(self.levels, 2, rounding_mode="floor")
        return ((digits.float() - width) / width).movedim(-1, 1)
