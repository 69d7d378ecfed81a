"""The decoding engine: batched, KV-cached, classifier-free-guided sampling of whole token grids.

One prefill of every row's prefix, then one token per step for the whole batch. The layout is the
sampler's, not the model's: it feeds `[BOS] text [SOV] h w [SOT]` (plus any kept rows of an image to
complete) and then draws exactly the remaining visual ids, only among visual ids, so a sample is always a
whole grid and the end tokens need no drawing.

- Rows of different prompt lengths are left-padded to one length; an attention mask hides the pads and
  each row's rope positions start at its own first token, so a row samples as it would alone.
- Classifier-free guidance (Ho & Salimans, 2022; as in LlamaGen): each conditional row has an
  unconditional twin (the empty caption, what caption dropout trained) in the same batch; the logits are
  `u + s * (c - u)` and the drawn token is fed to both. `s` may follow a schedule over the grid: constant,
  a linear ramp from 1 (Muse, Chang et al., 2023), or on only within an interval of the grid (Kynkäänniemi
  et al., 2024). With s = 1 everywhere no twin is run: `--cfg 1` is plain conditional sampling.
- Temperature, top-k and top-p act on the guided logits; softmax statistics in fp32.
- Every image draws from its own generator (seeded per image), so image i is the same whatever the batch
  it is sampled in.

Shapes: B images (rows 2B with guidance), P prefix columns, n = h*w visual tokens, K codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arlm.device import autocast
from arlm.perf import DTYPES
from arlm.transformer.model import KVCache, Transformer
from arlm.transformer.sequence import LayoutError, Vocab, positions

SCHEDULES = ("constant", "linear", "interval")


@dataclass
class Settings:
    """How to draw: guidance and filters."""

    cfg: float = 1.0  # guidance scale; 1 = none
    cfg_schedule: str = "constant"  # constant | linear (from 1 to cfg over the grid) | interval
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # interval: guidance on for grid fractions in [lo, hi)
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off; else keep the ids at least min_p times as likely as the likeliest

    def check(self) -> None:
        if self.cfg_schedule not in SCHEDULES:
            raise ValueError(f"cfg schedule must be one of {', '.join(SCHEDULES)}, got {self.cfg_schedule!r}")
        lo, hi = self.cfg_interval
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"cfg interval must satisfy 0 <= lo < hi <= 1, got {lo},{hi}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ValueError("temperature >= 0, top-k >= 0, 0 < top-p <= 1 and 0 <= min-p <= 1, please")

    @classmethod
    def from_config(cls, c) -> "Settings":
        """From an arlm.config.SamplingConfig."""
        if len(c.cfg_interval) != 2:
            raise ValueError(f"cfg interval must be [lo, hi], got {list(c.cfg_interval)}")
        return cls(c.cfg, c.cfg_schedule, tuple(c.cfg_interval), c.temperature, c.top_k, c.top_p, c.min_p)

    def scale(self, j: int, n: int) -> float:
        """Guidance scale for visual token j of n."""
        if self.cfg_schedule == "linear":
            return 1 + (self.cfg - 1) * (j + 1) / n
        if self.cfg_schedule == "interval":
            lo, hi = self.cfg_interval
            return self.cfg if lo <= j / n < hi else 1.0
        return self.cfg

    def guided(self, n: int) -> bool:
        return any(self.scale(j, n) != 1 for j in range(n))


def check_prompt(vocab: Vocab, prompt: str, h: int, w: int, max_seq_len: int) -> list[int]:
    """The prompt's prefix ids; LayoutError when prompt and grid do not fit the context."""
    prefix = vocab.prefix(prompt, h, w)
    need = len(prefix) + h * w
    if need > max_seq_len:
        raise LayoutError(f"prompt of {len(prompt.encode())} bytes with a {h}x{w} grid needs {need} tokens, more than "
                          f"the model's context (model.max_seq_len={max_seq_len})")
    return prefix


