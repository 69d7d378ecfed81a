"""One judged contact sheet of a model from an `arimg eval generator` folder: the first images of every kind
at the first sampling seed, in the order they were drawn (never picked), framed green where the judge
accepts them and red where not. The README's first picture is this sheet of the bundled model.

    python scripts/model_sheet.py data/default/eval-final docs/default-model.png --per-kind 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from arlm.synth import KINDS
from arlm.viz import contact_sheet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path, help="the out= folder of arimg eval generator")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--per-kind", type=int, default=8)
    args = ap.parse_args()
    try:
        rows = [json.loads(ln) for ln in (args.eval_dir / "verdicts.jsonl").read_text().splitlines() if ln.strip()]
    except (OSError, ValueError) as e:
        sys.stderr.write(f"model_sheet: {args.eval_dir}: not an eval generator folder ({e})\n")
        return 2
    if not rows:
        sys.stderr.write(f"model_sheet: {args.eval_dir}/verdicts.jsonl holds no image\n")
        return 2
    first_seed = rows[0]["seed"]
    first = [r for r in rows if r["seed"] == first_seed]
    shown = [r for kind in KINDS for r in [r for r in first if r["kind"] == kind][:args.per_kind]]
    images = [Image.open(args.eval_dir / Path(r["path"]).relative_to(Path(r["path"]).parents[1])) for r in shown]
    labels = [f"{'OK' if r['ok'] else 'no'}: {r['prompt']}" for r in shown]
    contact_sheet(images, labels, cols=args.per_kind, marks=[r["ok"] for r in shown]).save(args.out)
    sys.stderr.write(f"{len(shown)} images, {sum(r['ok'] for r in shown)} accepted -> {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
