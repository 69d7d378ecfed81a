"""A tiny transformer run for the fault rows, built as tests/conftest.py builds `tiny_lm` (48 synthetic
32x32 samples, a 4-step tiny tokenizer, its token shards, 4 pretrain steps): seconds on one core, 8x8 grids."""

from __future__ import annotations

from pathlib import Path


def tiny_lm(folder: Path) -> Path:
    """The run directory of a tiny transformer under `folder`; built once, then reused."""
    from arlm.config import DataConfig, compose, to_object
    from arlm.data.writers import write_synth
    from arlm.tokenizer.codec import load_tokenizer, pretokenize
    from arlm.tokenizer.train import train as train_tokenizer
    from arlm.transformer.train import train

    folder = Path(folder)
    done = folder / "lm.done"  # holds the run directory once every step has finished
    if done.exists():
        return Path(done.read_text())
    synth, tokens = folder / "synth", folder / "tokens"
    list(write_synth(synth, 48, (32, 32), seed=7, shard_size=12, workers=1, overwrite=True))
    tok = train_tokenizer(to_object(compose("train_tokenizer", [
        "tokenizer=tiny", "data=tiny", "trainer=tiny", f"data.shards={synth}", f"run_dir={folder / 'tok'}",
        "overwrite=true"])))
    data = DataConfig(shards=str(synth), size="32", crop="center", batch_size=16, shuffle_buffer=0)
    pretokenize(load_tokenizer(tok, "cpu"), data, tokens, shard_size=16, overwrite=True)
    run = train(to_object(compose("pretrain", [
        "model=tiny", "trainer=tiny", "trainer.compile=false", "sample.n=0", "data.batch_size=8",
        f"data.shards={tokens}", f"run_dir={folder / 'lm'}", "overwrite=true"])))
    done.write_text(str(run))
    return Path(run)
