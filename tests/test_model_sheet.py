"""scripts/model_sheet.py: the first images of each kind at the first sampling seed, in the order drawn."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_the_sheet_shows_the_first_images_of_each_kind_at_the_first_seed(tmp_path):
    folder = tmp_path / "eval"
    rows = []
    for seed in (0, 1):
        (folder / f"seed-{seed}").mkdir(parents=True)
        for i, (kind, ok) in enumerate([("single", True), ("single", False), ("single", True), ("count", False),
                                        ("text", True)]):
            path = folder / f"seed-{seed}" / f"{i:05d}-000.png"
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(path)
            rows.append({"path": f"elsewhere/eval/seed-{seed}/{path.name}", "prompt": f"p{i}", "seed": seed,
                         "kind": kind, "ok": ok})
    (folder / "verdicts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "model_sheet.py"), str(folder), str(out),
                        "--per-kind", "2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    # seed 0 only: single 2 (one accepted), count 1, text 1 (accepted)
    assert "4 images, 2 accepted" in r.stderr and Image.open(out).size[0] > 2 * 128
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "model_sheet.py"), str(tmp_path), str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not an eval generator folder" in bad.stderr
