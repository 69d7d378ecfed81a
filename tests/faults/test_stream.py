"""Row 8, streaming load: prompts through `arimg sample --prompt -`, answered in order with flat memory."""

import pytest

from tests.faults import row_stream


def test_streaming_load_is_flat_and_ordered(tiny_lm, tmp_path):
    row = row_stream.run(2, tmp_path, prompts=60, ckpt=tiny_lm)  # two trials: the second must repeat the first
    assert row.lost == 0 and row.survived == 2, row.notes


@pytest.mark.slow
def test_streaming_load_10000_prompts(tiny_lm, tmp_path):
    row = row_stream.run(1, tmp_path, prompts=10_000, ckpt=tiny_lm)
    assert row.lost == 0 and row.survived == 1, row.notes + [row_stream.summary(row)]
