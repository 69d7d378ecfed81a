import os
import sys

import pytest

# `precision=auto` on a CPU is decided by a matmul timing; on a CPU with native bf16 a busy moment can flip it
# between runs, and with it every figure of a tiny model. The tests pin it (subprocesses inherit it).
os.environ["ARIMG_CPU_PRECISION"] = "fp32"

from arlm import synth
from arlm.data.writers import write_synth


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """48 synthetic 32x32 samples in 4 shards of 12."""
    out = tmp_path_factory.mktemp("synth")
    paths = list(write_synth(out, 48, (32, 32), seed=7, shard_size=12, workers=1))
    assert len(paths) == 4
    return out


TINY = ["tokenizer=tiny", "data=tiny", "trainer=tiny"]


def tiny_cfg(tmp_path, synth_dir, *extra, name="run"):
    """A tiny tokenizer run's config (seconds to train)."""
    from arlm.config import compose, to_object

    return to_object(compose("train_tokenizer", [*TINY, f"data.shards={synth_dir}", f"run_dir={tmp_path / name}", *extra]))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth_dir):
    """A tiny tokenizer run (4 steps)."""
    from arlm.training.tokenizer import train

    return train(tiny_cfg(tmp_path_factory.mktemp("tok"), synth_dir))


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory, synth_dir, tiny_run):
    """The synthetic samples as token shards of the tiny tokenizer: 8x8 grids, 64 codes."""
    from arlm.config import DataConfig
    from arlm.tokenizer.codec import load_tokenizer, pretokenize

    out = tmp_path_factory.mktemp("tokens")
    data = DataConfig(shards=str(synth_dir), size="32", crop="center", batch_size=16, shuffle_buffer=0)
    pretokenize(load_tokenizer(tiny_run, "cpu"), data, out, shard_size=16)
    return out


@pytest.fixture
def run_cli(capsys):
    """Run `arimg ARGS` in-process; returns (exit code, stdout, stderr)."""
    from arimg.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


KINDS = synth.KINDS


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, token_dir):
    """A tiny transformer run (4 pretrain steps on the tiny token shards; 8x8 grids of 64 codes)."""
    from arlm.config import compose, to_object
    from arlm.training.transformer import train

    run = tmp_path_factory.mktemp("lm") / "run"
    return train(to_object(compose("pretrain", ["model=tiny", "trainer=tiny", "trainer.compile=false", "sample.n=0",
                                                "data.batch_size=8", f"data.shards={token_dir}", f"run_dir={run}"])))


@pytest.fixture(scope="session")
def reward_module(tmp_path_factory):
    """An importable reward: mean brightness of the image (no ties, so every prompt gives pairs)."""
    folder = tmp_path_factory.mktemp("reward")
    (folder / "prefs_reward.py").write_text(
        "import numpy as np\n"
        "def brightness(image, prompt):\n    return float(np.asarray(image, dtype=np.float64).mean() / 255)\n"
        "def words(image, prompt):\n    return 'bright'\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
