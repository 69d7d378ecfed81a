import pytest

from arlm import synth
from arlm.data.writers import write_synth


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """48 synthetic 32x32 samples in 4 shards of 12."""
    out = tmp_path_factory.mktemp("synth")
    paths = list(write_synth(out, 48, (32, 32), seed=7, shard_size=12, workers=1))
    assert len(paths) == 4
    return out


@pytest.fixture
def run_cli(capsys):
    """Run `arimg ARGS` in-process; returns (exit code, stdout, stderr)."""
    from cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


KINDS = synth.KINDS
