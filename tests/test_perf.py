import pytest
import torch

from arlm.perf import matmul_flops, resolve_precision


def test_matmul_flops_is_positive_and_finite():
    f = matmul_flops(torch.float32, n=128, budget_s=0.01)
    assert 1e6 < f < 1e16


def test_resolve_precision(monkeypatch):
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("ARIMG_CPU_PRECISION", "bf16")  # the environment decides auto on a CPU, unmeasured
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setenv("ARIMG_CPU_PRECISION", "fp8")
    with pytest.raises(ValueError):
        resolve_precision("auto")
    monkeypatch.delenv("ARIMG_CPU_PRECISION")
    auto = resolve_precision("auto")
    assert auto in ("bf16", "fp32")
    # auto follows the measurement: it never picks a dtype measured several times slower
    bf16 = matmul_flops(torch.bfloat16, n=256, budget_s=0.05)
    fp32 = matmul_flops(torch.float32, n=256, budget_s=0.05)
    if max(bf16, fp32) > 3 * min(bf16, fp32):
        assert auto == ("bf16" if bf16 > fp32 else "fp32")
    with pytest.raises(ValueError):
        resolve_precision("fp8")
