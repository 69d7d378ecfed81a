"""A Llama-style decoder-only transformer over the unified sequence (arlm.transformer.sequence).

Read top to bottom: RMSNorm, rotary embeddings, attention (one fused qkv projection, optional QK-norm,
PyTorch's scaled_dot_product_attention, an optional KV cache), the SwiGLU MLP, the block, the model.

- Llama (Touvron et al., 2023): pre-norm RMSNorm, SwiGLU with hidden width 8/3 * dim, rotary positions.
- 2d rope (LlamaGen, Sun et al., 2024; Lumina-mGPT): half of each head's rotary pairs turn with a token's row,
  half with its column; `sequence.positions` gives text tokens (t, t), so 1d and 2d share one code path.
- QK-norm (Chameleon, 2024; Dehghani et al., 2023) and the z-loss (PaLM, computed by the trainer) keep long
  runs stable. From the nanoGPT speedrun, each off by default: ReLU squared for SwiGLU, zero-initialized output
  projections, a learned skip from the embedding into every block, logit soft-capping. The model knows nothing of ranks, precision or compilation: those are applied from outside.

Shapes: B batch, T tokens, D dim, H heads, Hkv key/value heads, d head dim, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import ModelConfig


def ffn_hidden(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    return 4 * cfg.dim if cfg.mlp == "relu2" else -(-int(8 * cfg.dim / 3) // 64) * 64


def check_config(cfg: ModelConfig) -> None:
    """ValueError naming the key when the shape cannot work."""
    if cfg.dim % cfg.n_heads:
        raise ValueError(f"model.dim {cfg.dim} is not a multiple of model.n_heads {cfg.n_heads}")
    kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.n_heads % kv:
        raise ValueError(f"model.n_heads {cfg.n_heads} is not a multiple of model.n_kv_heads {kv}")
    if cfg.rope not in ("1d", "2d"):
        raise ValueError(f"model.rope must be 1d or 2d, got {cfg.rope!r}")
    if cfg.mlp not in ("swiglu", "relu2"):
        raise ValueError(f"model.mlp must be swiglu or relu2, got {cfg.mlp!r}")
    if cfg.logit_softcap < 0:
        raise ValueError(f"model.logit_softcap must be 0 (off) or positive, got {cfg.logit_softcap}")
    if (cfg.dim // cfg.n_heads) % (4 if cfg.rope == "2d" else 2):
        raise ValueError(f"head dim {cfg.dim // cfg.n_heads} must be a multiple of 4 for 2d rope (2 for 1d)")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 under autocast
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).type_as(x)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float, two_d: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, d/2) for positions (B, T, 2). 1d: column 0 on all d/2 pairs; 2d: rows turn the
    first d/4 pairs, columns the last d/4."""
    pairs = head_dim // 4 if two_d else head_dim // 2
    inv = theta ** (-torch.arange(pairs, device=pos.device, dtype=torch.float32) / pairs)  # (pairs,)
    if two_d:
        ang = torch.cat([pos[..., 0:1].float() * inv, pos[..., 1:2].float() * inv], dim=-1)  # (B, T, d/2)
    else:
        ang = pos[..., 0:1].float() * inv
    return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x (B, H, T, d) by the angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Preallocated keys and values of every layer: (layers, B, Hkv, max_len, d). `length` tokens are filled."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> None:
        kv, d = cfg.n_kv_heads or cfg.n_heads, cfg.dim // cfg.n_heads
        self.k = torch.zeros(cfg.n_layers, batch, kv, max_len, d, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)  # one matmul
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, self.n_kv * self.head_dim,
                                     self.n_kv * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, start + T, d)
        # causal: the fast path when nothing precedes the block; a new block after a cache sees all of it
        causal = mask is None and T > 1 and start == 0
        if mask is None and T > 1 and start > 0:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_heads)  # (B, H, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: w2(silu(x w1) * x w3), with w1 and w3 fused into one matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = ffn_hidden(cfg)
        self.w13 = nn.Linear(cfg.dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class ReLU2(nn.Module):
    """w2(relu(x w1)^2) (So et al., Primer, 2021; the nanoGPT speedrun): one up-projection instead of two."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = ffn_hidden(cfg)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = ReLU2(cfg) if cfg.mlp == "relu2" else MLP(cfg)
        # embed_skip: the input becomes skip[0] * x + skip[1] * x0, x0 the token embedding (the speedrun's
        # skip from the embedding); starts as the plain residual stream
        self.skip = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg.embed_skip else None

    def forward(self, x, cos, sin, cache=None, mask=None, x0=None):
        if self.skip is not None:
            x = self.skip[0] * x + self.skip[1] * x0
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth, or zero
            if name.endswith(("proj.weight", "w2.weight")):
                if cfg.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None, last_only: bool = False, rows: slice | None = None,
                groups: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T) at rope positions (B, T, 2). With a cache, the tokens follow
        the `cache.length` already in it. `mask` (B, 1, T, T_total) bool, True = may attend, overrides causal.
        A sampler asks for the last position only and for the head `rows` it draws from (B, 1, len(rows)).
        `groups` (B, T', G): position t' of the input is the mean embedding of the tokens at groups[:, t']
        (next-patch training, arlm.transformer.objectives.NextPatch); `pos` is then (B, T', 2)."""
        cos, sin = rope_angles(pos, self.cfg.dim // self.cfg.n_heads, self.cfg.rope_theta, self.cfg.rope == "2d")
        x = self.embed(tokens)  # (B, T, D)
        if groups is not None:
            b, t2, g = groups.shape
            x = x.gather(1, groups.reshape(b, t2 * g, 1).expand(-1, -1, x.shape[-1])).view(b, t2, g, -1).mean(2)
        x0 = x
        for block in self.blocks:
            x = block(x, cos, sin, cache, mask, x0)
        if cache is not None:
            cache.length += tokens.shape[1]
        x = self.norm(x[:, -1:] if last_only else x)
        logits = F.linear(x, self.head.weight if rows is None else self.head.weight[rows])
        if self.cfg.logit_softcap:
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (forward + backward; the embedding lookup is no
        matmul) plus attention's 12 * layers * dim * T (the PaLM / nanoGPT estimate)."""
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith("embed"))
        if self.cfg.tie_embeddings:
            matmul += self.head.weight.numel()
        return 6 * matmul + 12 * self.cfg.n_layers * self.cfg.dim * seq_len
