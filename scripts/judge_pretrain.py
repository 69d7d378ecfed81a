"""How often the judge accepts a transformer run's samples: every single-object caption of the synthetic
grammar (6 colours x 3 shapes), --n images each with the plain sampler, seeds 0..17 (one per prompt, not
chosen). Prints JSON: the share accepted overall and per prompt; --sheet writes the contact sheet.

    .venv/bin/python scripts/judge_pretrain.py runs/pretrain --n 8 --sheet samples.png
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image

from arlm.judge import judge_many, summarize
from arlm.log import log, setup_logging
from arlm.perf import resolve_precision
from arlm.synth import COLORS, SHAPES, article
from arlm.tokenizer.codec import load_tokenizer
from arlm.transformer.sample import generate, load_model
from arlm.viz import contact_sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="transformer run or checkpoint directory")
    ap.add_argument("--n", type=int, default=8, help="images per prompt")
    ap.add_argument("--grid", default="16x16", help="token grid HxW")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--sheet", default=None, help="write the samples' contact sheet here")
    args = ap.parse_args()
    setup_logging()
    h, w = (int(v) for v in args.grid.split("x"))
    model, vocab, _ = load_model(args.run, "cpu")
    tok = load_tokenizer(vocab.tokenizer, "cpu")
    precision = resolve_precision("auto", torch.device("cpu"))
    prompts = [f"{article(c)} {c} {s}" for s in SHAPES for c in COLORS]
    images, captions = [], []
    for i, p in enumerate(prompts):
        codes = generate(model, vocab, p, h, w, args.n, args.temperature, args.top_k, seed=i, precision=precision)
        images += [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in tok.decode(codes)]
        captions += [p] * args.n
        log.info("%s: sampled %d", p, args.n)
    verdicts = list(judge_many(zip(images, captions)))
    summary = summarize(verdicts)
    per_prompt = {p: sum(v.ok for v, c in zip(verdicts, captions) if c == p) / args.n for p in prompts}
    if args.sheet:
        labels = [f"{'OK' if v.ok else 'no'}: {c}" for v, c in zip(verdicts, captions)]
        contact_sheet(images, labels, cols=args.n).save(args.sheet)
    print(json.dumps({"run": args.run, "n_per_prompt": args.n, "temperature": args.temperature, "top_k": args.top_k,
                      "accepted": summary["accuracy"], "n": summary["n"], "per_prompt": per_prompt}))


if __name__ == "__main__":
    main()
