"""Row 8, streaming load: many prompts through `arimg sample --prompt -` with a tiny model.

A trial feeds `prompts` distinct prompts on stdin (so a cache keyed by prompt would grow) and reads stdout as
it comes. It survives when every line is answered, in input order, with the same images as the trial before,
and the child's resident memory (VmRSS) when half and all of the lines are answered is within 10% of what it
was at the first 1% (model load and first-call warm-up come before that). stdin stays open until the last
reading, so the child is still alive, waiting for more, when it is taken.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from arlm.synth import single_prompts
from tests.faults.common import Row, env
from tests.faults import build

FLAT = 0.10  # largest growth of RSS over the run, as a share of the start


def rss_mib(pid: int) -> float:
    """Resident memory of a live process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS (exited?)")


def lines(n: int) -> list[str]:
    """n distinct prompts of the grammar."""
    single = single_prompts()
    return [f"{single[k % len(single)]} number {k}" for k in range(n)]


def stream(ckpt: Path, prompts: list[str], out: Path, log: Path) -> dict:
    """Run one `arimg sample --prompt -` over `prompts`; its answers, exit code and RSS at 1%, 50%, 100%."""
    marks = [("start", max(1, len(prompts) // 100)), ("middle", max(1, len(prompts) // 2)), ("end", len(prompts))]
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "arimg", "sample", "--ckpt", str(ckpt), "--prompt", "-",
                                 "--cfg", "1", "--size", "16", "--out", str(out)],  # 4x4 grids: 4x the lines/s
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env())

        def feed() -> None:  # a thread: stdin and stdout pipes both fill, so one side must not wait on the other
            try:
                proc.stdin.write("".join(p + "\n" for p in prompts).encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        records, rss, t0, t_start = [], {}, time.perf_counter(), None
        try:
            for raw in proc.stdout:
                records.append(json.loads(raw))
                for name, at in marks:
                    if len(records) == at:
                        rss[name] = rss_mib(proc.pid)
                        t_start = t_start or time.perf_counter()
                if len(records) == len(prompts):
                    break
            seconds = time.perf_counter() - t0
            speed = (len(records) - marks[0][1]) / (time.perf_counter() - t_start) if t_start else 0.0
            writer.join()
            proc.stdin.close()
            rest = proc.stdout.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"records": records, "rss": rss, "code": code, "extra": rest, "seconds": seconds, "lines_per_s": speed}


def run(trials: int, workdir: Path, prompts: int = 10_000, ckpt: Path | None = None) -> Row:
    """`trials` streams of `prompts` prompts each. `ckpt`: a tiny transformer run to use (default: built here).
    The RSS figures (MiB) and lines/s of each trial go to row.rss and row.lines_per_s."""
    row = Row("streaming load", test="tests/faults/test_stream.py::test_streaming_load_is_flat_and_ordered")
    row.rss, row.lines_per_s = [], []
    workdir = Path(workdir)
    ckpt = ckpt or build.lm(workdir)
    text = lines(prompts)
    t0, previous = time.perf_counter(), None
    for t in range(trials):
        row.trials += 1
        try:
            got = stream(ckpt, text, workdir / f"stream-{t}", workdir / f"stream-{t}.stderr")
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:  # ValueError: a non-JSON line
            row.fail(f"trial {t}: {type(e).__name__}: {e}")
            continue
        row.rss.append(got["rss"])
        row.lines_per_s.append(got["lines_per_s"])
        records, rss = got["records"], got["rss"]
        answered = [(r["prompt"], r["path"]) for r in records]
        expected = [(p, str(workdir / f"stream-{t}" / f"{k:05d}-000.png")) for k, p in enumerate(text)]
        seeds = [r["image_seed"] for r in records]
        if got["code"] != 0 or got["extra"]:
            row.fail(f"trial {t}: exit {got['code']}, {len(got['extra'])} bytes after the last answer")
        elif answered != expected:
            row.fail(f"trial {t}: {len(records)} of {len(text)} answered"
                     + ("" if len(records) < len(text) else ", not in input order"))
        elif previous is not None and seeds != previous:
            row.fail(f"trial {t}: images differ from trial {t - 1}")
        elif max(rss["middle"], rss["end"]) > (1 + FLAT) * rss["start"]:
            row.fail(f"trial {t}: RSS grew: start {rss['start']:.0f} MiB, middle {rss['middle']:.0f}, "
                     f"end {rss['end']:.0f}")
        else:
            row.survived += 1
        previous = seeds
    row.seconds = time.perf_counter() - t0
    return row


def summary(row: Row) -> str:
    """One line per trial: RSS at start, middle and end (MiB) and lines/s."""
    return "\n".join(f"RSS start {r['start']:.1f} MiB, middle {r['middle']:.1f}, end {r['end']:.1f}; {v:.1f} lines/s"
                     for r, v in zip(row.rss, row.lines_per_s))
