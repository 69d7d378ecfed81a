"""Row 3, two writers: every command that writes a folder (the training stages, data synth, data pack,
pretokenize, make-prefs) is refused with a one-line error while another live process holds that folder, and
touches nothing in it; once the holder is SIGKILLed its stale lock is taken over (and said so). Two real runs
started together into one folder: one runs, the other is refused, and the run that ran logs exactly the
figures of a run alone."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tests.faults import build
from tests.faults.common import REPO, Row, arimg, env, one_line_error
from tests.faults.row_kill import figures, reference

HOLDER = ("import sys, time\nfrom arlm.lock import hold\nwith hold(sys.argv[1]):\n"
          "    print('held', flush=True)\n    time.sleep(600)\n")


def commands(work: Path) -> dict[str, callable]:
    """Command name -> the arguments that write into a given folder."""
    src = work / "pack-src"
    if not src.is_dir():
        src.mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(src / f"{i}.png")
            (src / f"{i}.txt").write_text(f"picture {i}")
    build.prefs(work)  # writes the reward module make-prefs reads from its working folder
    return {
        "train-tokenizer": lambda out: build.stage_args("tokenizer", work, out),
        "pretrain": lambda out: build.stage_args("pretrain", work, out),
        "dpo": lambda out: build.stage_args("dpo", work, out),
        "data synth": lambda out: ["data", "synth", "--n", "48", "--size", "32", "--out", out],
        "data pack": lambda out: ["data", "pack", src, out],
        "pretokenize": lambda out: ["pretokenize", build.synth(work), "--tokenizer", build.tokenizer(work), "--size",
                                    "32", "--out", out],
        "make-prefs": lambda out: ["make-prefs", "--ckpt", build.lm(work), f"out={out}", "kinds=[single]",
                                   "per_kind=2", "k=2", f"reward={build.REWARD}", "margin=0.0"],
    }


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != ".arimg.lock"}


def busy_then_stale(name: str, args: callable, work: Path) -> str | None:
    """Why `name` interleaved with a live holder or did not take over a dead one's lock, or None."""
    folder = work / f"locked-{name.replace(' ', '-')}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "theirs.txt").write_text("the holder's file")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, env=env(), cwd=REPO)
    try:
        if holder.stdout.readline().strip() != b"held":
            return "the holder did not start"
        before = snapshot(folder)
        proc = arimg(*args(folder), cwd=work)
        if not one_line_error(proc) or b"in use by" not in proc.stderr:
            return f"a second writer was not refused (exit {proc.returncode}): {proc.stderr.decode()[-300:]}"
        if snapshot(folder) != before:
            return "the refused writer changed the folder"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    proc = arimg(*args(folder), cwd=work)
    if proc.returncode != 0 or b"took over the lock" not in proc.stderr:
        return f"the dead holder's lock was not taken over (exit {proc.returncode}): {proc.stderr.decode()[-300:]}"
    return None


def race(work: Path) -> str | None:
    """Two pretrain runs started together into one run folder."""
    run = work / "race"
    shutil.rmtree(run, ignore_errors=True)
    args = [sys.executable, "-m", "arimg", *map(str, build.stage_args("pretrain", work, run)), "overwrite=true"]
    procs = [subprocess.Popen(args, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    errs = [p.communicate()[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused = [e for p, e in zip(procs, errs) if p.returncode != 0]
    if codes[0] != 0 or len(refused) != 1 or b"in use by" not in refused[0]:
        return f"not one run and one refusal: exits {codes}"
    if figures(run) != reference("pretrain", work):
        return "the run that ran does not log the figures of a run alone"
    return None


def run(trials: int, workdir: Path, names: tuple[str, ...] | None = None) -> Row:
    """Each command (or those in `names`) held, then stale, plus a race of two runs; `trials` rounds."""
    row = Row("two writers (lock)", test="tests/faults/test_lock.py::test_two_writers_never_interleave")
    start = time.perf_counter()
    cmds = commands(workdir)
    for _ in range(trials):
        cases = [(n, lambda a=a, n=n: busy_then_stale(n, a, workdir)) for n, a in cmds.items() if not names or n in names]
        for name, case in [*cases, ("race of two pretrain runs", lambda: race(workdir))]:
            why = case()
            row.record(why and f"{name}: {why}")
    row.seconds = time.perf_counter() - start
    return row
