"""The judge's accuracy against the classifier-free guidance scale, on held-out prompts.

Prompts: the captions of the first --prompts samples of the chosen kinds in a held-out image set (default
`data/synth-val`, seed 1, never trained on; its captions follow the same grammar as the training set's, so
a caption string may also occur there). Each prompt gets --n images per scale, seeds fixed per image
(`arlm.generation.sampler.image_seed`), so every scale sees the same random draws; a caption that occurs
twice gets fresh image indices the second time, never the same image twice. Each scale is also compared
with the first one image by image: how many images it gains and loses, and the exact sign test's p-value.
Prints JSON and writes the plot (--plot, default docs/cfg.png); --also draws earlier outputs of this script
(saved JSON) beside the new curve, one line per run.

    .venv/bin/python scripts/cfg_curve.py runs/pretrain --scales 1,1.5,2,3,4,6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arlm.data.shards import read_shards
from arlm.judge import paired_change, summarize
from arlm.log import log, setup_logging
from arlm.perf import resolve_precision
from arlm.tokenizer.codec import load_tokenizer
from arlm.generation.judged import sample_and_judge
from arlm.generation.prompts import image_jobs
from arlm.transformer.ckpt import load_model
from arlm.generation.sampler import image_seed
from arlm.transformer.sample import Settings
from arlm.viz import line_plot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="transformer run or checkpoint directory")
    ap.add_argument("--shards", default="data/synth-val", help="held-out image shards whose captions are the prompts")
    ap.add_argument("--kinds", default="single", help="comma-separated kinds of prompts")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=2, help="images per prompt and scale")
    ap.add_argument("--scales", default="1,1.5,2,3,4,6")
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--plot", default="docs/cfg.png")
    ap.add_argument("--also", nargs="*", default=[], help="earlier JSON outputs of this script to plot beside this run")
    args = ap.parse_args()
    setup_logging()
    try:  # read before the long sampling, so that a bad path fails at once
        earlier = [json.loads(Path(f).read_text()) for f in args.also]
        for c in earlier:
            if "run" not in c or not c.get("curve") or any({"cfg", "accuracy"} - set(r) for r in c["curve"]):
                raise ValueError("it has no run or no curve of cfg and accuracy")
    except (OSError, ValueError, AttributeError, TypeError) as e:
        ap.error(f"--also: not an output of this script: {e}")
    kinds = set(args.kinds.split(","))
    prompts = []
    for s in read_shards(args.shards):
        if (s.meta or {}).get("kind") in kinds:
            prompts.append(s.caption)
        if len(prompts) == args.prompts:
            break
    model, vocab, _ = load_model(args.run, "cpu")
    tok = load_tokenizer(vocab.tokenizer, "cpu")
    precision = resolve_precision("auto", next(model.parameters()).device)
    h, w = vocab.grid
    jobs = image_jobs(prompts, args.n)  # a caption listed twice takes fresh image indices
    rows, first = [], []
    for scale in (float(x) for x in args.scales.split(",")):
        settings = Settings(cfg=scale, cfg_schedule=args.schedule, top_k=args.top_k)
        judged = sample_and_judge(model, vocab, [p for p, _ in jobs], [image_seed(0, p, i) for p, i in jobs], (h, w),
                                  settings, precision, tok, batch_size=args.batch_size)
        verdicts = [j.verdict for j in judged]
        summary, ok = summarize(verdicts), [v.ok for v in verdicts]
        first = first or ok
        change = paired_change(first, ok)  # against the first scale, image by image (the same noise)
        rows.append({"cfg": scale, "accuracy": summary["accuracy"], "n": summary["n"],
                     "per_kind": {k: v["accuracy"] for k, v in summary["per_kind"].items()}, "vs_first": change})
        log.info("cfg %.2f: the judge accepts %d of %d; against the first scale %d gained, %d lost (sign test p = %.3f)",
                 scale, summary["correct"], summary["n"], change["gained"], change["lost"], change["p"])
    if args.plot:
        curves = earlier + [{"run": args.run, "curve": rows}]
        points: dict[float, dict] = {}
        for c in curves:
            for r in c["curve"]:
                points.setdefault(r["cfg"], {"cfg": r["cfg"]})[c["run"]] = r["accuracy"]
        line_plot([points[k] for k in sorted(points)], [c["run"] for c in curves], args.plot, x_key="cfg")
    print(json.dumps({"run": args.run, "prompts": len(prompts), "n": args.n, "schedule": args.schedule,
                      "top_k": args.top_k, "curve": rows}))


if __name__ == "__main__":
    main()
