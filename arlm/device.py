"""Where a run computes: the device a config names, and the autocast its precision asks for."""

from __future__ import annotations

import contextlib

import torch

from arlm.errors import ConfigError
from arlm.perf import DTYPES


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}") from None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing for fp32 (quantizers and losses cast themselves back to fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
