"""Row 6: a NaN/Inf loss or gradient is skipped (and counted) or stops the run with its last good checkpoint."""

import pytest
import torch

from tests.faults import row_nonfinite


def test_nonfinite_loss_is_skipped_or_stops(work):
    row = row_nonfinite.run(1, work)
    assert row.lost == 0 and row.survived == row.trials == 18, row.notes


def test_an_infinite_loss_with_a_finite_gradient_is_caught():
    """Regression: the first guard read the gradient norm only, and x + inf has the gradient 1."""
    from arlm.config import TrainerConfig
    from arlm.training.common import NonFinite

    guard = NonFinite(TrainerConfig(nonfinite="skip"))
    assert guard.ok(torch.tensor(1.0), torch.tensor(2.0), 0)
    assert not guard.ok(torch.tensor(1.0), torch.tensor(float("inf")), 1)
    assert not guard.ok(torch.tensor(float("nan")), torch.tensor(2.0), 2)
    assert guard.take() == 2 and guard.take() == 0


def test_skipping_stops_after_the_limit_in_a_row():
    from arlm.config import TrainerConfig
    from arlm.training.common import NonFinite, NonFiniteError

    guard = NonFinite(TrainerConfig(nonfinite="skip", nonfinite_limit=2))
    nan = torch.tensor(float("nan"))
    assert not guard.ok(nan, nan, 0) and not guard.ok(nan, nan, 1)
    with pytest.raises(NonFiniteError, match="3 in a row"):
        guard.ok(nan, nan, 2)


def test_a_bad_nonfinite_option_is_a_config_error(run_cli, tmp_path):
    code, out, err = run_cli("pretrain", "trainer.nonfinite=ignore", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and out == "" and "trainer.nonfinite must be skip or stop" in err
    assert not (tmp_path / "r" / "checkpoints").exists()
