"""Transformer training throughput and MFU, beside Hugging Face's LlamaForCausalLM measured in the same run.

For the model of `arimg pretrain` with the given Hydra overrides (default: the `small` preset) at
--batch sequences of --seq-len tokens (default: the demo's 16 x 16 grids with captions up to 67 bytes):

- the bf16 and fp32 matmul peaks of the device (`arlm.perf.matmul_flops`);
- tokens/s of full training steps of arimg's Trainer (forward under the resolved precision's autocast, fp32
  cross-entropy, backward, clipping, the non-finite guard, AdamW) on one fixed batch, eager and with the
  per-block torch.compile the trainer applies (`trainer.compile`);
- the reference: transformers' LlamaForCausalLM at the same shape (width, layers, heads, SwiGLU width,
  vocabulary, tied embeddings), batch and precision, its own loss (`labels=`), the same optimizer, SDPA
  attention. transformers is a bench-only extra: `pip install -e '.[bench]'`.
- the kernel floor: a training step of the same model cut down to what any implementation must run, the
  matmuls of every layer and of the head and causal attention, forward and backward, and nothing else
  (no norms, rope, activations, residuals, loss or optimizer). No implementation calling the same kernels
  runs faster, so reference / floor bounds the speed-up over the reference that they allow;
- MFU of each against the bf16 peak and the peak of the precision used; FLOPs per token: 6 per matmul
  weight + 12 * layers * width * T (`Transformer.flops_per_token`), the same count for both models.

Prints a markdown table on stdout, then the figures as one JSON object on the last line; logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from arlm.config import compose, to_object
from arlm.errors import UserError
from arlm.log import log, setup_logging
from arlm.perf import DTYPES, fmt_flops, fmt_pct, fmt_rate, matmul_flops, resolve_precision, timed
from arlm.transformer.model import Transformer, ffn_hidden
from arlm.transformer.sequence import VISUAL_R, Vocab
from arlm import parallel
from arlm.device import autocast, resolve_device
from arlm.training.trainer import FixedBatch, Trainer
from arlm.training.optim import make_optimizer, param_groups
from arlm.transformer.objectives import NextToken


def ours_step(cfg, vocab_size: int, tokens: torch.Tensor, pos: torch.Tensor, device, precision: str, compile: bool):
    """A step of the Trainer that `arimg pretrain` runs (arlm.training.trainer) on one fixed batch: forward under
    autocast, the fp32 next-token loss, backward, clipping, the non-finite guard, AdamW."""
    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab_size).to(device).train()
    parallel.parallelize(model, "ddp", compile, 1)  # one process: compiled per block when asked, in place
    opt = make_optimizer(model, cfg.trainer, device)
    loss = NextToken(cfg, device)
    region = torch.full_like(tokens, VISUAL_R)  # every target an image token, as in the demo's sequences
    trainer = Trainer(cfg.trainer, None, FixedBatch(model, (tokens, pos, region), loss, loss.norm, opt, loss.n_stats),
                      device, precision)

    def step() -> None:
        trainer.train_step(trainer.step)
        trainer.step += 1

    return model, step


def floor_step(cfg, vocab_size: int, tokens: torch.Tensor, device, precision: str):
    """A training step of the model reduced to its matmuls and attention, forward and backward."""
    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab_size).to(device).train()
    m = cfg.model
    hd, kv, hidden = m.dim // m.n_heads, m.n_kv_heads or m.n_heads, ffn_hidden(m)
    inputs = tokens[:, :-1]
    B, T = inputs.shape

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(B, T, n, hd).transpose(1, 2)

    def step() -> None:
        with autocast(device, precision):
            h = model.embed(inputs)
            for block in model.blocks:
                q, k, v = block.attn.qkv(h).split([m.dim, kv * hd, kv * hd], dim=-1)
                y = F.scaled_dot_product_attention(heads(q, m.n_heads), heads(k, kv), heads(v, kv), is_causal=True,
                                                   enable_gqa=kv != m.n_heads)
                h = block.attn.proj(y.transpose(1, 2).reshape(B, T, m.dim))
                h = block.mlp.w2(block.mlp.w13(h)[..., :hidden])
            logits = model.head(h)
        logits.float().sum().backward()
        model.zero_grad(set_to_none=True)

    return model, step


def hf_step(cfg, vocab_size: int, tokens: torch.Tensor, device, precision: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    hf_cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=m.dim, intermediate_size=ffn_hidden(m),
                         num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
                         num_key_value_heads=m.n_kv_heads or m.n_heads, max_position_embeddings=m.max_seq_len,
                         rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
                         attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, dataclasses.replace(cfg.trainer, optimizer="adamw")), lr=1e-4,
                            betas=tuple(cfg.trainer.betas))
    inputs = tokens[:, :-1]

    def step() -> None:
        with autocast(device, precision):
            loss = model(input_ids=inputs, labels=inputs).loss  # shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=330, help="tokens per sequence (default: the demo's)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round, after warm-up steps")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round counts")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled run")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of pretrain, e.g. model=b")
    args = ap.parse_args()
    if min(args.batch, args.steps, args.seq_len) < 2:
        ap.error("--batch, --seq-len and --steps must be at least 2")
    setup_logging()
    try:
        cfg = to_object(compose("pretrain", args.overrides))
        device = resolve_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    precision = resolve_precision(args.precision, device)
    vocab_size = Vocab(codebook_size=1024).padded_size  # the demo tokenizer's 1,024 codes
    B, T = args.batch, args.seq_len
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (B, T), generator=g).to(device)
    pos = torch.arange(T, device=device)[None, :, None].expand(B, T, 2)  # text-like (t, t): rope cost is the same

    n = 4096 if device.type == "cuda" else 1024
    log.info(f"matmul peaks on {device.type} (n={n})...")
    peaks = {p: matmul_flops(DTYPES[p], device, n=n, budget_s=0.5) for p in ("bf16", "fp32")}
    probe = Transformer(cfg.model, vocab_size)
    flops_tok = probe.flops_per_token(T - 1)
    n_params = probe.num_params()
    del probe
    tok_step = B * (T - 1)

    # every model is built and warmed up first, then timed in interleaved rounds (median kept): this
    # machine's speed drifts, and timing one model after another would charge the drift to one of them
    steps: dict = {}
    for name, comp in [("arimg", False)] + ([] if args.no_compile else [("arimg, torch.compile", True)]):
        steps[name] = ours_step(cfg, vocab_size, tokens, pos, device, precision, comp)
    steps["kernel floor (matmuls and attention only)"] = floor_step(cfg, vocab_size, tokens, device, precision)
    hf_params = None
    try:
        steps["transformers LlamaForCausalLM"] = hf_step(cfg, vocab_size, tokens, device, precision)
        hf_params = sum(p.numel() for p in steps["transformers LlamaForCausalLM"][0].parameters())
    except ImportError:
        log.warning("transformers is not installed (pip install -e '.[bench]'): no reference row")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, (_, step) in steps.items():
            log.info(f"round {r + 1}/{args.rounds}: {name}, {args.steps} steps...")
            times[name].append(timed(step, args.steps, device, warmup=3 if r == 0 else 1))
    results = {name: tok_step * args.steps / statistics.median(t) for name, t in times.items()}

    ref = results.get("transformers LlamaForCausalLM")
    m = cfg.model
    print(f"model: {m.dim} wide, {m.n_layers} layers, {m.n_heads} heads, SwiGLU {ffn_hidden(m)}, vocabulary "
          f"{vocab_size}; arimg {n_params / 1e6:.2f}M parameters" + (f", transformers {hf_params / 1e6:.2f}M" if hf_params else "")
          + f"; batch {B} x {T} tokens, {precision} on {device.type}"
          + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))
    print(f"matmul peaks: bf16 {fmt_flops(peaks['bf16'])}, fp32 {fmt_flops(peaks['fp32'])}; "
          f"{fmt_flops(flops_tok, 'FLOP')} per token")
    print()
    print(f"| model | tokens/s | vs transformers | MFU vs bf16 peak | MFU vs {precision} peak |")
    print("|---|---|---|---|---|")
    report = {"overrides": args.overrides, "device": device.type, "precision": precision, "batch": B, "seq_len": T,
              "rounds": {name: [round(tok_step * args.steps / x, 1) for x in t] for name, t in times.items()},
              "params": n_params, "flops_per_token": flops_tok, "matmul_peak_flops": {k: round(v) for k, v in peaks.items()},
              "tokens_per_s": {}, "vs_transformers": {}, "mfu_vs_bf16": {}, "mfu_vs_used": {}}
    for name, tok_s in results.items():
        achieved = flops_tok * tok_s
        ratio = tok_s / ref if ref else None
        print(f"| {name} | {fmt_rate(tok_s)} | {f'{ratio:.2f}x' if ratio else '-'} | "
              f"{fmt_pct(achieved / peaks['bf16'])} | {fmt_pct(achieved / peaks[precision])} |")
        report["tokens_per_s"][name] = round(tok_s, 1)
        report["vs_transformers"][name] = round(ratio, 3) if ratio else None
        report["mfu_vs_bf16"][name] = round(achieved / peaks["bf16"], 4)
        report["mfu_vs_used"][name] = round(achieved / peaks[precision], 4)
    if peaks["fp32"] > peaks["bf16"] and precision == "fp32":
        print(f"\nbf16 matmul is {peaks['fp32'] / peaks['bf16']:.0f}x slower than fp32 on this {device.type} (emulated): "
              "MFU against the bf16 peak means nothing here; read it against the fp32 peak.")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
