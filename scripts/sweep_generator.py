"""Generator variants compared at equal wall time: which one draws what the prompt says after M minutes?

Each variant is the real `arimg pretrain` (the same trainer, config and token shards a user would run) given
minutes instead of steps (`trainer.max_minutes`: the schedule follows the clock, so a wider model or a larger
batch gets fewer steps, as it would in the real budget). Along the way the trainer logs the held-out loss per
visual token (`--val-tokens`, every `--val-every` steps): one run gives a curve of loss against minutes. At the
end `arimg eval generator` judges the run on held-out prompts of every kind. Two or more `--variant`s run side
by side, each pinned to its own core with one thread (equal-time pairs on a 2-core machine); sampling settings
are compared without training: `--eval-only RUN --sampling key=value ...`. `--points 15,30,60` also judges the
run's checkpoints at those minutes (the last one saved by then): accuracy against minutes from one run, at
points part-way through its schedule.

    .venv/bin/python scripts/sweep_generator.py --tokens data/synth-tok --val-tokens data/synth-val-tok \\
        --minutes 10 --variant adamw --variant muon:trainer.optimizer=muon,data.batch_size=64
    .venv/bin/python scripts/sweep_generator.py --variant cfg3 --eval-only runs/sweep/adamw --sampling cfg=3

A variant is NAME or NAME:key=value,key=value (pretrain overrides); overrides given after the options apply to
every variant. Prints one JSON line per variant on stdout (and appends it to --out): its overrides, steps,
minutes, the final held-out loss and its curve (minutes, loss), the eval's per-kind accuracy and word exact-match,
and the machine's fp32 matmul GFLOP/s measured at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from arlm.config import compose, to_object
from arlm.errors import UserError
from arlm.log import setup_logging
from arlm.perf import matmul_flops


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, _, over = spec.partition(":")
    if not name or "/" in name:
        raise UserError(f"--variant {spec!r}: give NAME or NAME:key=value,key=value")
    return name, [kv for kv in over.split(",") if kv]


def train_variant(args, name: str, overrides: list[str]) -> dict:
    """Train one variant for args.minutes; its steps, minutes and held-out curve."""
    from arlm.training.transformer import train

    run = Path(args.runs) / name
    over = [f"data.shards={args.tokens}", f"run_dir={run}", "overwrite=true", "trainer.image_every=1000000",
            "trainer.ckpt_every=1000000", f"trainer.seed={args.seed}"]
    if args.minutes:
        over.append(f"trainer.max_minutes={args.minutes}")
    if args.val_tokens:
        over += [f"data.val_shards={args.val_tokens}", f"trainer.eval_every={args.val_every}"]
    if args.points:  # every checkpoint kept, to judge those at the points
        over = [o for o in over if not o.startswith("trainer.ckpt_every=")]
        over += [f"trainer.ckpt_every={args.ckpt_every}", "trainer.keep_checkpoints=0"]
    over += [*args.overrides, *overrides]  # last: a variant may set its own, e.g. trainer.eval_every
    t0 = time.perf_counter()
    train(to_object(compose(args.stage, over)))
    wall = time.perf_counter() - t0
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    timed = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
    steps = sorted(timed)
    # a held-out row's minute: interpolated between the logged rows around it (eval_every need not be a
    # multiple of log_every)
    curve = [[round(float(np.interp(r["step"], steps, [timed[s] for s in steps])) / 60, 2),
              round(r["val_loss_visual"], 4)] for r in rows if "val_loss_visual" in r]
    return {"run": str(run), "steps": max(timed), "train_min": round(wall / 60, 2),
            "heldout_visual_loss": curve[-1][1] if curve else None, "curve": curve, "timed": timed}


def at_points(args, run: str, timed: dict[int, float]) -> list[tuple[float, Path]]:
    """For each of args.points (minutes): the run's last checkpoint saved by then, and its minute."""
    steps = sorted(timed)
    saved = sorted((int(p.name.split("-")[1]), p) for p in (Path(run) / "checkpoints").glob("step-*"))
    at = np.interp([s for s, _ in saved], steps, [timed[k] for k in steps]) / 60  # each checkpoint's minute
    minutes = [(float(m), p) for m, (_, p) in zip(at, saved)]
    chosen = []
    for point in args.points:
        by_then = [(m, p) for m, p in minutes if m <= point]
        if not by_then:
            raise UserError(f"--points: no checkpoint by minute {point:g}; lower --ckpt-every")
        chosen.append(by_then[-1])
    return chosen


