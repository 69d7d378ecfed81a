"""What every fault row shares: its result, and running `arimg` in a child process.

Each row module (`tests/faults/row_*.py`) has `run(trials, workdir) -> Row`; the tests call it with a few
trials and require `lost == 0`, and `scripts/faults.py` calls every row with its full trial count and prints
one table. A row never asserts: it counts, so that the script can report what survived.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Row:
    name: str
    trials: int = 0
    survived: int = 0  # trials that ended as the row requires
    lost: int = 0  # trials that lost data, left a folder unusable, wrote outside their folder or crashed
    seconds: float = 0.0
    test: str = ""  # the test that enforces the row in CI
    notes: list[str] = dataclasses.field(default_factory=list)  # one line per trial that did not survive

    def fail(self, why: str) -> None:
        self.lost += 1
        self.notes.append(why)

    def record(self, why: str | None) -> None:
        """One trial: survived when `why` is None, else lost for that reason."""
        self.trials += 1
        if why is None:
            self.survived += 1
        else:
            self.fail(why)


def env(threads: int = 1) -> dict[str, str]:
    """The environment of a child `arimg`: one thread, fp32, the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "ARIMG_CPU_PRECISION": "fp32",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def arimg(*args, input: bytes | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`arimg ARGS` in a child process; stdout and stderr captured as bytes."""
    return subprocess.run([sys.executable, "-m", "arimg", *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=env(), cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess) -> bool:
    """A non-zero exit with exactly one line on stderr that starts `arimg: error:`, and no traceback."""
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    errors = [ln for ln in err if ln.startswith("arimg: error:")]
    return proc.returncode != 0 and len(errors) == 1 and not any("Traceback" in ln for ln in err)


def files_under(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*")}
