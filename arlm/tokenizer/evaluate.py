"""`arimg eval tokenizer`: how well a tokenizer reconstructs held-out images, and at what rate.

Reported (JSON): PSNR and SSIM of the reconstructions (per image, then averaged; a per-image PSNR is capped
at 100 dB so that an exact reconstruction of a flat synthetic image does not make the mean infinite),
codebook usage and perplexity over all tokens of the set, bits per pixel (tokens x log2 K / pixels), the
judge's accuracy on the reconstructions against the images' captions (do words still read, do colours and
shapes survive), and the baseline measured in the same run: each image encoded with Pillow's JPEG at the
quality whose file size is closest to the tokenizer's rate, its PSNR/SSIM beside ours.

A caption-aware tokenizer decodes each image with its caption, or with `captions=False` with the null caption
(what it draws for an image that has none; the judge still reads against the real caption).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from arlm.config import DataConfig
from arlm.data.loader import ShardLoader
from arlm.errors import UserError
from arlm.judge import JudgeConfig, judge_many, summarize
from arlm.log import progress
from arlm.synth import parse_size
from arlm.tokenizer.codec import Loaded
from arlm.tokenizer.metrics import bits_per_pixel, jpeg_near_bpp, psnr, ssim

PSNR_CAP = 100.0


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def eval_tokenizer(tok: Loaded, shards: str, size: str = "64", limit: int | None = None, batch_size: int = 50,
                   judge: bool = True, jpeg: bool = True, judge_cfg: JudgeConfig = JudgeConfig(),
                   captions: bool = True) -> dict:
    h, w = parse_size(size)
    if h % tok.model.stride or w % tok.model.stride:
        raise UserError(f"--size {size} is not a multiple of the tokenizer's stride {tok.model.stride}")
    gh, gw = h // tok.model.stride, w // tok.model.stride
    rate = bits_per_pixel(gh * gw, tok.model.codebook_size, h * w)
    data = DataConfig(shards=shards, size=size, crop="center", batch_size=batch_size, shuffle_buffer=0)
    loader = ShardLoader(data, repeat=False)
    counts = torch.zeros(tok.model.codebook_size, dtype=torch.int64)
    ours_psnr, ours_ssim, jpeg_psnr, jpeg_ssim, jpeg_bpp, jpeg_q = [], [], [], [], [], []
    recons: list[tuple[Image.Image, str]] = []
    n = 0
    with progress() as bar:
        task = bar.add_task("encode/decode", total=limit, info="")
        for batch in loader:
            images, texts = batch["image"], batch["caption"]
            if limit is not None:
                images, texts = images[: limit - n], texts[: limit - n]
            tokens = tok.encode(images)  # (B, gh, gw)
            out = tok.decode(tokens, list(texts) if captions else None)  # (B, 3, H, W) uint8
            counts += torch.bincount(tokens.flatten(), minlength=tok.model.codebook_size)
            ours_psnr += psnr(images, out).clamp(max=PSNR_CAP).tolist()
            ours_ssim += ssim(images, out).tolist()
            decoded = []
            for img, rec, cap in zip(images, out, texts):
                if jpeg:
                    q, bpp, dec = jpeg_near_bpp(Image.fromarray(img.permute(1, 2, 0).numpy()), rate)
                    decoded.append(torch.from_numpy(np.asarray(dec).copy()).permute(2, 0, 1))
                    jpeg_bpp.append(bpp)
                    jpeg_q.append(q)
                recons.append((Image.fromarray(rec.permute(1, 2, 0).numpy()), cap))
            if jpeg:
                decoded = torch.stack(decoded)  # (B, 3, H, W)
                jpeg_psnr += psnr(images, decoded).clamp(max=PSNR_CAP).tolist()
                jpeg_ssim += ssim(images, decoded).tolist()
            n += len(images)
            bar.update(task, completed=n, info=f"psnr {_mean(ours_psnr):.2f}")
            if limit is not None and n >= limit:
                break
    if n == 0:
        raise UserError(f"no images read from {shards}")
    p = counts[counts > 0].double() / counts.sum()
    report = {
        "tokenizer": str(tok.ckpt), "images": n, "size": [h, w], "grid": [gh, gw],
        "codebook_size": tok.model.codebook_size, "tokens": int(counts.sum()),
        "psnr": _mean(ours_psnr), "ssim": _mean(ours_ssim),
        "usage": float((counts > 0).double().mean()), "perplexity": float(math.exp(-(p * p.log()).sum())),
        "bpp": rate, "captions": "read" if tok.reads_captions and captions else
        ("withheld" if tok.reads_captions else "not read"),
    }
    if jpeg:
        report["jpeg"] = {"psnr": _mean(jpeg_psnr), "ssim": _mean(jpeg_ssim), "bpp": _mean(jpeg_bpp),
                          "quality": _mean(jpeg_q), "note": "Pillow JPEG, headers included, quality closest to our bpp"}
    if judge:
        with progress() as bar:
            task = bar.add_task("judge reconstructions", total=len(recons), info="")
            verdicts = []
            for v in judge_many(recons, judge_cfg):
                verdicts.append(v)
                bar.update(task, advance=1, info=f"{sum(x.ok for x in verdicts) / len(verdicts):.1%} ok")
        report["judge"] = summarize(verdicts)
    report["skipped"] = loader.skips.as_dict()
    return report