def evaluate(args, run: str, name: str, folder: str | None = None) -> dict:
    from arlm.generation.evaluate import eval_generator

    over = [f"per_kind={args.per_kind}", f"n={args.n}", f"seeds=[{args.seeds}]", f"out={folder or run}/eval-{name}",
            *[f"sampling.{kv}" for kv in args.sampling]]
    ev = to_object(compose("eval_generator", over))
    t0 = time.perf_counter()
    report = eval_generator(run, ev)
    return {"eval_min": round((time.perf_counter() - t0) / 60, 2), "settings": report["settings"],
            "per_kind": {k: v["accuracy"] for k, v in report["per_kind"].items()}, "accuracy": report["accuracy"],
            "n": report["n"], "words_exact": report["words_exact"]["accuracy"], "sheets": report["sheets"]}


def one(args, spec: str) -> dict:
    name, overrides = parse_variant(spec)
    row = {"name": name, "overrides": [*args.overrides, *overrides], "minutes": args.minutes,
           "sampling": args.sampling, "threads": torch.get_num_threads(),
           "fp32_gflops": round(matmul_flops(torch.float32) / 1e9)}
    if args.eval_only:
        run = args.eval_only
    else:
        row.update(train_variant(args, name, overrides))
        run = row["run"]
    timed = row.pop("timed", None)
    if args.per_kind:
        if args.points and timed:
            row["points"] = []
            for minute, ckpt in at_points(args, run, timed):
                ev = evaluate(args, str(ckpt), f"{name}-{ckpt.name}", folder=run)
                loss = [c[1] for c in row["curve"] if c[0] <= minute + 1e-9]
                row["points"].append({"minute": round(minute, 2), "step": int(ckpt.name.split("-")[1]),
                                      "heldout_visual_loss": loss[-1] if loss else None,
                                      "per_kind": ev["per_kind"], "accuracy": ev["accuracy"]})
        row.update(evaluate(args, run, name))
    return row


def side_by_side(args, argv: list[str]) -> list[dict]:
    """Each variant in its own process, pinned to its own core, one thread: equal-time pairs."""
    cores = sorted(os.sched_getaffinity(0))
    if len(args.variant) > len(cores):
        raise UserError(f"{len(args.variant)} variants side by side need as many cores; this machine gives {len(cores)}")
    base = [a for i, a in enumerate(argv) if a != "--variant" and (i == 0 or argv[i - 1] != "--variant")]
    procs = []
    for core, spec in zip(cores, args.variant):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, *base, "--variant", spec, "--threads", "1", "--no-append"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True,
                                      preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))
    rows = []
    for spec, proc in zip(args.variant, procs):
        out, _ = proc.communicate()
        if proc.returncode:
            raise UserError(f"variant {spec!r} failed (exit {proc.returncode}); its log is above")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME or NAME:key=value,key=value")
    ap.add_argument("--tokens", help="token shards (arimg pretokenize)")
    ap.add_argument("--val-tokens", default=None, help="held-out token shards of the same tokenizer: the loss curve")
    ap.add_argument("--val-every", type=int, default=200,
                    help="steps between held-out losses (a variant with a larger batch may set trainer.eval_every)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes (trainer.max_minutes); 0: max_steps")
    ap.add_argument("--points", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="also judge the checkpoints at these minutes, comma-separated (a curve from one run)")
    ap.add_argument("--ckpt-every", type=int, default=100, help="steps between the checkpoints --points chooses from")
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "sft"])
    ap.add_argument("--seed", type=int, default=0, help="trainer.seed (initial weights, data order)")
    ap.add_argument("--eval-only", default=None, help="judge this trained run instead of training one")
    ap.add_argument("--per-kind", type=int, default=50, help="held-out prompts per kind (0: no eval)")
    ap.add_argument("--n", type=int, default=2, help="images per prompt")
    ap.add_argument("--seeds", default="0", help="sampling seeds, comma-separated")
    ap.add_argument("--sampling", nargs="*", default=[], help="sampling settings, key=value (arlm.config.SamplingConfig)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default="runs/sweep")
    ap.add_argument("--out", default="runs/sweep/results.jsonl")
    ap.add_argument("--no-append", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="pretrain overrides for every variant, key=value")
    args = ap.parse_args()
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for spec in args.variant:
            parse_variant(spec)
        if not args.eval_only and not args.tokens:
            raise UserError("--tokens is needed to train")
        rows = side_by_side(args, sys.argv[1:]) if len(args.variant) > 1 else [one(args, args.variant[0])]
    except UserError as e:
        sys.stderr.write(f"sweep_generator: error: {e}\n")
        sys.exit(e.exit_code)
    for row in rows:
        line = json.dumps(row)
        if not args.no_append:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
        print(line)


if __name__ == "__main__":
    main()
