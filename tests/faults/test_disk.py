"""Row 2: a full disk keeps the previous checkpoint, leaves no partial file and stops with one line."""

import errno

import pytest
import torch

from tests.faults import row_disk


def test_disk_full_loses_nothing(work):
    row = row_disk.run(1, work, stages=("pretrain",))  # the slow test below covers every stage
    assert row.lost == 0 and row.survived == row.trials >= 1, row.notes


def test_torch_save_on_a_full_disk_raises_the_disk_error_not_torch_s(tmp_path, monkeypatch):
    """Regression: torch's zip writer turned ENOSPC into "RuntimeError: unexpected pos" (a traceback)."""
    from arlm import checkpoint

    class Full:
        def __init__(self):
            self.n = 0

        def write(self, data):
            self.n += 1
            if self.n > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

        def flush(self):
            pass

    with pytest.raises(OSError) as e:
        checkpoint._torch_save({"x": torch.zeros(1000)}, Full())
    assert e.value.errno == errno.ENOSPC


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_folder(tmp_path, monkeypatch):
    from arlm import checkpoint

    weights = {"model": {"w": torch.ones(3)}}
    checkpoint.save(tmp_path, 1, "k", weights, {"step": 1}, "a: 1\n")

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "_write_synced", full)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, "k", weights, {"step": 2}, "a: 1\n")
    assert checkpoint.latest(tmp_path).name == "step-0000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-0000001"]


@pytest.mark.slow
def test_disk_full_many_times(work):
    row = row_disk.run(5, work, seed=3)
    assert row.lost == 0 and row.survived == row.trials, row.notes