def filter_logits(logits: torch.Tensor, s: Settings) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on (B, K) fp32 logits (temperature 0 is handled by the caller). Min-p
    (Nguyen et al., 2024) keeps the ids whose probability after temperature is at least min_p times the top
    id's: a cut that is tight where the model is sure and loose where it is not."""
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= s.top_p  # keep the smallest prefix reaching top_p (>= 1 id)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if s.min_p > 0:  # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
        floor = logits.max(dim=-1, keepdim=True).values + math.log(s.min_p)
        logits = logits.masked_fill(logits < floor, float("-inf"))
    return logits


class GumbelNoise:
    """Gumbel noise for every image and step, row r from its own generator seeded `seeds[r]`, drawn
    `chunk` steps at a time: a step then costs one batched argmax instead of one multinomial call per row,
    memory stays B x chunk x K, and an image's draws never depend on the batch it is in."""

    def __init__(self, seeds: list[int], K: int, device, chunk: int = 64) -> None:
        self.gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.K, self.device, self.chunk = K, device, chunk
        self.start, self.buf = -chunk, None

    def step(self, j: int) -> torch.Tensor:
        """(B, K) noise of step j (steps are asked for in increasing order)."""
        while j >= self.start + self.chunk:
            u = torch.empty(len(self.gens), self.chunk, self.K, device=self.device)
            for r, g in enumerate(self.gens):
                u[r].uniform_(generator=g)
            self.buf = -torch.log(-torch.log(u.clamp_(1e-20, 1 - 1e-7)))
            self.start += self.chunk
        return self.buf[:, j - self.start]


def draw(logits: torch.Tensor, s: Settings, noise: torch.Tensor) -> torch.Tensor:
    """One id per row of (B, K) logits: the Gumbel-max trick, argmax(logits / T + g) with g ~ Gumbel(0, 1)
    is a draw from softmax(logits / T) (after top-k / top-p, whose removed ids stay at -inf)."""
    logits = logits.float()
    if s.temperature == 0:
        return logits.argmax(-1)
    return (filter_logits(logits, s) + noise).argmax(-1)


