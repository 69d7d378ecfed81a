"""Measured machine speed: matmul peaks and the precision to train in.

bf16 is not fast everywhere. On a CPU with AMX (recent Xeons) bf16 matmul runs several times faster than
fp32; on one without (AVX2-only parts, e.g. the AMD EPYC reference machine measured in docs/results.md)
PyTorch emulates it and it runs about 150x *slower*. So `precision=auto` measures both at start-up
(well under a second) and picks the faster; MFU is reported against the peak measured in the same run.
"""

from __future__ import annotations

import os
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


CPU_PRECISION_ENV = "ARIMG_CPU_PRECISION"  # fp32 | bf16: what 'auto' means on a CPU, without measuring
BF16_MARGIN = 1.25  # on a CPU, 'auto' takes bf16 only when its matmul is this much faster than fp32's


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """'bf16' or 'fp32'; 'auto' picks bf16 on CUDA and, on a CPU, bf16 only where its matmul measures clearly
    faster (BF16_MARGIN: a near tie, or a busy machine's noisy timing, stays with exact fp32), unless
    $ARIMG_CPU_PRECISION says which (the tests pin fp32, so that their figures never depend on a timing)."""
    if precision in DTYPES:
        return precision
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if torch.device(device).type == "cuda":
        return "bf16"
    forced = os.environ.get(CPU_PRECISION_ENV)
    if forced:
        if forced not in DTYPES:
            raise ValueError(f"${CPU_PRECISION_ENV} must be bf16 or fp32, got {forced!r}")
        return forced
    small = 256  # enough to tell a native kernel from an emulated one, quick even when emulated
    bf16 = matmul_flops(torch.bfloat16, device, n=small, budget_s=0.05)
    fp32 = matmul_flops(torch.float32, device, n=small, budget_s=0.05)
    return "bf16" if bf16 > BF16_MARGIN * fp32 else "fp32"


def timed(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds for `steps` calls of fn after `warmup` untimed ones (benchmarks)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


# benchmark tables

def fmt_flops(x: float, unit: str = "FLOP/s") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:,.3g} {prefix}{unit}" if x / scale < 100 else f"{x / scale:,.0f} {prefix}{unit}"
    return f"{x:,.0f} {unit}"


def fmt_pct(x: float) -> str:
    return f"{100 * x:,.0f}%" if x >= 1 else f"{100 * x:.3g}%"


def fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"
