"""Run a command and append its wall time to a table: `timed.py TIMES.tsv STAGE CMD...` (make demo's stages).

The command's stdin, stdout, stderr and exit status pass through; the line `STAGE<TAB>seconds` is written
only when it succeeds, so an interrupted stage's time is not counted as finished work.
"""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 4:
        sys.stderr.write("usage: timed.py TIMES.tsv STAGE CMD...\n")
        return 2
    table, stage, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    t0 = time.perf_counter()
    try:
        rc = subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
    if rc == 0:
        with open(table, "a") as f:
            f.write(f"{stage}\t{time.perf_counter() - t0:.1f}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
