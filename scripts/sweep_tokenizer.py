"""Tokenizer variants compared at equal wall time: which one reads the most words after a short budget?

`arimg train-tokenizer` measures one recipe at the full 15 minutes; this script runs the same recipe (the
config's pixel, perceptual (the edge loss unless LPIPS weights are named) and quantizer losses, fused
AdamW, warmup and cosine schedule, batches of busiest-of-4 square windows: 16 of 32x32 in the preset) for
a fixed number of *seconds*, so that a wider or slower variant gets fewer steps, as it
would in the real budget. The training set is held in memory as uint8 and the windows are drawn there (the
data path is not what is compared). The schedule's length is fixed from the step rate measured over steps
20-60. Then the 1,000 held-out images are reconstructed: mean PSNR, and how many of the text kind the
judge reads (of 238 in `data/synth-val`); for VQ also how many it reads when the encoder's latents are
decoded without quantizing them, which tells what the codebook costs.

    .venv/bin/python scripts/sweep_tokenizer.py --name base --budget 240
    .venv/bin/python scripts/sweep_tokenizer.py --name ch48 --budget 240 tokenizer.channels=48
    .venv/bin/python scripts/sweep_tokenizer.py --name dcae --budget 240 --shortcuts
    .venv/bin/python scripts/sweep_tokenizer.py --name J --tokenizer runs/tok-vqvae   # judge a trained run

Prints one JSON line on stdout (and appends it to --out); progress on stderr. Run on an otherwise idle
machine, or two at a time with --threads 1 when comparing a pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import DataConfig, compose, to_object
from arlm.data.loader import ShardLoader
from arlm.errors import UserError
from arlm.judge import judge_many
from arlm.log import log, setup_logging
from arlm.quantizers.vq import VectorQuantizer
from arlm.synth import parse_size
from arlm.tokenizer.codec import load_tokenizer
from arlm.tokenizer.metrics import psnr
from arlm.tokenizer.model import Tokenizer, from_unit, to_unit
from arlm.tokenizer.perceptual import build_perceptual
from arlm.training.common import EMA, lr_at, set_lr


def load(shards: str) -> tuple[torch.Tensor, list[str]]:
    """Every image of `shards` at 64x64 (uint8, N x 3 x 64 x 64) and its caption."""
    images, captions = [], []
    for b in ShardLoader(DataConfig(shards=shards, size="64", batch_size=500, shuffle_buffer=0), repeat=False):
        images.append(b["image"])
        captions += b["caption"]
    return torch.cat(images), captions


def busy_windows(images: torch.Tensor, idx: torch.Tensor, g: torch.Generator, size: int = 32,
                 tries: int = 4) -> torch.Tensor:
    """For each image, the one of `tries` random size x size windows whose pixels vary most (data.crop=busy)."""
    side = images.shape[-1]
    ox = torch.randint(0, side - size + 1, (len(idx), tries), generator=g)
    oy = torch.randint(0, side - size + 1, (len(idx), tries), generator=g)
    out = []
    for i, j in enumerate(idx.tolist()):
        windows = [images[j, :, oy[i, t]: oy[i, t] + size, ox[i, t]: ox[i, t] + size] for t in range(tries)]
        out.append(max(windows, key=lambda w: float(w.float().var(unbiased=False))))
    return torch.stack(out)


class Down(nn.Module):
    """Stride-2 convolution plus a parameter-free space-to-channel shortcut (DC-AE, Chen et al., 2024)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.pixel_unshuffle(x, 2)  # (B, 4C, h/2, w/2), averaged back to C channels
        return self.conv(x) + s.unflatten(1, (x.shape[1], 4)).mean(2)


