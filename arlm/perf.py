"""Measured machine speed: matmul peaks and the precision to train in.

bf16 is not fast everywhere. On a CPU with AMX (recent Xeons) bf16 matmul runs several times faster than
fp32; on one without (AVX2-only parts, e.g. the AMD EPYC reference machine measured in docs/results.md)
PyTorch emulates it and it runs about 150x *slower*. So `precision=auto` measures both at start-up
(well under a second) and picks the faster; MFU is reported against the peak measured in the same run.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(dtype: torch.dtype, device: str | torch.device = "cpu", n: int = 1024,
                 budget_s: float = 0.2) -> float:
    """Achieved FLOP/s of an n x n matmul in `dtype`: repeated until `budget_s` has passed, best kept."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, allocation
    _sync(device)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < budget_s or best == float("inf"):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """'bf16' or 'fp32'; 'auto' picks bf16 on CUDA and, on a CPU, whichever matmul measures faster."""
    if precision in DTYPES:
        return precision
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if torch.device(device).type == "cuda":
        return "bf16"
    small = 256  # enough to tell a native kernel from an emulated one, quick even when emulated
    bf16 = matmul_flops(torch.bfloat16, device, n=small, budget_s=0.05)
    fp32 = matmul_flops(torch.float32, device, n=small, budget_s=0.05)
    return "bf16" if bf16 > fp32 else "fp32"
