"""Token data for the transformer stages: `arimg pretokenize` shards to batches of whole sequences.

memory mode (default): every sample is read once into three contiguous tensors on the training device,
captions (N, L) text ids, their lengths (N,) and visual codes (N, h*w), and each step gathers its batch there
by index (`Vocab.build`): no per-sample Python and no host-to-device copy in the hot loop. The batch of
step s is a pure function of (seed, s): a permutation per epoch, the step's slice of it, a caption-dropout
draw per step; with `data.kind_weights`, a draw with replacement per step in which a sample of kind k is
drawn weight[k] times as often as one of weight 1 (harder kinds get more of the steps). So resuming needs nothing but the step, and under torchrun rank r takes its own contiguous
part of the same global batch: N processes see exactly the samples one process would, the basis of the
1-process vs N-process loss parity test.

stream mode, for sets too large for memory: each rank reads its own shards (rank r of W takes every W-th
shard of the epoch's shuffled order) through a shuffle buffer; the position is again a function of the step.

Samples whose caption, tokens or record cannot be used are skipped and counted (arlm.data.shards), as are
those a filter (`data.kinds`, `data.caption_regex`, for SFT) leaves out.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arlm import checkpoint
from arlm.config import TokenDataConfig
from arlm.data.shards import SkipCounter, expand, raw_samples
from arlm.errors import ConfigError, UserError
from arlm.transformer.sequence import LayoutError, Vocab, top_words

MAX_TEXT = 1024  # bytes of a caption kept in memory; longer ones are refused by the context check anyway
WORD_SCAN = 20_000  # captions counted for a word list
PREFS_FILE = "prefs.json"  # beside preference shards (make-prefs writes, dpo reads): the pairs' vocabulary


def _seed(*parts) -> int:
    """A seed from its parts, the same in every process (Python's hash() of a str is salted per process)."""
    return zlib.crc32("-".join(map(str, parts)).encode())


@dataclass
class TokenInfo:
    """tokens.json, which `arimg pretokenize` writes beside its shards."""

    codebook_size: int
    tokenizer: str
    grid: tuple[int, int]


def token_info(shards: str) -> TokenInfo:
    urls = expand(shards)
    path = Path(urls[0]).parent / "tokens.json"
    try:
        raw = json.loads(path.read_text())
        tokenizer = checkpoint.resolve_recorded(str(raw["tokenizer"]), path.parent) or raw["tokenizer"]
        return TokenInfo(int(raw["codebook_size"]), str(tokenizer), tuple(raw["grid"]))
    except FileNotFoundError:
        raise UserError(f"no tokens.json beside {urls[0]}: token shards come from `arimg pretokenize`") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None


def _keep(cfg: TokenDataConfig) -> callable:
    pattern = re.compile(cfg.caption_regex) if cfg.caption_regex else None
    kinds = set(cfg.kinds) if cfg.kinds else None

    def keep(caption: str, record: dict | None) -> bool:
        if kinds is not None and (record or {}).get("kind") not in kinds:
            return False
        return pattern is None or bool(pattern.search(caption))

    return keep


def samples(urls: list[str], cfg: TokenDataConfig, info: TokenInfo, skips: SkipCounter,
            raws: Iterator[dict] | None = None) -> Iterator[tuple[bytes, np.ndarray, str | None]]:
    """(caption bytes, (h, w) codes, the record's kind or None) of each usable sample that passes the filter."""
    keep = _keep(cfg)
    for raw in raws if raws is not None else raw_samples(urls, skips):
        where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
        if "npy" not in raw:
            skips.add("no tokens", where)
            continue
        text = raw.get("txt", b"").strip()
        try:
            caption = text.decode("utf-8")
        except UnicodeDecodeError:
            caption = ""
        if not caption:
            skips.add("no caption", where)
            continue
        try:
            codes = np.load(io.BytesIO(raw["npy"]), allow_pickle=False)
            record = json.loads(raw["json"]) if "json" in raw else None
        except ValueError:
            skips.add("corrupt tokens", where)
            continue
        if codes.dtype.kind not in "iu" or codes.shape != tuple(info.grid) or codes.min() < 0 \
                or codes.max() >= info.codebook_size:
            skips.add("corrupt tokens", where)
            continue
        if not keep(caption, record):
            skips.add("filtered out", where)
            continue
        yield text[:MAX_TEXT], codes, (record or {}).get("kind")


def pad_text(ids: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids right-padded to (N, width) int32, and their lengths (N,)."""
    text = np.zeros((len(ids), width), dtype=np.int32)
    for i, t in enumerate(ids):
        text[i, :len(t)] = t
    return torch.from_numpy(text), torch.tensor([len(t) for t in ids])


def caption_words(cfg: TokenDataConfig, info: TokenInfo) -> tuple[str, ...]:
    """The word list of a new vocabulary (`data.words` pieces, arlm.transformer.sequence): counted over the
    first WORD_SCAN usable captions of the data, in shard order, so every process finds the same list."""
    if cfg.words <= 0:
        return ()
    skips = SkipCounter()
    captions = (t.decode("utf-8") for t, _, _ in samples(expand(cfg.shards), cfg, info, skips))
    return top_words(itertools.islice(captions, WORD_SCAN), cfg.words)


def check_fits(vocab: Vocab, grid: tuple[int, int], text_len: int, max_seq_len: int) -> int:
    """The batch sequence length for captions up to `text_len` text ids; LayoutError when it cannot fit."""
    try:
        vocab.check_grid(*grid)
    except ValueError as e:
        raise LayoutError(f"token grid {grid[0]}x{grid[1]} does not fit the model: {e}") from None
    need = vocab.seq_len(text_len, *grid)
    if need > max_seq_len:
        raise LayoutError(f"sequences of this data set need {need} tokens ({grid[0]}x{grid[1]} grid, captions up to "
                          f"{text_len} text tokens) but model.max_seq_len is {max_seq_len}")
    return need


def weighted(cfg: TokenDataConfig) -> bool:
    """Whether data.kind_weights changes the draw (any weight other than 1)."""
    return any(w != 1 for w in cfg.kind_weights.values())


def _kind_weights(kinds: list[str | None], weights: dict[str, float]) -> torch.Tensor:
    """(N,) each sample's drawing weight: its kind's (1 for another kind, or a sample without a record)."""
    if any(not w >= 0 for w in weights.values()) or not any(weights.get(k, 1.0) > 0 for k in kinds):
        raise ConfigError(f"data.kind_weights must be at least 0 and leave some sample drawn, got {dict(weights)}")
    return torch.tensor([float(weights.get(k, 1.0)) for k in kinds], dtype=torch.float64)


class Batches:
    """Micro-batches (tokens, positions, region) of this rank for a step; see the module docstring."""

    def __init__(self, cfg: TokenDataConfig, vocab: Vocab, info: TokenInfo, max_seq_len: int, device: torch.device,
                 rank: int = 0, world: int = 1, accum: int = 1) -> None:
        if cfg.mode not in ("memory", "stream"):
            raise ConfigError(f"data.mode must be memory or stream, got {cfg.mode!r}")
        if cfg.batch_size % (world * accum):
            raise ConfigError(f"data.batch_size {cfg.batch_size} is not a multiple of processes x trainer.grad_accum "
                              f"= {world} x {accum}")
        if weighted(cfg) and cfg.mode != "memory":
            raise ConfigError("data.kind_weights draws from the whole set: it needs data.mode=memory")
        if not 0 <= cfg.caption_dropout <= 1:
            raise ConfigError(f"data.caption_dropout must lie in [0, 1], got {cfg.caption_dropout}")
        self.cfg, self.vocab, self.info, self.device = cfg, vocab, info, device
        self.rank, self.world, self.accum = rank, world, accum
        self.local = cfg.batch_size // world
        self.grid = tuple(info.grid)
        self.urls = expand(cfg.shards)
        self.skips = SkipCounter()
        self.weights: torch.Tensor | None = None  # per-sample draw weights when data.kind_weights asks for them
        if cfg.mode == "memory":
            self._load()
            self.seq_len = check_fits(vocab, self.grid, self.text_len, max_seq_len)
        else:
            # the longest caption is unknown until read: allow what the context leaves
            self.text_len = max_seq_len - vocab.seq_len(0, *self.grid)
            self.seq_len = check_fits(vocab, self.grid, max(self.text_len, 0), max_seq_len)
            self._stream: Iterator | None = None
            self._stream_step = -1
        self._perm: tuple[int, torch.Tensor] | None = None

    def _load(self) -> None:
        texts, codes, kinds = [], [], []
        for text, grid, kind in samples(self.urls, self.cfg, self.info, self.skips):
            texts.append(text)
            codes.append(grid.reshape(-1))
            kinds.append(kind)
        self.skips.log_summary()
        if len(texts) < self.cfg.batch_size:
            raise UserError(f"{len(texts)} usable samples in {self.cfg.shards}, fewer than data.batch_size "
                            f"{self.cfg.batch_size}")
        self.n = len(texts)
        ids = [self._encode(t) for t in texts]
        self.text_len = max(len(t) for t in ids)
        self.text, self.lengths = (t.to(self.device) for t in pad_text(ids, self.text_len))  # (N, L), (N,)
        self.codes = torch.from_numpy(np.stack(codes)).to(self.device)  # (N, h*w), int16
        self.steps_per_epoch = self.n // self.cfg.batch_size
        self.kinds = kinds
        self.weights = _kind_weights(kinds, self.cfg.kind_weights) if weighted(self.cfg) else None

    # --- what every mode shares -------------------------------------------------------------------------
    def _encode(self, caption: bytes) -> list[int]:
        # bytes as they are; for word pieces, text (a caption cut at MAX_TEXT may end inside a character)
        return self.vocab.encode_text(caption.decode("utf-8", errors="replace")) if self.vocab.words else list(caption)

    def _dropout(self, step: int) -> torch.Tensor:
        """(local,) True where this rank's captions are dropped at `step`: one draw for the global batch."""
        g = torch.Generator().manual_seed(_seed("dropout", self.cfg.seed, step))
        drop = torch.rand(self.cfg.batch_size, generator=g) < self.cfg.caption_dropout
        return drop[self.rank * self.local:(self.rank + 1) * self.local].to(self.device)

    def _micro(self, text, lengths, codes, step) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        lengths = torch.where(self._dropout(step), 0, lengths)
        tokens, pos, region = self.vocab.build(text, lengths, codes, *self.grid, self.seq_len)
        m = self.local // self.accum
        return [(tokens[i:i + m], pos[i:i + m], region[i:i + m]) for i in range(0, self.local, m)]

    def batch(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of global step `step` (steps are drawn in order in stream mode)."""
        if self.cfg.mode == "stream":
            return self._stream_batch(step)
        idx = self._indices(step)
        return self._micro(self.text[idx], self.lengths[idx], self.codes[idx], step)

    def _indices(self, step: int) -> torch.Tensor:
        """(local,) memory mode: the samples of this rank's part of global step `step`."""
        if self.weights is not None:  # a draw of the global batch per step, the same in every process
            g = torch.Generator().manual_seed(_seed("weighted", self.cfg.seed, step))
            drawn = torch.multinomial(self.weights, self.cfg.batch_size, replacement=True, generator=g)
            return drawn[self.rank * self.local:(self.rank + 1) * self.local].to(self.device)
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_seed("epoch", self.cfg.seed, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g).to(self.device))
        start = k * self.cfg.batch_size + self.rank * self.local
        return self._perm[1][start:start + self.local]

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one global step (pads included: they cost compute too)."""
        return self.cfg.batch_size * self.seq_len

    # --- stream mode ----------------------------------------------------------------------------------
    def _stream_samples(self) -> Iterator[tuple[bytes, np.ndarray]]:
        epoch = 0
        while True:
            urls = list(self.urls)
            random.Random(f"token-shards-{self.cfg.seed}-{epoch}").shuffle(urls)
            if len(urls) >= self.world:
                raws = raw_samples(urls[self.rank::self.world], self.skips)
            else:
                raws = (r for i, r in enumerate(raw_samples(urls, self.skips)) if i % self.world == self.rank)
            rng, buf, got = random.Random(f"token-buffer-{self.cfg.seed}-{epoch}-{self.rank}"), [], 0
            for s in samples([], self.cfg, self.info, self.skips, raws):
                got += 1
                if len(buf) < max(1, self.cfg.shuffle_buffer):
                    buf.append(s)
                    continue
                i = rng.randrange(len(buf))
                yield buf[i]
                buf[i] = s
            rng.shuffle(buf)
            yield from buf
            if got == 0:
                raise UserError(f"no usable samples for rank {self.rank} in {self.cfg.shards}")
            epoch += 1

    def _stream_batch(self, step: int):
        if self._stream is None or step != self._stream_step + 1:  # a fresh or resumed run: skip what was used
            self._stream = self._stream_samples()
            for _ in range(step * self.local):
                next(self._stream)
        self._stream_step = step
        rows = [next(self._stream) for _ in range(self.local)]
        ids = [self._encode(t) for t, _, _ in rows]
        if max(map(len, ids)) > self.text_len:
            raise LayoutError(f"a caption of {max(map(len, ids))} text tokens does not fit model.max_seq_len")
        text, lengths = pad_text(ids, self.text_len)
        codes = torch.from_numpy(np.stack([c.reshape(-1) for _, c, _ in rows]))
        return self._micro(text.to(self.device), lengths.to(self.device), codes.to(self.device), step)
