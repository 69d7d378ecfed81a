"""Generator variants compared at equal wall time: which one draws what the prompt says after a fixed budget?

The counterpart of `sweep_tokenizer.py` for the transformer. Each variant is the real `arimg pretrain` (the
same trainer, config and token shards a user would run) given a number of *seconds* instead of steps: a
short probe of the same config measures its step rate after start-up, and the run's `trainer.max_steps`
(hence its warmup-cosine schedule) is fixed from it, so that a wider model or a longer sequence gets fewer
steps, as it would in the real budget. Then `arimg eval generator` judges it on held-out prompts of every
kind. Sampling settings are swept without training: `--eval-only RUN` with `--sampling key=value ...`.

    .venv/bin/python scripts/sweep_generator.py --name base --tokens data/synth-tok --budget 600
    .venv/bin/python scripts/sweep_generator.py --name d256 --tokens data/synth-tok --budget 600 model.dim=256
    .venv/bin/python scripts/sweep_generator.py --name cfg3 --eval-only runs/sweep/base --sampling cfg=3

Prints one JSON line on stdout (and appends it to --out): the variant, its overrides, steps, wall seconds
of training (start-up included) and the eval report's per-kind accuracy, word exact-match and diversity.
Run on an otherwise idle machine, or two at a time with --threads 1 when comparing a pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from arlm.config import compose, to_object
from arlm.errors import UserError
from arlm.log import log, setup_logging
from arlm.generation.evaluate import eval_generator
from arlm.training.transformer import train


def pretrain_config(args, run: Path, steps: int, extra: list[str]):
    over = [f"data.shards={args.tokens}", f"run_dir={run}", "overwrite=true", f"trainer.max_steps={steps}",
            f"trainer.ckpt_every={max(steps, 1)}", f"trainer.image_every={max(steps, 1)}", *args.overrides, *extra]
    return to_object(compose(args.stage, over))


def step_rate(args, run: Path) -> float:
    """Optimizer steps per second of this config after start-up (data load, compilation): steps 20..60 of a
    probe run, read off its metrics (elapsed_s counts from the start of the loop)."""
    cfg = pretrain_config(args, run, 60, ["trainer.log_every=20", "trainer.warmup_steps=10", "sample.n=0"])
    train(cfg)
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "tok_s" in r}
    return 40 / (rows[60]["elapsed_s"] - rows[20]["elapsed_s"])


@torch.no_grad()
def heldout_loss(run: Path, shards: str) -> float:
    """Mean cross-entropy (nats) of the visual tokens of held-out token shards (the same tokenizer's
    `arimg pretokenize` of another seed), captions kept: comparable between runs on one tokenizer only."""
    from arlm.config import TokenDataConfig
    from arlm.transformer.data import Batches, token_info
    from arlm.transformer.ckpt import load_model
    from arlm.transformer.sequence import VISUAL_R
    from arlm.transformer.objectives import token_loss

    model, vocab, _ = load_model(run, "cpu")
    data = TokenDataConfig(shards=shards, batch_size=50, caption_dropout=0.0)
    batches = Batches(data, vocab, token_info(shards), model.cfg.max_seq_len, torch.device("cpu"))
    ce = count = 0.0
    for step in range(batches.steps_per_epoch):
        for tokens, pos, region in batches.batch(step):
            vis = (region[:, 1:] == VISUAL_R).float()
            _, stats = token_loss(model(tokens[:, :-1], pos[:, :-1]), tokens[:, 1:], vis, region[:, 1:], 0.0)
            ce, count = ce + float(stats[2]), count + float(stats[3])
    return ce / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tokens", help="token shards (arimg pretokenize)")
    ap.add_argument("--budget", type=float, default=600, help="seconds of training, start-up excluded")
    ap.add_argument("--steps", type=int, default=None,
                    help="train this many steps instead (no probe): for long runs, from a rate measured on an "
                         "idle machine")
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "sft"])
    ap.add_argument("--eval-only", default=None, help="judge this trained run instead of training one")
    ap.add_argument("--val-tokens", default=None, help="held-out token shards of the same tokenizer: report their loss")
    ap.add_argument("--per-kind", type=int, default=50, help="held-out prompts per kind")
    ap.add_argument("--n", type=int, default=2, help="images per prompt")
    ap.add_argument("--seeds", default="0", help="sampling seeds, comma-separated")
    ap.add_argument("--sampling", nargs="*", default=[], help="sampling settings, key=value (arlm.config.SamplingConfig)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default="runs/sweep")
    ap.add_argument("--out", default="runs/sweep/results.jsonl")
    ap.add_argument("overrides", nargs="*", help="pretrain overrides, key=value")
    args = ap.parse_args()
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    row = {"name": args.name, "overrides": args.overrides, "sampling": args.sampling}
    try:
        if args.eval_only:
            run = Path(args.eval_only)
        else:
            if not args.tokens:
                ap.error("--tokens is needed to train")
            run = Path(args.runs) / args.name
            if args.steps:
                steps = args.steps
            else:
                rate = step_rate(args, run)
                steps = max(1, int(args.budget * rate))
                log.info("%s: %.2f steps/s after start-up: %d steps in %.0f s", args.name, rate, steps, args.budget)
            t0 = time.perf_counter()
            train(pretrain_config(args, run, steps, []))
            row.update(tokens=args.tokens, budget_s=None if args.steps else args.budget, steps=steps,
                       train_wall_s=round(time.perf_counter() - t0))
        ev = to_object(compose("eval_generator", [f"per_kind={args.per_kind}", f"n={args.n}", f"seeds=[{args.seeds}]",
                                                  f"out={run}/eval-{args.name}",
                                                  *[f"sampling.{kv}" for kv in args.sampling]]))
        if args.val_tokens:
            row["heldout_visual_loss"] = heldout_loss(run, args.val_tokens)
        t0 = time.perf_counter()
        report = eval_generator(str(run), ev)
    except UserError as e:
        sys.stderr.write(f"sweep_generator: error: {e}\n")
        sys.exit(e.exit_code)
    row.update(run=str(run), eval_s=round(time.perf_counter() - t0), settings=report["settings"],
               per_kind={k: v["accuracy"] for k, v in report["per_kind"].items()}, accuracy=report["accuracy"],
               score={k: round(v["score"], 4) for k, v in report["per_kind"].items()},
               n=report["n"], words_exact=report["words_exact"]["accuracy"], diversity=report["diversity"],
               sheets=report["sheets"])
    line = json.dumps(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
