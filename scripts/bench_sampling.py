"""Sampling throughput: the KV-cached engine, full recomputation, and Hugging Face's `generate`.

For the `small` preset and a LlamaGen-B-sized model (`model=b`: 768 wide, 12 layers, 12 heads), random
weights (speed does not depend on them), a 16x16 grid (256 visual tokens) after a 33-byte prompt, at
batch 1 and 16, in the resolved precision (bf16 on CUDA, the faster of bf16/fp32 on a CPU):

- arimg, KV cache: `arlm.transformer.sample.sample` without guidance (one prefill, one token per step);
- arimg, no cache: the same loop recomputing the whole sequence at every step. For the big model this is
  timed over the first --nocache-steps tokens only (the cheapest ones, so its tokens/s is an upper bound
  and the cache's advantage a lower bound); the table says so;
- transformers' LlamaForCausalLM.generate at the same shape, batch and dtype, with its own KV cache,
  sampling 256 new tokens (min = max = 256); transformers is a bench-only extra (`pip install -e '.[bench]'`).
- the kernel floor: the cached loop cut down to what any sampler of this model must run at each step, the
  matmuls of every layer and of the head's visual rows, the cache writes and attention over the cache,
  and nothing else (no norms, rope, activations or drawing; its output is meaningless). No implementation
  that calls the same kernels runs faster, so it bounds the ratio to `generate` that any sampler can reach.

All are timed in interleaved rounds (the median kept). Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from arlm.config import compose, to_object
from arlm.log import log, setup_logging
from arlm.perf import DTYPES, fmt_rate, resolve_precision
from arlm.device import autocast, resolve_device
from arlm.transformer.model import Transformer, ffn_hidden
from arlm.transformer.sample import Settings, sample
from arlm.transformer.sequence import Vocab

PROMPT = "a red circle on a gray background"
GRID = 16  # 16 x 16 tokens: a 256 x 256 image at downsampling 16


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_once(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def hf_model(cfg, vocab_size, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    hf_cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=m.dim, intermediate_size=ffn_hidden(m),
                         num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
                         num_key_value_heads=m.n_kv_heads or m.n_heads, max_position_embeddings=m.max_seq_len,
                         rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()


@torch.no_grad()
def kernel_floor(model: Transformer, vocab: Vocab, B: int, prefix_len: int, n: int, device,
                 precision: str) -> None:
    """n decoding steps of `model` at batch B reduced to their matmuls, cache writes and attention."""
    m = model.cfg
    hd, kv, L = m.dim // m.n_heads, m.n_kv_heads or m.n_heads, m.n_layers
    cache_k = torch.zeros(L, B, kv, prefix_len + n, hd, device=device, dtype=DTYPES[precision])
    cache_v = torch.zeros_like(cache_k)
    head = model.head.weight[vocab.visual0:vocab.visual0 + vocab.codebook_size]
    x = torch.randn(B, 1, m.dim, device=device)
    hidden = ffn_hidden(m)
    with autocast(device, precision):
        for j in range(n):
            end, h = prefix_len + j + 1, x
            for i, block in enumerate(model.blocks):
                q, k, v = block.attn.qkv(h).split([m.dim, kv * hd, kv * hd], dim=-1)
                cache_k[i, :, :, end - 1] = k.view(B, kv, hd)
                cache_v[i, :, :, end - 1] = v.view(B, kv, hd)
                y = torch.nn.functional.scaled_dot_product_attention(
                    q.view(B, 1, m.n_heads, hd).transpose(1, 2), cache_k[i, :, :, :end], cache_v[i, :, :, :end],
                    enable_gqa=kv != m.n_heads)
                h = block.attn.proj(y.transpose(1, 2).reshape(B, 1, m.dim))
                h = block.mlp.w2(block.mlp.w13(h)[..., :hidden])
            torch.nn.functional.linear(h, head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,b", help="model presets")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nocache-steps", type=int, default=32, help="recomputation steps timed for models other "
                                                                    "than small (0: the whole grid)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--grid", type=int, default=GRID, help="side of the token grid sampled (tiny's context: <= 8)")
    args = ap.parse_args()
    H = W = args.grid
    setup_logging()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    dtype = DTYPES[precision]
    vocab = Vocab(codebook_size=1024)
    n = H * W
    report, lines = {"device": device.type, "precision": precision, "grid": [H, W], "prompt": PROMPT, "rows": []}, []
    for preset in args.models.split(","):
        cfg = to_object(compose("pretrain", [f"model={preset}"]))
        torch.manual_seed(0)
        model = Transformer(cfg.model, vocab.padded_size).to(device).eval()
        try:
            hf = hf_model(cfg, vocab.padded_size, device, dtype)
        except ImportError:
            hf = None
            log.warning("transformers is not installed (pip install -e '.[bench]'): no reference rows")
        params = model.num_params()
        prefix = vocab.prefix(PROMPT, H, W)
        for B in (int(b) for b in args.batches.split(",")):
            seeds = list(range(B))
            partial = args.nocache_steps if preset != "small" and args.nocache_steps else n
            ids = torch.tensor([prefix] * B, device=device)
            runs = {
                "arimg, KV cache": (lambda: sample(model, vocab, [PROMPT] * B, seeds, H, W, Settings(), precision), n),
                "arimg, no cache": (lambda: sample(model, vocab, [PROMPT] * B, seeds, H, W, Settings(), precision,
                                                   use_cache=False, steps=partial), partial),
            }
            runs["kernel floor (matmuls, cache writes, attention only)"] = (
                lambda: kernel_floor(model, vocab, B, len(prefix), n, device, precision), n)
            if hf is not None:
                def hf_run():
                    with torch.no_grad(), autocast(device, precision):
                        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, use_cache=True,
                                    pad_token_id=vocab.pad, eos_token_id=None)
                runs["transformers generate, KV cache"] = (hf_run, n)
            log.info(f"{preset}, batch {B}: warm-up")  # kernels, allocator: a few tokens of each
            sample(model, vocab, [PROMPT] * B, seeds, H, W, Settings(), precision, steps=8)
            sample(model, vocab, [PROMPT] * B, seeds, H, W, Settings(), precision, use_cache=False, steps=4)
            kernel_floor(model, vocab, B, len(prefix), 8, device, precision)
            if hf is not None:
                with torch.no_grad(), autocast(device, precision):
                    hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                                do_sample=True, top_k=0, pad_token_id=vocab.pad, eos_token_id=None)
            times = {name: [] for name in runs}
            for r in range(args.rounds):
                for name, (fn, tokens) in runs.items():
                    times[name].append(timed_once(fn, device))
                    log.info(f"{preset}, batch {B}, round {r + 1}: {name} {B * tokens / times[name][-1]:,.0f} tok/s")
            tok_s = {name: B * runs[name][1] / statistics.median(t) for name, t in times.items()}
            ref = tok_s.get("transformers generate, KV cache")
            for name, v in tok_s.items():
                row = {"model": preset, "params": params, "batch": B, "run": name, "tokens_per_s": round(v, 1),
                       "timed_tokens": runs[name][1], "vs_transformers": round(v / ref, 2) if ref else None,
                       "vs_no_cache": round(v / tok_s["arimg, no cache"], 2)}
                report["rows"].append(row)
                note = "" if runs[name][1] == n else f" (first {runs[name][1]} tokens only)"
                vs_ref = f"{row['vs_transformers']:.2f}x" if ref else "-"
                lines.append(f"| {preset} ({params / 1e6:.1f}M) | {B} | {name}{note} | {fmt_rate(v)} | "
                             f"{row['vs_no_cache']:.1f}x | {vs_ref} |")
        model = hf = None  # free before the next preset
    print(f"{n} visual tokens per image after a {len(PROMPT)}-byte prompt; {precision} on {device.type}"
          + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "") + "; median of interleaved rounds")
    print()
    print("| model | batch | run | tokens/s | vs no cache | vs transformers |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
