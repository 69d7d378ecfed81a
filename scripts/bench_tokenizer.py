"""Image tokenizer throughput and MFU, each beside a reference measured in the same run.

For the tokenizer of `arimg train-tokenizer` with the given Hydra overrides (default: none, i.e. the
`vqvae` preset) at --size, on random images (the cost does not depend on the pixels):

- the bf16 and fp32 matmul peaks of the device (`arlm.perf.matmul_flops`, n=1024 on a CPU, 4096 on CUDA);
- model FLOPs per image: convolutions and matmuls of one forward pass at batch 1, counted by
  torch.utils.flop_counter.FlopCounterMode (norms, activations and the optimizer are not counted);
  a training step is taken as 3x the forward (the backward costs about twice the forward);
- training images/s of the Trainer's step (arlm.training.trainer) on one fixed batch: forward under autocast of
  the resolved precision (fp32: autocast off), the loss of the config's `tokenizer.loss` (l1, l2, codebook
  weights; no perceptual or adversarial terms), backward, gradient clipping at `trainer.grad_clip`, the
  non-finite guard, AdamW step; MFU against the bf16 peak and against the peak of the precision used;
- encode and decode images/s (`Tokenizer.encode` / `Tokenizer.decode`, eval mode, same autocast);
- baselines in the same run: fp32 training when the resolved precision is not fp32, and on a CPU
  training in channels_last memory format beside the default (NCHW).

Prints a markdown table on stdout, then the same figures as one JSON object on the last line; logs go to
stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from arlm import synth
from arlm.config import compose, to_object
from arlm.device import autocast
from arlm.errors import UserError
from arlm.log import log, setup_logging
from arlm.perf import DTYPES, fmt_flops, fmt_pct, fmt_rate, matmul_flops, resolve_precision, timed
from arlm.tokenizer.model import Tokenizer, to_unit
from arlm.training.trainer import FixedBatch, Trainer

def parse_size(text: str) -> tuple[int, int]:
    """arlm.synth.parse_size, its error as argparse's."""
    try:
        return synth.parse_size(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build(tcfg, device: torch.device, seed: int, channels_last: bool = False) -> Tokenizer:
    torch.manual_seed(seed)
    model = Tokenizer(tcfg).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def forward_flops(model: Tokenizer, h: int, w: int, device: torch.device) -> int:
    """Conv + matmul FLOPs of one eval-mode forward of one image (eval: no k-means init, no codebook update)."""
    model.eval()
    x = torch.zeros(1, 3, h, w, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def bench_train(cfg, images: torch.Tensor, device: torch.device, precision: str, steps: int,
                channels_last: bool = False) -> tuple[float, Tokenizer]:
    """Training images/s of the Trainer's steps (arlm.training.trainer: forward, loss, backward, clipping, the
    non-finite guard, AdamW) on one fixed batch."""
    tcfg, weights = cfg.tokenizer, cfg.tokenizer.loss
    model = build(tcfg, device, cfg.trainer.seed, channels_last).train()
    x = to_unit(images)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.trainer.lr,
                            betas=tuple(cfg.trainer.betas), weight_decay=cfg.trainer.weight_decay, fused=True)

    def objective(net, x):  # the config's pixel and quantizer losses (no perceptual or adversarial term)
        recon, _, losses = net(x)
        recon = recon.float()
        loss = weights.l1 * F.l1_loss(recon, x) + weights.l2 * F.mse_loss(recon, x)
        return loss + weights.codebook * sum(losses.values(), torch.zeros((), device=x.device)), torch.zeros(0)

    trainer = Trainer(cfg.trainer, None, FixedBatch(model, x, objective, lambda x: torch.ones((), device=x.device),
                                                    opt, 0), device, precision)

    def step() -> None:
        trainer.train_step(trainer.step)
        trainer.step += 1

    seconds = timed(step, steps, device)
    return len(images) * steps / seconds, model


def bench_codec(model: Tokenizer, images: torch.Tensor, device: torch.device, precision: str,
                steps: int) -> tuple[float, float]:
    """Encode and decode images/s at the batch of `images`, eval mode."""
    model.eval()
    x = to_unit(images)
    with autocast(device, precision):
        indices = model.encode(x)
        enc = timed(lambda: model.encode(x), steps, device)
        dec = timed(lambda: model.decode(indices), steps, device)
    return len(images) * steps / enc, len(images) * steps / dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=(64, 64), help="image size, N or HxW (default 64)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps, after 2 warm-up steps")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                    help="default: the config's trainer.device")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                    help="default: the config's trainer.precision")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train_tokenizer, e.g. tokenizer=tiny")
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1:
        ap.error("--batch and --steps must be at least 1")
    setup_logging()

    try:
        cfg = to_object(compose("train_tokenizer", args.overrides))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    device_name = args.device or cfg.trainer.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    device = torch.device(device_name)
    precision = resolve_precision(args.precision or cfg.trainer.precision, device)
    h, w = args.size
    torch.manual_seed(cfg.trainer.seed)

    tcfg = cfg.tokenizer
    probe = build(tcfg, device, cfg.trainer.seed)
    try:
        gh, gw = probe.grid(h, w)
    except ValueError as e:
        ap.error(str(e))
    n_params = sum(p.numel() for p in probe.parameters())
    n_codes = probe.codebook_size
    fwd = forward_flops(probe, h, w, device)
    del probe
    train_flops = 3 * fwd
    log.info(f"tokenizer: {tcfg.quantizer}, channels {tcfg.channels} x {list(tcfg.channel_mult)}, f={tcfg.downsample}, "
             f"{n_params / 1e6:.2f}M params; {h}x{w} -> {gh}x{gw} tokens; forward {fwd / 1e9:.3f} GFLOP/image")

    n = 4096 if device.type == "cuda" else 1024
    log.info(f"matmul peaks on {device.type} (n={n})...")
    peaks = {p: matmul_flops(DTYPES[p], device, n=n, budget_s=0.5) for p in ("bf16", "fp32")}
    log.info(f"bf16 {fmt_flops(peaks['bf16'])}, fp32 {fmt_flops(peaks['fp32'])}; training in {precision}")

    images = torch.randint(0, 256, (args.batch, 3, h, w), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(cfg.trainer.seed)).to(device)

    log.info(f"training, {precision}, batch {args.batch}, {args.steps} steps...")
    train_ips, model = bench_train(cfg, images, device, precision, args.steps)
    log.info(f"training {train_ips:.1f} images/s; encode / decode...")
    enc_ips, dec_ips = bench_codec(model, images, device, precision, args.steps)
    del model
    achieved = train_flops * train_ips

    fp32_ips = None
    if precision != "fp32":
        log.info("training, fp32 baseline...")
        fp32_ips = bench_train(cfg, images, device, "fp32", args.steps)[0]
    cl_ips = None
    if device.type == "cpu":
        log.info(f"training, {precision}, channels_last...")
        cl_ips = bench_train(cfg, images, device, precision, args.steps, channels_last=True)[0]

    mfu_bf16 = achieved / peaks["bf16"]
    mfu_used = achieved / peaks[precision]
    report = {
        "overrides": args.overrides, "device": device.type,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": precision, "size": [h, w], "batch": args.batch, "steps": args.steps,
        "tokens_per_image": gh * gw, "codebook_size": n_codes, "params": n_params,
        "matmul_peak_flops": {k: round(v) for k, v in peaks.items()},
        "forward_flops_per_image": fwd, "train_flops_per_image": train_flops,
        "train_images_per_s": round(train_ips, 2), "train_flops_per_s": round(achieved),
        "mfu_vs_bf16_peak": round(mfu_bf16, 4), "mfu_vs_used_precision_peak": round(mfu_used, 4),
        "encode_images_per_s": round(enc_ips, 2), "decode_images_per_s": round(dec_ips, 2),
    }
    rows = [
        ("config", " ".join(args.overrides) or "(defaults: tokenizer=vqvae)"),
        ("tokenizer", f"{tcfg.quantizer}, {n_codes} codes, channels {tcfg.channels} x {list(tcfg.channel_mult)}, "
                      f"f={tcfg.downsample}, {n_params / 1e6:.2f}M params"),
        ("device, precision", f"{device.type}" + (f" ({report['threads']} threads)" if report["threads"] else "")
         + f", {precision}"),
        ("images", f"{h}x{w} -> {gh}x{gw} = {gh * gw} tokens, batch {args.batch}, {args.steps} timed steps"),
        (f"matmul peak bf16 (n={n})", fmt_flops(peaks["bf16"])),
        (f"matmul peak fp32 (n={n})", fmt_flops(peaks["fp32"])),
        ("forward FLOPs / image (convs + matmuls)", fmt_flops(fwd, "FLOP")),
        ("training FLOPs / image (3x forward)", fmt_flops(train_flops, "FLOP")),
        (f"training images/s ({precision})", fmt_rate(train_ips)),
        ("training FLOP/s achieved", fmt_flops(achieved)),
    ]
    if precision == "bf16":
        rows.append(("MFU vs bf16 peak (the precision used)", fmt_pct(mfu_bf16)))
    else:
        rows += [("MFU vs bf16 peak", fmt_pct(mfu_bf16)),
                 (f"MFU vs {precision} peak (the precision used)", fmt_pct(mfu_used))]
    if fp32_ips is not None:
        report["train_images_per_s_fp32"] = round(fp32_ips, 2)
        report[f"train_{precision}_vs_fp32"] = round(train_ips / fp32_ips, 3)
        rows += [("training images/s, fp32 baseline", fmt_rate(fp32_ips)),
                 (f"{precision} / fp32 training", f"{train_ips / fp32_ips:.2f}x")]
    if cl_ips is not None:
        report["train_images_per_s_channels_last"] = round(cl_ips, 2)
        report["channels_last_vs_default"] = round(cl_ips / train_ips, 3)
        rows += [(f"training images/s ({precision}, channels_last)", fmt_rate(cl_ips)),
                 ("channels_last / default (NCHW) training", f"{cl_ips / train_ips:.2f}x")]
    rows += [(f"encode images/s ({precision}, eval)", fmt_rate(enc_ips)),
             (f"decode images/s ({precision}, eval)", fmt_rate(dec_ips))]

    ratio = peaks["fp32"] / peaks["bf16"]
    if ratio > 1 and precision == "fp32":
        note = (f"bf16 matmul is {ratio:.0f}x slower than fp32 on this {device.type} (emulated, no native bf16), "
                f"so MFU against the bf16 peak can exceed 100% and means nothing here; read MFU against the fp32 peak.")
    elif ratio > 1:
        note = (f"bf16 matmul is {ratio:.0f}x slower than fp32 on this {device.type} (emulated, no native bf16), "
                f"yet training ran in bf16 as asked (its convolutions need not share the matmul's slow path, so MFU "
                f"can exceed 100%): the fp32 baseline row shows what bf16 costs.")
    elif precision == "bf16":
        note = f"bf16 is the faster matmul here ({1 / ratio:.1f}x fp32) and the precision used: MFU vs its peak."
    else:
        note = (f"bf16 is the faster matmul here ({1 / ratio:.1f}x fp32) but training ran in fp32: MFU vs the bf16 "
                f"peak is the reference, vs the fp32 peak shows how well fp32 itself is used.")
    report["note"] = note

    print("| metric | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print()
    print(f"FLOPs: FlopCounterMode on one eval forward at batch 1; training = 3x forward. MFU note: {note}")
    print(json.dumps(report))
    log.info(f"training {train_ips:,.1f} images/s ({precision}), MFU {100 * mfu_used:.3g}% of the {precision} peak; "
             f"encode {enc_ips:,.1f}, decode {dec_ips:,.1f} images/s")


if __name__ == "__main__":
    main()
