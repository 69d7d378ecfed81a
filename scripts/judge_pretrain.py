"""How often the judge accepts a transformer run's samples: every single-object caption of the synthetic
grammar (6 colours x 3 shapes), --n images each with the plain sampler, seeds 0..17 (one per prompt, not
chosen). Prints JSON: the share accepted overall and per prompt; --sheet writes the contact sheet.

    .venv/bin/python scripts/judge_pretrain.py runs/pretrain --n 8 --sheet samples.png
"""

from __future__ import annotations

import argparse
import json

from arlm.judge import summarize
from arlm.log import setup_logging
from arlm.perf import resolve_precision
from arlm.synth import single_prompts
from arlm.tokenizer.codec import load_tokenizer
from arlm.generation.judged import sample_and_judge, verdict_labels
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import Settings
from arlm.viz import contact_sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="transformer run or checkpoint directory")
    ap.add_argument("--n", type=int, default=8, help="images per prompt")
    ap.add_argument("--grid", default=None, help="token grid HxW (default: the run's)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--sheet", default=None, help="write the samples' contact sheet here")
    args = ap.parse_args()
    setup_logging()
    model, vocab, _ = load_model(args.run, "cpu")
    h, w = (int(v) for v in args.grid.split("x")) if args.grid else vocab.grid
    tok = load_tokenizer(vocab.tokenizer, "cpu")
    precision = resolve_precision("auto", next(model.parameters()).device)
    prompts = single_prompts()
    jobs = [(p, i) for p in prompts for i in range(args.n)]
    # image i of prompt k draws from seed k * 1000 + i: seeds 0..17, one per prompt, not chosen
    judged = sample_and_judge(model, vocab, [p for p, _ in jobs], [k * 1000 + i for k in range(len(prompts))
                                                                   for i in range(args.n)],
                              (h, w), Settings(temperature=args.temperature, top_k=args.top_k), precision, tok)
    summary = summarize(j.verdict for j in judged)
    per_prompt = {p: sum(j.verdict.ok for j in judged if j.prompt == p) / args.n for p in prompts}
    if args.sheet:
        labels, marks = verdict_labels(judged)
        contact_sheet([j.image for j in judged], labels, cols=args.n, marks=marks).save(args.sheet)
    print(json.dumps({"run": args.run, "n_per_prompt": args.n, "temperature": args.temperature, "top_k": args.top_k,
                      "accepted": summary["accuracy"], "n": summary["n"], "per_prompt": per_prompt}))


if __name__ == "__main__":
    main()