@torch.no_grad()
def sample(model: Transformer, vocab: Vocab, prompts: list[str], seeds: list[int], h: int, w: int,
           settings: Settings = Settings(), precision: str = "fp32", keep: torch.Tensor | None = None,
           use_cache: bool = True, steps: int | None = None) -> torch.Tensor:
    """(B, h, w) visual codes, one image per (prompt, seed). `keep` (B, k, w): the first k rows of each grid,
    kept as given (image completion). `use_cache=False` recomputes the whole sequence at every step (the
    benchmark's baseline); `steps` stops after that many drawn tokens (benchmarks; the rest stays 0)."""
    settings.check()
    device = next(model.parameters()).device
    B, n = len(prompts), h * w
    kept = 0 if keep is None else keep.shape[1] * w
    guided = settings.guided(n)
    texts = list(prompts) + ([""] * B if guided else [])  # unconditional twins after the conditional rows
    prefixes = [check_prompt(vocab, t, h, w, model.cfg.max_seq_len) for t in texts]
    R, P = len(texts), max(len(p) for p in prefixes) + kept
    total = P + n - kept  # columns once every token is in
    pad = torch.tensor([P - kept - len(p) for p in prefixes], device=device)  # (R,) left padding
    tokens = torch.full((R, total), vocab.pad, dtype=torch.long, device=device)
    for r, p in enumerate(prefixes):
        tokens[r, pad[r]:P - kept] = torch.tensor(p, device=device)
    if kept:
        tokens[:, P - kept:P] = keep.reshape(B, kept).repeat(R // B, 1).to(device) + vocab.visual0
    col = torch.arange(total, device=device)
    t = (col - pad[:, None]).clamp(min=0)  # (R, total) each row's own token index
    v0 = torch.tensor([len(p) for p in prefixes], device=device)[:, None]  # first visual index per row
    pos = positions(t, v0, h, w, n)  # (R, total, 2)
    valid = col[None] >= pad[:, None]  # (R, total) keys that are not padding
    padded = bool((pad > 0).any())

    def mask(start: int, end: int) -> torch.Tensor | None:
        """(R, 1, end-start, end) for queries start..end-1: causal, pads hidden (a pad query sees itself)."""
        if not padded:
            return None
        q, k = col[start:end, None], col[None, :end]
        m = (k <= q)[None] & valid[:, None, :end]
        return (m | (k == q)[None]).unsqueeze(1)

    noise = GumbelNoise(seeds, vocab.codebook_size, device) if settings.temperature > 0 else None
    out = torch.zeros(B, n, dtype=torch.long, device=device)
    if kept:
        out[:, :kept] = keep.reshape(B, kept).to(device)
    K, lo = vocab.codebook_size, vocab.visual0
    rows = slice(lo, lo + K)  # only visual ids are ever drawn
    was = model.training
    model.eval()
    with autocast(device, precision):
        cache = KVCache(model.cfg, R, total, device, DTYPES[precision]) if use_cache else None
        cur = P
        logits = model(tokens[:, :P], pos[:, :P], cache, mask(0, P), last_only=True, rows=rows)[:, 0]  # (R, K)
        last = n if steps is None else min(n, kept + steps)
        for j in range(kept, last):
            vis = logits.float()
            if guided:
                cond, unc = vis[:B], vis[B:]
                vis = unc + settings.scale(j, n) * (cond - unc)
            code = draw(vis, settings, None if noise is None else noise.step(j))  # (B,)
            out[:, j] = code
            tokens[:, cur] = (code + lo).repeat(R // B)
            cur += 1
            if j + 1 == last:
                break
            if use_cache:
                logits = model(tokens[:, cur - 1:cur], pos[:, cur - 1:cur], cache, mask(cur - 1, cur),
                               last_only=True, rows=rows)[:, 0]
            else:
                logits = model(tokens[:, :cur], pos[:, :cur], None, mask(0, cur), last_only=True, rows=rows)[:, 0]
    model.train(was)
    return out.view(B, h, w)


@torch.no_grad()
def teacher_forced(model: Transformer, vocab: Vocab, prompts: list[str], grids: torch.Tensor,
                   settings: Settings = Settings(), precision: str = "fp32") -> torch.Tensor:
    """(B, h, w) codes, each drawn as `sample` would draw it after its prompt and the true codes of `grids`
    (B, h, w) before it: the sampler's own errors on real images (RobusTok's post-training data, Qiu et al.,
    2025). One forward pass of every whole sequence; the noise comes from torch's global generator."""
    settings.check()
    device = next(model.parameters()).device
    B, (h, w) = len(prompts), grids.shape[1:]
    n = h * w
    guided = settings.guided(n)
    texts = list(prompts) + ([""] * B if guided else [])
    seqs, starts, host = [], [], grids.cpu()  # one copy to the host, not one per row
    for r, t in enumerate(texts):
        starts.append(len(check_prompt(vocab, t, h, w, model.cfg.max_seq_len)))
        seqs.append(vocab.sequence(t, host[r % B]))
    R, T = len(seqs), max(map(len, seqs))
    tokens = torch.full((R, T), vocab.pad, dtype=torch.long)
    for r, q in enumerate(seqs):  # right-padded: a causal model never looks at the pads after a row
        tokens[r, :len(q)] = torch.tensor(q)
    v0 = torch.tensor(starts)[:, None]  # each row's first visual index
    pos = positions(torch.arange(T).expand(R, T), v0, h, w, n)
    K, lo = vocab.codebook_size, vocab.visual0
    was = model.training
    model.eval()
    with autocast(device, precision):
        logits = model(tokens.to(device), pos.to(device), rows=slice(lo, lo + K))  # (R, T, K)
    model.train(was)
    at = (v0 - 1 + torch.arange(n)).to(device)  # the column whose logits predict visual token j
    vis = logits.float().gather(1, at[..., None].expand(R, n, K))  # (R, n, K)
    if guided:
        scale = torch.tensor([settings.scale(j, n) for j in range(n)], device=device)[:, None]
        vis = vis[B:] + scale * (vis[:B] - vis[B:])
    vis = vis.reshape(B * n, K)
    noise = None
    if settings.temperature > 0:  # Gumbel noise, as GumbelNoise draws it
        noise = -torch.log(-torch.log(torch.rand(vis.shape, device=device).clamp_(1e-20, 1 - 1e-7)))
    return draw(vis, settings, noise).view(B, h, w)
