"""scripts/sweep_generator.py: variants trained for minutes side by side, each on its own core, with the held-out
loss curve and the judge's figures, at the end and at points along the way; a bad variant is a one-line error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep_generator.py"
TINY = ["model=tiny", "trainer=tiny", "trainer.compile=false", "data.batch_size=8", "sample.n=0",
        "trainer.warmup_steps=1", "trainer.log_every=1"]


def sweep(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--runs", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "results.jsonl"), *args], capture_output=True, text=True,
                          timeout=600)


def test_two_variants_side_by_side_report_their_curves_and_accuracy(tmp_path, token_dir):
    proc = sweep(tmp_path, "--tokens", str(token_dir), "--val-tokens", str(token_dir), "--val-every", "2",
                 "--minutes", "0.08", "--per-kind", "1", "--n", "1", "--points", "0.05", "--ckpt-every", "2",
                 "--variant", "a",
                 "--variant", "b:trainer.optimizer=muon,trainer.muon_lr=0.01", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["a", "b"] and all(r["threads"] == 1 for r in rows)
    assert rows[1]["overrides"][-2:] == ["trainer.optimizer=muon", "trainer.muon_lr=0.01"]
    saved = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert saved == rows  # appended once, by the parent
    for r in rows:
        assert r["steps"] > 3 and r["curve"] and r["heldout_visual_loss"] == r["curve"][-1][1]
        minutes = [m for m, _ in r["curve"]]
        assert minutes == sorted(minutes) and minutes[-1] <= 0.08 + 0.05
        assert r["n"] == 4 and set(r["per_kind"]) == {"single", "count", "relation", "text"}
        assert (Path(r["run"]) / "metrics.jsonl").exists()
        (point,) = r["points"]  # the last checkpoint saved by minute 0.05, judged
        assert point["minute"] <= 0.05 and 0 < point["step"] <= r["steps"]
        assert point["step"] % 2 == 0 or point["step"] == r["steps"]  # every 2nd step, or the final save
        assert set(point["per_kind"]) == set(r["per_kind"])
        assert (Path(r["run"]) / "checkpoints" / f"step-{point['step']:07d}").is_dir()


@pytest.mark.parametrize("args,needle", [(["--variant", "a/b"], "NAME"), (["--variant", "a"], "--tokens")])
def test_a_bad_variant_is_one_line(tmp_path, args, needle):
    proc = sweep(tmp_path, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0] and not proc.stdout
