"""The judge's acceptance figures at full size (slow): 1,000 fresh samples, per kind, and shuffled captions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "judge_figures.py"


@pytest.mark.slow
def test_judge_on_1000_fresh_samples_and_shuffled_captions():
    # a seed no other test draws from; degradations are reported by the script, not asserted here
    r = subprocess.run([sys.executable, str(SCRIPT), "--n", "1000", "--seed", "777001", "--degrade", "",
                        "--show", "0"], capture_output=True, text=True, check=True)
    report = json.loads(r.stdout)
    assert report["own"]["n"] == 1000
    for kind, figures in report["own"]["per_kind"].items():
        assert figures["accuracy"] >= 0.98, (kind, figures)
    assert report["shuffled"]["accuracy"] <= 0.10
