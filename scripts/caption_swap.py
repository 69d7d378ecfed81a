"""How far a caption-aware decoder's caption can override its tokens: word images encoded, then decoded with
the caption of another word of the same length, and judged against both captions.

For each word image of the shards: its tokens, decoded (1) with its own caption, (2) with the caption naming
another word of the same length (the next one in the shipped list, cyclically), (3) with the null caption. The
judge (with tesseract, as every evaluation) reads each decode against the image's word and against the other
word. Prints one JSON object: per decode the share read as the image's own word and as the other word, overall
and by word length.

    .venv/bin/python scripts/caption_swap.py data/words --tokenizer runs/tok-cap --limit 500
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from PIL import Image

from arlm import synth
from arlm.config import DataConfig
from arlm.data.loader import ShardLoader
from arlm.judge import JudgeConfig, judge_many
from arlm.log import progress, setup_logging
from arlm.tokenizer.codec import load_tokenizer


def other_word(word: str) -> str:
    """The next word of the shipped list with the same length (cyclically)."""
    same = [w for w in synth.words() if len(w) == len(word) and w != word]
    later = [w for w in same if w > word]
    return (later or same)[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", help="shards of word images (data synth --kinds text)")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--limit", type=int, default=500)
    args = p.parse_args(argv)
    tok = load_tokenizer(args.tokenizer, "cpu")
    if not tok.reads_captions:
        sys.exit(f"caption_swap: {args.tokenizer} does not read captions")
    data = DataConfig(shards=args.shards, size="64", crop="center", batch_size=50, shuffle_buffer=0)
    items: list[dict] = []
    for batch in ShardLoader(data, repeat=False):
        for image, caption, meta in zip(batch["image"], batch["caption"], batch["meta"]):
            if meta.get("kind") == "text" and len(items) < args.limit:
                word = meta["word"]
                items.append({"image": image, "word": word, "own": caption,
                              "other": caption.replace(f'"{word}"', f'"{other_word(word)}"')})
        if len(items) >= args.limit:
            break
    codes = tok.encode(torch.stack([it["image"] for it in items]))
    pairs = []  # (decode, which caption it is judged against, item index)
    for name in ("own", "other", "null"):
        captions = [None if name == "null" else it[name] for it in items]
        images = [tok.decode(c[None], [cap])[0] for c, cap in zip(codes, captions)]
        for i, img in enumerate(images):
            picture = Image.fromarray(img.permute(1, 2, 0).numpy())
            pairs += [(name, "reads_own", i, picture, items[i]["own"]), (name, "reads_other", i, picture, items[i]["other"])]
    with progress() as bar:
        task = bar.add_task("judge", total=len(pairs), info="")
        verdicts = []
        for v in judge_many(((pic, cap) for *_, pic, cap in pairs), JudgeConfig()):
            verdicts.append(v.ok)
            bar.update(task, advance=1)
    report: dict = {"tokenizer": str(tok.ckpt), "images": len(items)}
    for name in ("own", "other", "null"):
        block: dict = {}
        for target in ("reads_own", "reads_other"):
            hits = [(items[i]["word"], ok) for (n, t, i, *_), ok in zip(pairs, verdicts) if n == name and t == target]
            by_len = {}
            for word, ok in hits:
                by_len.setdefault(len(word), []).append(ok)
            block[target] = {"share": sum(ok for _, ok in hits) / len(hits),
                             "by_length": {str(k): round(sum(v) / len(v), 4) for k, v in sorted(by_len.items())}}
        report[f"decoded_with_{name}_caption"] = block
    return report


if __name__ == "__main__":
    setup_logging()
    print(json.dumps(main(), indent=1))
