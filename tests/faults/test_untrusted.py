"""Row 7: malicious pickles and YAML tags in checkpoints and shards are refused or skipped; nothing runs."""

import io

import numpy as np

from tests.faults import row_untrusted


def test_untrusted_files_execute_nothing(work):
    row = row_untrusted.run(1, work)
    assert row.lost == 0 and row.survived == row.trials == len(row_untrusted.CASES), row.notes


def test_a_corrupt_preference_pair_is_counted_not_a_crash():
    """Regression: "corrupt pair" was not a known skip reason, so the first bad pair raised ValueError."""
    from arlm.data.shards import SkipCounter

    skips = SkipCounter()
    skips.add("corrupt pair", "shard-000000.tar:0")
    assert skips.as_dict() == {"corrupt pair": 1}


def test_float_token_codes_are_corrupt_tokens(tmp_path):
    """Regression: codes of a float dtype (NaN compares false to every bound) passed the range check."""
    from arlm.config import TokenDataConfig
    from arlm.data.shards import SkipCounter
    from arlm.transformer.data import TokenInfo, samples

    buf = io.BytesIO()
    np.save(buf, np.full((2, 2), np.nan))
    skips = SkipCounter()
    raw = {"npy": buf.getvalue(), "txt": b"a red circle", "__key__": "0"}
    got = list(samples([], TokenDataConfig(shards=str(tmp_path)), TokenInfo(16, None, (2, 2)), skips, raws=iter([raw])))
    assert got == [] and skips.as_dict() == {"corrupt tokens": 1}
