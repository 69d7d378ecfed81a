"""Tokenizer variants compared at equal wall time: which one reads the most words after a short budget?

`arimg train-tokenizer` measures one recipe at its full length; this script trains the same recipe through the same
Trainer for a fixed number of *seconds* (`trainer.max_minutes`: the schedule follows the clock and the run ends on
it), so that a wider or slower variant gets fewer steps, as it would in the real budget. Then the 1,000 held-out
images are reconstructed: mean PSNR, and how many of the text kind the judge reads (of 238 in `data/synth-val`);
for VQ also how many it reads when the encoder's latents are decoded without quantizing them, which tells what the
codebook costs. With `trainer.ema`, the EMA weights are judged too.

    .venv/bin/python scripts/sweep_tokenizer.py --name base --budget 240 tokenizer=gen trainer=tokenizer_gen
    .venv/bin/python scripts/sweep_tokenizer.py --name ch48 --budget 240 tokenizer=gen tokenizer.channels=48
    .venv/bin/python scripts/sweep_tokenizer.py --name J --tokenizer runs/tok-vqvae   # judge a trained run

Prints one JSON line on stdout (and appends it to --out); progress on stderr; the run itself is kept in
runs/sweep-NAME. Run on an otherwise idle machine, or two at a time with --threads 1 when comparing a pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from arlm import checkpoint
from arlm.config import DataConfig, compose, to_object
from arlm.data.loader import ShardLoader
from arlm.errors import UserError
from arlm.judge import judge_many
from arlm.log import setup_logging
from arlm.quantizers.vq import VectorQuantizer
from arlm.tokenizer.codec import load_tokenizer
from arlm.tokenizer.metrics import psnr
from arlm.tokenizer.model import from_unit, to_unit
from arlm.training.tokenizer import train


def load(shards: str) -> tuple[torch.Tensor, list[str]]:
    """Every image of `shards` at 64x64 (uint8, N x 3 x 64 x 64) and its caption."""
    images, captions = [], []
    for b in ShardLoader(DataConfig(shards=shards, size="64", batch_size=500, shuffle_buffer=0), repeat=False):
        images.append(b["image"])
        captions += b["caption"]
    return torch.cat(images), captions


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, captions: list[str]) -> dict:
    model.eval()
    out = torch.cat([from_unit(model(to_unit(images[i: i + 100]))[0]) for i in range(0, len(images), 100)])
    sel = [i for i, c in enumerate(captions) if c.startswith("the word")]
    ok = sum(v.ok for v in judge_many([(out[i].permute(1, 2, 0).numpy(), captions[i]) for i in sel]))
    result = {"psnr": round(psnr(images, out).clamp(max=100).mean().item(), 2), "text": f"{ok}/{len(sel)}",
              "text_pct": round(100 * ok / max(1, len(sel)), 1)}
    q = model.quantizer
    if isinstance(q, VectorQuantizer) and sel:  # the same words decoded from the encoder's latents, unquantized
        z = model.encoder(to_unit(images[sel]))
        out = from_unit(model.decoder(F.normalize(z, dim=1) if q.l2norm else z))
        result["text_unquantized"] = sum(v.ok for v in judge_many([(out[k].permute(1, 2, 0).numpy(), captions[i])
                                                                   for k, i in enumerate(sel)]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", default="data/synth")
    ap.add_argument("--val", default="data/synth-val")
    ap.add_argument("--out", default="sweep_tokenizer.jsonl")
    ap.add_argument("--tokenizer", default=None, help="judge this trained run (arimg train-tokenizer) instead of training")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train_tokenizer (tokenizer.*, trainer.*, data.*)")
    a = ap.parse_args()
    if a.budget <= 0 or a.threads < 1:
        ap.error("--budget must be positive and --threads at least 1")
    setup_logging()
    torch.set_num_threads(a.threads)
    try:
        val_images, val_captions = load(a.val)
        result = {"name": a.name}
        if a.tokenizer is None:
            run = f"runs/sweep-{a.name}"
            cfg = to_object(compose("train_tokenizer", [f"data.shards={a.train}", f"run_dir={run}", "overwrite=true",
                                                        f"trainer.max_minutes={a.budget / 60}",
                                                        *a.overrides]))
            t0 = time.perf_counter()
            a.tokenizer = str(train(cfg))
            result.update(steps=checkpoint.read_meta(checkpoint.resolve(run))["step"],
                          train_s=round(time.perf_counter() - t0, 1), args=vars(a))
        raw = load_tokenizer(a.tokenizer, device="cpu", ema=False)
        result.update(tokenizer=str(raw.ckpt), raw=evaluate(raw.model, val_images, val_captions))
        if (raw.ckpt / "ema.safetensors").is_file():
            result["ema"] = evaluate(load_tokenizer(a.tokenizer, device="cpu").model, val_images, val_captions)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(json.dumps(result))
    with open(a.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
