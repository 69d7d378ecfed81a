"""The tiny inputs the fault rows train on, built in-process once per work folder: synthetic images, a tiny
tokenizer, its token shards, a tiny transformer and preference pairs from it (the conftest fixtures' recipe)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

TINY_TOKENIZER = ["tokenizer=tiny", "data=tiny", "trainer=tiny"]
TINY_LM = ["model=tiny", "trainer=tiny", "trainer.compile=false", "sample.n=0", "data.batch_size=8"]
REWARD = "fault_reward:brightness"


def synth(work: Path) -> Path:
    from arlm.data.writers import write_synth

    out = work / "synth"
    if not out.is_dir():
        list(write_synth(out, 48, (32, 32), seed=7, shard_size=12, workers=1))
    return out


def tokenizer(work: Path) -> Path:
    from arlm.config import compose, to_object
    from arlm.training.tokenizer import train

    run = work / "tok"
    if not (run / "checkpoints" / "latest").is_file():
        train(to_object(compose("train_tokenizer", [*TINY_TOKENIZER, f"data.shards={synth(work)}", f"run_dir={run}",
                                                    "overwrite=true"])))
    return run


def tokens(work: Path) -> Path:
    from arlm.config import DataConfig
    from arlm.tokenizer.codec import load_tokenizer, pretokenize

    out = work / "tokens"
    if not (out / "done").is_file():
        data = DataConfig(shards=str(synth(work)), size="32", crop="center", batch_size=16, shuffle_buffer=0)
        pretokenize(load_tokenizer(tokenizer(work), "cpu"), data, out, shard_size=16, overwrite=True)
        (out / "done").touch()
    return out


def lm(work: Path) -> Path:
    from arlm.config import compose, to_object
    from arlm.training.transformer import train

    run = work / "lm"
    if not (run / "checkpoints" / "latest").is_file():
        train(to_object(compose("pretrain", [*TINY_LM, f"data.shards={tokens(work)}", f"run_dir={run}",
                                             "overwrite=true"])))
    return run


def prefs(work: Path) -> Path:
    """Pairs ranked by image brightness (a reward that always separates a tiny model's samples)."""
    from arlm.config import compose, to_object
    from arlm.generation.prefs import make_prefs

    out = work / "prefs"
    if not (out / "done").is_file():
        (work / "fault_reward.py").write_text(
            "import numpy as np\n"
            "def brightness(image, prompt):\n    return float(np.asarray(image, dtype=np.float64).mean() / 255)\n")
        sys.path.insert(0, str(work))
        importlib.invalidate_caches()
        make_prefs(str(lm(work)), to_object(compose("make_prefs", [
            "kinds=[single,count]", "per_kind=6", "k=4", "batch_size=16", f"out={out}", "margin=0.0",
            f"reward={REWARD}", "pairs=all", "overwrite=true"])))
        (out / "done").touch()
    return out


def stage_args(stage: str, work: Path, run: Path) -> list[str]:
    """`arimg` arguments of a tiny run of `stage` into `run` (12 steps, a checkpoint and a log row at each)."""
    every = ["trainer.max_steps=12", "trainer.ckpt_every=1", "trainer.log_every=1", "trainer.image_every=1000",
             "trainer.keep_checkpoints=2", f"run_dir={run}"]
    if stage == "tokenizer":
        return ["train-tokenizer", *TINY_TOKENIZER, f"data.shards={synth(work)}", *every]
    if stage == "pretrain":
        return ["pretrain", *TINY_LM, f"data.shards={tokens(work)}", *every]
    if stage == "dpo":
        return ["dpo", f"init_from={lm(work)}", f"data.shards={prefs(work)}", "data.batch_size=4",
                "trainer.compile=false", "trainer.warmup_steps=1", "sample.n=0", *every]
    raise ValueError(stage)


STAGES = ("tokenizer", "pretrain", "dpo")
