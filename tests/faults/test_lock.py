"""Row 3: a folder in use is refused to a second writer; a dead holder's lock is taken over."""

import os
import signal
import subprocess
import sys

import pytest

from tests.faults import row_lock


def test_two_writers_never_interleave(work):
    row = row_lock.run(1, work, names=("pretrain", "data synth", "pretokenize"))  # the slow test: every command
    assert row.lost == 0 and row.survived == row.trials == 4, row.notes


def test_the_lock_is_refused_in_process_and_released_after(tmp_path):
    from arlm.lock import FolderBusy, hold

    with hold(tmp_path):
        with pytest.raises(FolderBusy, match=f"in use by pid {os.getpid()}"):
            with hold(tmp_path):
                pass
    with hold(tmp_path):  # released: a clean exit leaves nothing to take over, not even the file
        pass
    assert not (tmp_path / ".arimg.lock").exists()


def test_a_failing_command_releases_its_lock_as_a_clean_exit_does(tmp_path):
    from arlm.errors import UserError
    from arlm.lock import hold

    try:
        with hold(tmp_path):
            raise UserError("bad input")
    except UserError:
        pass
    assert not (tmp_path / ".arimg.lock").exists()


def test_a_killed_holder_s_lock_is_taken_over(tmp_path, caplog):
    from arlm.lock import hold

    holder = subprocess.Popen([sys.executable, "-c", row_lock.HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level("WARNING"), hold(tmp_path):
        pass
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text


@pytest.mark.slow
def test_two_writers_every_command(work):
    row = row_lock.run(2, work)
    assert row.lost == 0 and row.survived == row.trials, row.notes
