"""Row 1: SIGKILL anywhere, inside checkpoint writes too, loses nothing (scripts/faults.py runs 20 per stage)."""

import pytest

from tests.faults import build, row_kill


@pytest.mark.parametrize("stage", [s if s == "pretrain" else pytest.param(s, marks=pytest.mark.slow)
                                   for s in build.STAGES])  # make test: one stage; make test-slow: the others
def test_kill_anywhere_loses_nothing(work, stage):
    row = row_kill.run(1, work, stages=(stage,), seed=1)
    assert row.lost == 0 and row.survived == row.trials == 1, row.notes


@pytest.mark.slow
def test_kill_anywhere_many_times(work):
    row = row_kill.run(5, work, seed=2)
    assert row.lost == 0 and row.survived == row.trials, row.notes
