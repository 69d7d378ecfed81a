"""What every quantizer shares: fp32 under autocast, straight-through estimators exact in value.

Quantizers run in fp32 even inside a bf16 autocast region: bf16 has 8 bits of mantissa, so nearest-code
search and rounding in bf16 send nearby latents to the same code and lose codebook usage.
"""

from __future__ import annotations

import functools

import torch


def fp32(forward):
    """Run a quantizer method with autocast off and its tensor argument in float32."""

    @functools.wraps(forward)
    def wrapper(self, z: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=z.device.type, enabled=False):
            return forward(self, z.float(), *args, **kwargs)

    return wrapper


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value of q, gradient of z. Written q + (z - z.detach()) rather than z + (q - z).detach(): the added
    term is exactly zero, so the value is q to the bit and decoding the indices reproduces it exactly."""
    return q.detach() + (z - z.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (FSQ, eq. 1)."""
    return straight_through(x, torch.round(x))


class Local:
    """The collectives a quantizer keeps its state in step with, for one process, where each is the identity.
    Under torchrun the trainer hands in arlm.parallel.Collectives, which has the same methods: the quantizer
    itself never mentions processes (vector-quantize-pytorch takes its all-reduce the same way)."""

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes."""
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's t (the same shape on each) concatenated along dim 0 in rank order."""
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """The first process's t."""
        return t

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over processes, differentiable: the gradient reaches every process's t."""
        return t


LOCAL = Local()
