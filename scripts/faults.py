"""Run every fault row of issue 18 at its full trial count and print one table (trials, survived, lost,
seconds, the test that enforces the row in CI). The rows live in tests/faults/row_*.py; the tests there run
each with a few trials.

    .venv/bin/python scripts/faults.py > faults.md            # all rows, about 40 minutes on 2 cores
    .venv/bin/python scripts/faults.py --rows kill,lock --scale 0.2
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ARIMG_CPU_PRECISION", "fp32")

# row module: trials at full scale (what each trial is: see the module's docstring)
ROWS = {
    "kill": ("row_kill", 7),  # per stage: 21 killed runs
    "disk": ("row_disk", 3),  # planted ENOSPC saves per stage, + a real tmpfs per stage and per shard writer
    "lock": ("row_lock", 2),  # rounds of every writing command held, then stale, + a race
    "data": ("row_data", 20),
    "prompts": ("row_prompts", 50),
    "nonfinite": ("row_nonfinite", 1),  # rounds of 18 planted faults
    "untrusted": ("row_untrusted", 3),  # rounds of 6 malicious files
    "stream": ("row_stream", 1),  # 10,000 prompts through `arimg sample --prompt -`
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every row's trial count (at least 1)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = ap.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if unknown := [n for n in names if n not in ROWS]:
        ap.error(f"unknown row(s): {', '.join(unknown)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="arimg-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        module, trials = ROWS[name]
        row_module = importlib.import_module(f"tests.faults.{module}")
        print(f"row {name}: {max(1, round(trials * args.scale))} trial(s)...", file=sys.stderr, flush=True)
        row = row_module.run(max(1, round(trials * args.scale)), work)
        rows.append(row)
        print(f"row {name}: {row.survived}/{row.trials} survived, {row.lost} lost, {row.seconds:.0f} s",
              file=sys.stderr, flush=True)
        for note in row.notes:
            print(f"  {note}", file=sys.stderr)
    if args.json:
        for row in rows:
            print(json.dumps(row.__dict__))
    else:
        print("| row | trials | survived | lost | seconds | enforced in CI by |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row.name} | {row.trials} | {row.survived} | {row.lost} | {row.seconds:.0f} | `{row.test}` |")
    return 1 if any(row.lost for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
