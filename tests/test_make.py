"""The Makefile's recipe targets are one line each over `arimg recipe` (tests/test_recipe.py tests the runner):
`make demo` passes its folders and precision through as the recipe's variables, `make train-default` runs the
default recipe. Run with a stand-in for `arimg` that logs its arguments."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import check_parses

ROOT = Path(__file__).resolve().parents[1]
FAKE = '''#!{python}
import os, shlex, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(shlex.join(sys.argv[1:]) + "\\n")
'''
NO_MAKE = subprocess.run(["make", "--version"], capture_output=True).returncode != 0


def _make(tmp: Path, *args: str) -> list[str]:
    """`make ARGS` with an installed stand-in venv and `arimg`; the stand-in's log."""
    (tmp / "venv").mkdir(exist_ok=True)
    (tmp / "venv" / ".installed").touch()
    fake, log = tmp / "arimg", tmp / "log"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    log.unlink(missing_ok=True)
    r = subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={tmp}/venv", f"ARIMG={fake}", *args],
                       env={**os.environ, "FAKE_LOG": str(log)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines()


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_make_demo_and_train_default_run_the_recipes(tmp_path):
    assert _make(tmp_path, "demo") == ["recipe demo data=data/demo runs=runs synth=data/synth precision=fp32"]
    log = _make(tmp_path, "demo", "DEMO=d", "RUNS=r", "SYNTH=s", "PRECISION=auto")
    assert log == ["recipe demo data=d runs=r synth=s precision=auto"]
    assert _make(tmp_path, "train-default") == ["recipe default precision=fp32"]
    for line in log:
        check_parses(shlex.split(line))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    listed = {ln.split()[1] for ln in out.splitlines()}
    assert listed == {"help", "install", "test", "test-slow", "gpu-check", "demo", "train-default", "bench",
                      "clean-demo", "clean"}
