"""A plain sampler for the training stages: one prompt at a time, its images as one batch, a KV cache,
temperature and top-k over the visual ids only. The layout is the sampler's, not the model's: it feeds
`[BOS] text [SOV] h w [SOT]` and then draws exactly h*w visual ids, so a sample is always a whole grid.

Used for the sample grids written while training and for judging them (arlm.judge); `arimg sample` builds
on the same pieces.
"""

from __future__ import annotations

import torch

from arlm.transformer.model import KVCache, Transformer
from arlm.transformer.sequence import LayoutError, Vocab, positions
from arlm.perf import DTYPES
from arlm.training import autocast


def check_prompt(vocab: Vocab, prompt: str, h: int, w: int, max_seq_len: int) -> list[int]:
    """The prompt's prefix ids; LayoutError when prompt and grid do not fit the context."""
    prefix = vocab.prefix(prompt, h, w)
    need = len(prefix) + h * w
    if need > max_seq_len:
        raise LayoutError(f"prompt of {len(prompt.encode())} bytes with a {h}x{w} grid needs {need} tokens, more than "
                          f"the model's context (model.max_seq_len={max_seq_len})")
    return prefix


def pick(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    """One id per row from (B, K) logits: greedy at temperature 0; softmax statistics in fp32."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, vocab: Vocab, prompt: str, h: int, w: int, n: int, temperature: float = 1.0,
             top_k: int = 0, seed: int = 0, precision: str = "fp32") -> torch.Tensor:
    """(n, h, w) visual codes for one prompt."""
    device = next(model.parameters()).device
    prefix = check_prompt(vocab, prompt, h, w, model.cfg.max_seq_len)
    P, m = len(prefix), h * w
    pos = positions(torch.arange(P + m, device=device)[None], torch.tensor([[P]], device=device), h, w, m)
    pos = pos.expand(n, -1, -1)  # (n, P + m, 2)
    gen = torch.Generator(device).manual_seed(seed)
    out = torch.empty(n, m, dtype=torch.long, device=device)
    was = model.training
    model.eval()
    with autocast(device, precision):
        cache = KVCache(model.cfg, n, P + m, device, DTYPES[precision])
        tokens = torch.tensor(prefix, device=device).expand(n, P)
        logits = model(tokens, pos[:, :P], cache)[:, -1]  # (n, V)
        for j in range(m):
            code = pick(logits[:, vocab.visual0:vocab.visual0 + vocab.codebook_size], temperature, top_k, gen)
            out[:, j] = code
            if j + 1 < m:
                logits = model((code + vocab.visual0)[:, None], pos[:, P + j:P + j + 1], cache)[:, -1]
    model.train(was)
    return out.view(n, h, w)


def load_model(path, device: str = "auto", ema: bool = True):
    """(model in eval mode, vocab, run config) of a transformer run or checkpoint directory; the EMA
    weights when the run kept them."""
    from arlm import checkpoint
    from arlm.config import TrainTransformerConfig
    from arlm.training import resolve_device
    from arlm.transformer.train import KIND, read_vocab

    ckpt = checkpoint.resolve(path, KIND)
    cfg = checkpoint.load_config(ckpt, TrainTransformerConfig)
    vocab = read_vocab(ckpt)
    model = Transformer(cfg.model, vocab.padded_size)
    weights = checkpoint.load_weights(ckpt, "model")
    if ema and (ckpt / "ema.safetensors").is_file():
        weights = {**weights, **checkpoint.load_weights(ckpt, "ema")}
    checkpoint.load_into(model, weights, ckpt)
    return model.to(resolve_device(device)).eval(), vocab, cfg
