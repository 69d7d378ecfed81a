"""The judge's figures: own-image accuracy per kind, acceptance of shuffled captions, accuracy after degradation.

- own: n fresh synthetic samples (`synth.generate(n, size, seed)`), each judged against its own caption;
- shuffled: the same images against a fixed-seed derangement of their captions (no image keeps its own);
  lower is better, though a few pairs are true by chance (another image's caption may describe this one):
  "true_by_record" counts those by the attribute records, and "accepted_false" the accepted pairs that
  the records say are false;
- near_miss: the same images against their caption with one claim changed: the shape (single), the number
  (count), the relation turned around (relation), the nearest other word of the same length (text);
- degraded: the own pairs after a mild degradation of the image, as later stages' reconstructions have:
  gaussian noise (sigma 8), a JPEG round trip (quality 75), a 2x bilinear down-up resize, a gaussian blur
  (sigma 1 px), a colour drift (a per-image offset of up to 15 per channel).

Prints one JSON object on stdout, progress and the first rejections on stderr. Usage:
    python scripts/judge_figures.py --n 1000 --seed 20240917 --size 64
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, fields

import numpy as np
from PIL import Image, ImageFilter

from arlm import synth
from arlm.synth import relation_holds
from arlm.judge import JudgeConfig, Verdict, judge_many, parse_caption, summarize

log = logging.getLogger("judge_figures")


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, np.float32) + rng.normal(0, 8, (img.height, img.width, 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def resize2x(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    return img.resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR)


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(1.0))


def drift(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, np.int16) + rng.integers(-15, 16, 3).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


DEGRADATIONS = {"noise8": noise, "jpeg75": jpeg, "resize2x": resize2x, "blur1": blur, "drift15": drift}


def derangement(n: int, seed: int) -> np.ndarray:
    """perm with perm[i] != i for all i (n >= 2): one random cycle through all indices."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def near_miss(record: dict) -> str:
    caption, kind = record["caption"], record["kind"]
    if kind == "single":
        o = record["objects"][0]
        other = synth.SHAPES[(synth.SHAPES.index(o["shape"]) + 1) % len(synth.SHAPES)]
        return caption.replace(f"{o['color']} {o['shape']}", f"{o['color']} {other}", 1)
    if kind == "count":
        n = len(record["objects"])
        return caption.replace(*(("two", "three") if n == 2 else ("three", "two")), 1)
    if kind == "relation":
        return caption.replace(record["relation"], OPPOSITE[record["relation"]], 1)
    word = record["word"]
    near = max((w for w in synth.words() if len(w) == len(word) and w != word),
               key=lambda w: sum(a == b for a, b in zip(w, word)))
    return caption.replace(f'"{word}"', f'"{near}"')


def true_of(record: dict, caption: str) -> bool:
    """Does the attribute record (not the pixels) say that `caption` describes the image?"""
    claim, truth = parse_caption(caption), parse_caption(record["caption"])
    if claim.background not in (None, record["background"]) or claim.kind != truth.kind:
        return False
    if claim.kind == "text":
        return (claim.word, claim.text_color) == (truth.word, truth.text_color)
    if Counter(claim.objects) != Counter(truth.objects):
        return False
    if claim.kind != "relation":
        return True
    h, w = record["size"]
    boxes = [(o["color"], o["shape"], o["bbox"]) for o in record["objects"]]
    return any(relation_holds(a[2], b[2], claim.relation, h, w, 1 / 8) for a in boxes for b in boxes
               if a is not b and a[:2] == claim.objects[0] and b[:2] == claim.objects[1])


def run(name: str, pairs: list, cfg: JudgeConfig, show: int) -> tuple[dict, list[Verdict]]:
    t = time.perf_counter()
    verdicts = list(judge_many(pairs, cfg))
    report = summarize(verdicts)
    report["seconds"] = round(time.perf_counter() - t, 1)
    log.info("%s: %d/%d accepted (%.1fs)", name, report["correct"], report["n"], report["seconds"])
    shown = 0
    for (_, caption), v in zip(pairs, verdicts):
        if shown < show and (v.ok if name in ("shuffled", "near_miss") else not v.ok):
            log.info("  %s | %s | %s", "accepted" if v.ok else "rejected", caption, v.reason)
            shown += 1
    return report, verdicts


def _parse(type_name: str, value: str):
    if type_name == "bool":
        return value.lower() in ("1", "true", "yes")
    return {"int": int, "float": float, "str": str}[type_name](value)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=20240917, help="synthetic set seed (no test uses it)")
    p.add_argument("--size", default="64", help="N or HxW")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--degrade", default=",".join(DEGRADATIONS), help="comma list; empty for none")
    p.add_argument("--show", type=int, default=5, help="log this many wrong verdicts per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a JudgeConfig field")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    start = time.perf_counter()
    size = synth.parse_size(args.size)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    types = {f.name: f.type for f in fields(JudgeConfig)}
    cfg = JudgeConfig(workers=args.workers, **{k: _parse(types[k], v) for k, v in overrides.items()})
    generated = list(synth.generate(args.n, size, seed=args.seed))
    samples = [(s.image, s.caption) for s in generated]
    perm = derangement(len(samples), args.seed)
    report = {"n": args.n, "seed": args.seed, "size": list(size), "config": asdict(cfg)}
    report["own"], _ = run("own", samples, cfg, args.show)
    shuffled = [(img, samples[j][1]) for (img, _), j in zip(samples, perm)]
    report["shuffled"], verdicts = run("shuffled", shuffled, cfg, args.show)
    true = [true_of(s.record, caption) for s, (_, caption) in zip(generated, shuffled)]
    report["shuffled"]["true_by_record"] = sum(true)
    report["shuffled"]["accepted_false"] = sum(v.ok and not t for v, t in zip(verdicts, true))
    report["near_miss"], _ = run("near_miss", [(s.image, near_miss(s.record)) for s in generated], cfg, args.show)
    report["degraded"] = {}
    for name in filter(None, args.degrade.split(",")):
        rng = np.random.default_rng([args.seed, len(report["degraded"])])
        pairs = [(DEGRADATIONS[name](img, rng), cap) for img, cap in samples]
        report["degraded"][name], _ = run(name, pairs, cfg, args.show)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
