"""How often the fast glyph reader (`judge.reader=glyphs`, arlm.glyphs) gives the judge's verdict on word images,
and how much faster it is: the measure behind its use as a training reward.

Three sets of word images, each judged twice (the judge with tesseract, as every evaluation does, and with the
glyph reader): fresh synthetic images (`synth.generate`, a seed no training set uses), the same images after
the degradations of scripts/judge_figures.py (noise, JPEG, down-up resize, blur), and a model's own samples of
held-out word prompts (where the reads are hardest: half-drawn letters). Prints one JSON object: per set the
images, what each reader accepts, the share of equal accept/reject verdicts, the disagreements both ways, how many
reads the glyph reader left to tesseract, and milliseconds per image of each judge (one thread; tesseract's
subprocesses included).

    .venv/bin/python scripts/reader_agreement.py --ckpt runs/sft --per-kind 200 --n 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from unittest import mock

import numpy as np
import torch

from arlm import glyphs, synth
from arlm.config import JudgeConfig
from arlm.judge import judge
from arlm.log import setup_logging


def agreement(items: list, label: str) -> dict:
    """Both readers' verdicts on (image, caption) items, and how often the glyph reader left one to tesseract."""
    verdicts, ms, reads = {}, {}, []
    read_word = glyphs.read_word

    def counted(alpha, word):
        reads.append(read_word(alpha, word))
        return reads[-1]

    for reader in ("tesseract", "glyphs"):
        cfg = JudgeConfig(reader=reader)
        t0 = time.perf_counter()
        with mock.patch("arlm.judge.glyphs.read_word", counted):
            verdicts[reader] = [judge(image, caption, cfg).ok for image, caption in items]
        ms[reader] = round(1000 * (time.perf_counter() - t0) / max(1, len(items)), 1)
    a, b = (np.array(verdicts[r], dtype=bool) for r in ("tesseract", "glyphs"))
    row = {"set": label, "images": len(items), "accepted_tesseract": int(a.sum()), "accepted_glyphs": int(b.sum()),
           "agreement": round(float((a == b).mean()), 4) if len(items) else None,
           "glyphs_only": int((b & ~a).sum()), "tesseract_only": int((a & ~b).sum()),
           "read_by_glyphs": len(reads), "left_to_tesseract": sum(r is None for r in reads), "ms_per_image": ms}
    print(json.dumps(row), file=sys.stderr)
    return row


def synthetic(n: int, seed: int) -> list:
    return [(s.image, s.caption) for s in synth.generate(n, (64, 64), seed, kinds=("text",))]


def degraded(items: list, seed: int) -> list:
    from judge_figures import DEGRADATIONS  # scripts/: the judge's own degradations

    rng = np.random.default_rng(seed)
    return [(fn(image, rng), caption) for image, caption in items for fn in DEGRADATIONS.values()]


def model_samples(ckpt: str, per_kind: int, n: int, seed: int) -> list:
    from arlm.generation.judged import sample_and_judge
    from arlm.generation.prompts import grammar_prompts
    from arlm.generation.sampler import image_seed
    from arlm.tokenizer.codec import load_tokenizer
    from arlm.transformer.ckpt import load_model
    from arlm.transformer.sample import Settings

    model, vocab, _ = load_model(ckpt, "cpu")
    prompts = [p for p in grammar_prompts(["text"], per_kind, seed) for _ in range(n)]
    seeds = [image_seed(0, p, i % n) for i, p in enumerate(prompts)]
    drawn = sample_and_judge(model, vocab, prompts, seeds, tuple(vocab.grid), Settings(), "fp32",
                             load_tokenizer(vocab.tokenizer, "cpu"), judge_cfg=None)
    return [(j.image, j.prompt) for j in drawn]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="a transformer run whose samples are read (default: the bundled model)")
    ap.add_argument("--synthetic", type=int, default=200, help="fresh synthetic word images")
    ap.add_argument("--per-kind", type=int, default=200, help="held-out word prompts the model draws")
    ap.add_argument("--n", type=int, default=3, help="images per prompt")
    ap.add_argument("--seed", type=int, default=20241207)
    args = ap.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    if args.ckpt is None:
        from arlm.generation.modelcard import default_model

        args.ckpt = str(default_model())
    clean = synthetic(args.synthetic, args.seed)
    rows = [agreement(clean, "synthetic"), agreement(degraded(clean, args.seed), "synthetic, degraded"),
            agreement(model_samples(args.ckpt, args.per_kind, args.n, 1), f"samples of {args.ckpt}")]
    print(json.dumps({"ckpt": args.ckpt, "sets": rows}))


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    main()
