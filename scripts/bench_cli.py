"""Start-up of the command line: `arimg --help`, `arimg sample --help` and one `arimg sample` (the bundled
model, or --ckpt RUN), each beside `python -c pass` measured in the same rounds (interleaved, median of
--rounds). Prints one JSON object on stdout.

    python scripts/bench_cli.py [--rounds 5] [--ckpt RUN]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ckpt", default=None, help="sample from this run (default: the bundled model, if installed)")
    args = ap.parse_args()
    arimg = [sys.executable, "-m", "arimg"]
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"python -c pass": [sys.executable, "-c", "pass"],
                 "arimg --help": [*arimg, "--help"],
                 "arimg sample --help": [*arimg, "sample", "--help"]}
        try:
            if args.ckpt is None:
                from arlm.generation.modelcard import default_model

                default_model()
            cases["arimg sample (1 image)"] = [*arimg, "sample", "-p", "a red circle above a blue square", "--out",
                                               str(Path(tmp) / "s"), *(["--ckpt", args.ckpt] if args.ckpt else [])]
        except Exception as e:  # no bundled model in this tree: time the rest
            print(f"bench_cli: not timing sample: {e}", file=sys.stderr)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved: a slow moment of the machine hits every case alike
            for name, cmd in cases.items():
                times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass"])
    report = {name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                     "vs_python": round(statistics.median(t) / base, 1)} for name, t in times.items()}
    print(json.dumps({"rounds": args.rounds, "python": sys.version.split()[0], "start_up": report}))
    for name, r in report.items():
        print(f"{name:28s} {r['median_s']:.3f} s (median of {args.rounds}; {r['vs_python']}x python -c pass)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
