"""Row 2, disk full: a checkpoint or shard write that fails for lack of space keeps the previous checkpoint,
leaves no partial file behind and stops with a one-line error. Two ways to fill the disk: an ENOSPC planted
at a random file of a random checkpoint save, and a real tmpfs too small for the run (where this machine
lets us mount one: root, not in an unprivileged container)."""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from tests.faults import build
from tests.faults.common import Row, arimg, one_line_error
from tests.faults.row_kill import FILES_PER_SAVE, launch, usable


NO_TMPFS = "no tmpfs here (mount refused): planted faults only"


@contextlib.contextmanager
def tmpfs(where: Path, kib: int):
    """A tmpfs of `kib` KiB mounted at `where`, or None where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    try:
        yield where if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def leftovers(folder: Path) -> list[str]:
    """Partial files a failed write left: temporary checkpoints, pointers and shards."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp"))


def check_stopped(proc: subprocess.CompletedProcess | subprocess.Popen, err: bytes, run: Path,
                  min_step: int = 0) -> str | None:
    """Why a run that hit a full disk did not stop as it should, or None."""
    from arlm import checkpoint

    proc.stderr = err
    if not one_line_error(proc) or b"No space left" not in err:
        return f"not a one-line ENOSPC error (exit {proc.returncode}): {err.decode()[-300:]}"
    if (why := usable(run)) is not None:
        return why
    last = checkpoint.latest(run)
    if min_step and (last is None or checkpoint.read_meta(last)["step"] < min_step):
        return f"the previous checkpoint is gone (latest {last})"
    if left := leftovers(run):
        return f"partial files left: {left[:3]}"
    return None


def planted(stage: str, work: Path, rng: random.Random) -> str | None:
    run = work / f"enospc-{stage}"
    shutil.rmtree(run, ignore_errors=True)
    n, k = rng.randint(2, 6), rng.randint(1, FILES_PER_SAVE)  # checkpoints every step: save n is step n
    proc = launch(build.stage_args(stage, work, run), run, f"enospc-in-save:{n}:{k}")
    _, err = proc.communicate()
    return check_stopped(proc, err, run, min_step=n - 1)


def real_checkpoint(stage: str, work: Path) -> str | None:
    """A run on a tmpfs with room for two checkpoints and a half: the third save fills it."""
    from tests.faults.row_kill import reference

    reference(stage, work)
    ref = work / f"ref-{stage}"
    size = max(sum(f.stat().st_size for f in d.rglob("*")) for d in (ref / "checkpoints").glob("step-*"))
    with tmpfs(work / f"full-{stage}", int(size * 2.5) // 1024) as mnt:
        if mnt is None:
            return NO_TMPFS
        run = mnt / "run"
        proc = launch(build.stage_args(stage, work, run), run)
        _, err = proc.communicate()
        return check_stopped(proc, err, run, min_step=1)


def real_shards(work: Path, command: list[str], kib: int) -> str | None:
    """`data synth` or `pretokenize` into a tmpfs of `kib` KiB, too small for their output: the finished shards
    are whole, none is partial."""
    with tmpfs(work / "full-shards", kib) as mnt:
        if mnt is None:
            return NO_TMPFS
        out = mnt / "out"
        proc = arimg(*command, "--out", out)
        if why := check_stopped(proc, proc.stderr, out):
            return why
        for shard in out.glob("*.tar"):
            try:
                with tarfile.open(shard) as tar:
                    tar.getmembers()
            except tarfile.TarError as e:
                return f"a broken shard was left: {shard}: {e}"
    return None


def run(trials: int, workdir: Path, stages: tuple[str, ...] = build.STAGES, seed: int = 0) -> Row:
    """`trials` planted ENOSPC saves per stage, then one real full disk per stage and per shard writer."""
    row = Row("disk full (ENOSPC)", test="tests/faults/test_disk.py::test_disk_full_loses_nothing")
    rng = random.Random(seed)
    start = time.perf_counter()
    cases = [(f"planted {s}", lambda s=s: planted(s, workdir, rng)) for s in stages for _ in range(trials)]
    cases += [(f"tmpfs {s}", lambda s=s: real_checkpoint(s, workdir)) for s in stages]
    synth = ["data", "synth", "--n", "3000", "--size", "32", "--shard-size", "100"]
    pretok = ["pretokenize", build.synth(workdir), "--tokenizer", build.tokenizer(workdir), "--size", "32",
              "--shard-size", "4"]
    cases += [("tmpfs data synth", lambda: real_shards(workdir, synth, 256)),
              ("tmpfs pretokenize", lambda: real_shards(workdir, [str(a) for a in pretok], 24))]
    for name, case in cases:
        why = case()
        if why == NO_TMPFS:
            row.notes.append(f"{name}: {why}")
            continue
        row.record(why and f"{name}: {why}")
    row.seconds = time.perf_counter() - start
    return row
