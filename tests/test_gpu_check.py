"""scripts/gpu_check.sh --dry: the GPU check's every step, run on the CPU with tiny shapes (2 gloo processes
for the torchrun rows), so that a script CI cannot run on a GPU still cannot rot. About a minute on 2 cores."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

TRAINING = ["train-tokenizer, 1 process", "pretrain, 1 process", "pretrain, DDP × 2", "pretrain, FSDP2 × 2"]
SETUP = ["matmul peak, fp32", "data synth", "pretokenize"]
TOKENIZER_TORCHRUN = "train-tokenizer, torchrun × 2"
SAMPLING = ["sample, batch 1: arimg", "sample, batch 16: arimg"]
REFERENCE = ["sample, batch 1: transformers generate", "sample, batch 16: transformers generate"]
ROWS = ["matmul peak, fp32", "data synth", "train-tokenizer, 1 process", "pretokenize", "pretrain, 1 process",
        "pretrain, DDP × 2", "pretrain, FSDP2 × 2", TOKENIZER_TORCHRUN, SAMPLING[0], REFERENCE[0], SAMPLING[1],
        REFERENCE[1]]  # the table's order


def table_rows(stdout: str) -> dict[str, list[str]]:
    """check -> the other cells of its markdown row (setting, throughput, MFU, memory, wall)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("check",) and not set(cells[0]) <= {"-"}:
            assert cells[0] not in rows, f"row {cells[0]!r} twice"
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, table_rows(proc.stdout), out


def failed_logs(out) -> str:
    """The end of each failed step's own log (its stderr, every rank's under torchrun), for an assertion message."""
    parts = []
    for name, step in gpu_check.read_steps(out).items():
        if step["rc"] not in ("0", "skip"):
            log = out / "logs" / f"{name}.log"
            parts.append(f"== {name} (exit {step['rc']}):\n" + (log.read_text()[-3000:] if log.exists() else "(no log)"))
    return "\n".join(parts)


def is_figure(cell: str) -> bool:
    return any(ch.isdigit() for ch in cell) and not cell.startswith(("FAILED", "skipped"))


def test_every_row_is_there_once(dry):
    proc, rows, _ = dry
    assert list(rows) == ROWS, proc.stdout + proc.stderr[-3000:]


def test_the_cpu_rows_run(dry):
    """DDP, FSDP2 and the rest hold figures: nothing is skipped in the dry run but the optional reference."""
    _, rows, out = dry
    for check in SETUP + TRAINING + SAMPLING:
        assert check in rows and is_figure(rows[check][1]), f"{check}: {rows.get(check)}\n{failed_logs(out)}"
    for check in TRAINING[1:]:  # the pretrain rows: tokens/s, MFU, peak memory
        _, tok_s, mfu, memory, _ = rows[check]
        assert "tok/s" in tok_s and mfu.endswith("%") and memory.endswith(("MiB", "GiB")), rows[check]


def test_the_transformers_rows_say_why_they_are_skipped(dry):
    _, rows, _ = dry
    for check in REFERENCE:
        if importlib.util.find_spec("transformers") is None:
            assert rows[check][1].startswith("skipped: transformers not installed"), rows[check]
        else:
            assert is_figure(rows[check][1]), rows[check]


def test_the_tokenizer_under_torchrun_and_the_exit_code(dry):
    proc, rows, out = dry
    cell = rows[TOKENIZER_TORCHRUN][1]
    assert is_figure(cell), f"{cell}\n{failed_logs(out)}"
    assert proc.returncode == 0, proc.stdout + failed_logs(out)
    report = json.loads((out / "report.json").read_text())
    assert list(report["rows"]) == ROWS and (out / "table.md").read_text().strip() in proc.stdout
