"""Row 1, kill anywhere: a tiny training stage SIGKILLed at random moments and inside checkpoint writes, then
resumed (or restarted where no checkpoint was written yet), ends with exactly the logged figures of an
uninterrupted run, and its run directory is usable after every kill."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults import build
from tests.faults.common import REPO, Row, env

TIMING = {"tok_s", "mfu", "mem_mib", "elapsed_s", "img_s"}  # the figures that are measurements of speed
FILES_PER_SAVE = 4  # safetensors files, state.pt, config.yaml, checkpoint.json: at least this many writes


def figures(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def usable(run: Path) -> str | None:
    """Why the run directory cannot be resumed, or None when it can (or holds no checkpoint yet)."""
    from arlm import checkpoint

    last = checkpoint.latest(run)
    if last is None:
        return None
    try:
        meta = checkpoint.read_meta(last)
        for name in meta["weights"]:
            checkpoint.load_weights(last, name)
        checkpoint.load_state(last)
        checkpoint.load_config_yaml(last)
    except Exception as e:  # noqa: BLE001 - anything at all means the folder is not usable
        return f"{last}: {e}"
    return None


def launch(args: list[str], run: Path, fault: str | None = None) -> subprocess.Popen:
    from arlm import checkpoint

    mode = "resume=true" if checkpoint.latest(run) is not None else "overwrite=true"
    return subprocess.Popen([sys.executable, "-m", "tests.faults.inject", *args, mode], cwd=REPO,
                            env={**env(), "ARIMG_FAULT": fault or ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def kill_after_start(proc: subprocess.Popen, run: Path, delay: float) -> None:
    """SIGKILL the child's process group `delay` seconds after its first log row (or when it ends)."""
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and metrics.stat().st_size > 0):
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def trial(stage: str, work: Path, reference: list[dict], rng: random.Random, run: Path) -> str | None:
    """One run killed 1-3 times, then finished; the reason it lost something, or None."""
    shutil.rmtree(run, ignore_errors=True)
    args = build.stage_args(stage, work, run)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:  # inside a checkpoint write: save N (of 12), file K
            proc = launch(args, run, f"kill-in-save:{rng.randint(1, 6)}:{rng.randint(1, FILES_PER_SAVE)}")
            proc.wait()
        else:  # anywhere in training
            proc = launch(args, run)
            kill_after_start(proc, run, rng.uniform(0, 1.5))
        if proc.returncode not in (-signal.SIGKILL, 0):
            return f"{stage}: exit {proc.returncode} before the kill: {proc.stderr.read().decode()[-300:]}"
        if (why := usable(run)) is not None:
            return f"{stage}: unusable after a kill: {why}"
    proc = launch(args, run)
    _, err = proc.communicate()
    if proc.returncode != 0:
        return f"{stage}: the resumed run failed (exit {proc.returncode}): {err.decode()[-300:]}"
    if (got := figures(run)) != reference:
        bad = next((i for i, (a, b) in enumerate(zip(got, reference)) if a != b), min(len(got), len(reference)))
        return f"{stage}: figures differ from the uninterrupted run at row {bad} ({len(got)} rows, {len(reference)} expected)"
    return None


def reference(stage: str, work: Path) -> list[dict]:
    """The logged figures of an uninterrupted run of `stage` (run once per work folder, in `ref-STAGE`)."""
    ref_run = work / f"ref-{stage}"
    if not (ref_run / "done").is_file():
        shutil.rmtree(ref_run, ignore_errors=True)
        proc = launch(build.stage_args(stage, work, ref_run), ref_run)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the uninterrupted {stage} run failed: {err.decode()[-500:]}")
        (ref_run / "done").touch()
    return figures(ref_run)


def run(trials: int, workdir: Path, stages: tuple[str, ...] = build.STAGES, seed: int = 0) -> Row:
    """`trials` killed runs per stage."""
    row = Row("kill anywhere (SIGKILL, resume)", test="tests/faults/test_kill.py::test_kill_anywhere_loses_nothing")
    rng = random.Random(seed)
    start = time.perf_counter()
    for stage in stages:
        figures_ = reference(stage, workdir)
        for _ in range(trials):
            row.record(trial(stage, workdir, figures_, rng, workdir / f"killed-{stage}"))
    row.seconds = time.perf_counter() - start
    return row
