"""scripts/demo_summary.py's wall-time column: minutes and seconds that carry (never "3:60")."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("demo_summary", Path(__file__).parents[1] / "scripts" / "demo_summary.py")
demo_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_summary)


def test_wall_times_carry_into_the_next_minute():
    assert demo_summary._mmss(239.9) == "4:00"
    assert demo_summary._mmss(59.4) == "0:59"
    assert demo_summary._mmss(3310.4) == "55:10"
    assert demo_summary._mmss(0) == "0:00"