class Up(nn.Module):
    """Nearest upsampling and a convolution, plus the upsampled input as a shortcut (DC-AE)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) + x


def with_shortcuts(model: Tokenizer) -> Tokenizer:
    """The same tokenizer with DC-AE's residual shortcuts around each change of resolution."""
    for seq in (model.encoder.down, model.decoder.up):
        mods, new, i = list(seq), [], 0
        while i < len(mods):
            m = mods[i]
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                new.append(Down(m.in_channels))
            elif isinstance(m, nn.Upsample):
                i += 1  # the convolution after it is part of Up
                new.append(Up(mods[i].in_channels))
            else:
                new.append(m)
            i += 1
        seq._modules.clear()
        for k, m in enumerate(new):
            seq.add_module(str(k), m)
    return model


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
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the config's trainer.lr)")
    ap.add_argument("--b2", type=float, default=0.95, help="AdamW's beta2")
    ap.add_argument("--ema", type=float, default=0.0, help="also evaluate an EMA of the weights with this decay")
    ap.add_argument("--shortcuts", action="store_true", help="DC-AE's shortcuts around each change of resolution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", default="data/synth")
    ap.add_argument("--val", default="data/synth-val")
    ap.add_argument("--out", default="sweep_tokenizer.jsonl")
    ap.add_argument("--tokenizer", default=None, help="judge this trained run (arimg train-tokenizer) instead of training")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train_tokenizer (tokenizer.*, trainer.*)")
    a = ap.parse_args()
    if a.budget <= 0 or a.threads < 1:
        ap.error("--budget must be positive and --threads at least 1")
    setup_logging()
    torch.set_num_threads(a.threads)
    try:
        cfg = to_object(compose("train_tokenizer", a.overrides))
        trained = load_tokenizer(a.tokenizer, device="cpu") if a.tokenizer else None
        val_images, val_captions = load(a.val)
        train_images = None if trained else load(a.train)[0]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if trained:
        result = {"name": a.name, "tokenizer": str(trained.ckpt), "raw": evaluate(trained.model, val_images, val_captions)}
        print(json.dumps(result))
        with open(a.out, "a") as f:
            f.write(json.dumps(result) + "\n")
        return
    torch.manual_seed(a.seed)
    model = Tokenizer(cfg.tokenizer)
    if a.shortcuts:
        model = with_shortcuts(model)
    lr = a.lr if a.lr is not None else cfg.trainer.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, a.b2), weight_decay=0.0, fused=True)
    ema = EMA(model, a.ema) if a.ema else None
    perceptual, g = build_perceptual(cfg.tokenizer.loss.perceptual_weights), torch.Generator().manual_seed(a.seed)
    tc, lc = cfg.trainer, cfg.tokenizer.loss
    window, other = parse_size(cfg.data.crop_size) if cfg.data.crop_size else (64, 64)
    if window != other:
        ap.error(f"data.crop_size must be square here, got {cfg.data.crop_size}")
    tc.lr, tc.max_steps = lr, 10**9
    step, t0 = 0, time.perf_counter()
    model.train()
    while step < tc.max_steps:
        if step == 20:
            t20 = time.perf_counter()
        if step == 60:  # the schedule's length, from the measured rate
            tc.max_steps = max(61, int(a.budget * 40 / (time.perf_counter() - t20)))
            log.info("%s: %.2f steps/s -> %d steps", a.name, 40 / (time.perf_counter() - t20), tc.max_steps)
        idx = torch.randint(0, len(train_images), (cfg.data.batch_size,), generator=g)
        x = to_unit(busy_windows(train_images, idx, g, size=window))
        set_lr(opt, lr_at(step, tc))
        recon, _, q = model(x)
        loss = lc.l1 * (recon - x).abs().mean() + lc.l2 * (recon - x).pow(2).mean() + sum(q.values())
        if lc.perceptual > 0:
            loss = loss + lc.perceptual * perceptual(recon, x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if ema:
            ema.update(model)
        step += 1
        if step % 500 == 0:
            log.info("%s: step %d, loss %.4f, %.0f s", a.name, step, loss.item(), time.perf_counter() - t0)
    result = {"name": a.name, "steps": step, "train_s": round(time.perf_counter() - t0, 1), "args": vars(a),
              "raw": evaluate(model, val_images, val_captions)}
    if ema:
        ema.apply_to(model)
        result["ema"] = evaluate(model, val_images, val_captions)
    print(json.dumps(result))
    with open(a.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
