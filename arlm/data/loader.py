"""Batches of (image, caption) from webdataset shards, for one process or for each rank under torchrun.

Work is split over `world_size * num_workers` readers. With at least that many shards each reader takes
whole shards (shard i to reader i mod n); with fewer, every reader walks all shards and keeps every n-th
sample, so that a small data set still feeds every rank. Images are resized (shorter side to the target)
and centre- or randomly-cropped to the configured (H, W); an image already at that size is untouched,
so synthetic pixels stay exact.

Every rank must take the same number of optimizer steps. With `repeat=True` (training) the stream never
ends, so steps are counted by the trainer. With `repeat=False` (one pass: pre-tokenizing, evaluation),
each rank asks all ranks after every batch whether they still have one, and all stop together at the
shortest; the few samples this drops are logged.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from arlm.config import DataConfig
from arlm.errors import ConfigError, UserError
from arlm.data.shards import SkipCounter, decode, expand, raw_samples
from arlm.log import log
from arlm.synth import parse_size


def resize_crop(image: Image.Image, size: tuple[int, int], rng: random.Random | None = None) -> Image.Image:
    """Scale so the image covers (H, W), then crop: centred, or at a random offset when rng is given."""
    h, w = size
    if image.size == (w, h):
        return image
    scale = max(h / image.height, w / image.width)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((rw, rh), Image.BICUBIC, reducing_gap=3.0)
    x = rng.randint(0, rw - w) if rng else (rw - w) // 2
    y = rng.randint(0, rh - h) if rng else (rh - h) // 2
    return image.crop((x, y, x + w, y + h))


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed, else from torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Samples as dicts: image (3, H, W) uint8, caption str, meta dict or None, key str."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, repeat: bool = False) -> None:
        self.cfg, self.rank, self.world_size, self.repeat = cfg, rank, world_size, repeat
        self.urls = expand(cfg.shards)
        self.size = parse_size(cfg.size)
        if cfg.crop not in ("center", "random"):
            raise ConfigError(f"data.crop must be center or random, got {cfg.crop!r}")
        self.skips = SkipCounter()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _one_pass(self, epoch: int) -> Iterator[dict]:
        reader, readers = self._reader()
        rng = random.Random(f"crop-{self.cfg.seed}-{epoch}-{reader}")  # str seeds are stable across processes
        urls = list(self.urls)
        if self.cfg.shuffle_buffer > 0:
            random.Random(f"shards-{self.cfg.seed}-{epoch}").shuffle(urls)  # same order on every reader
        by_shard = len(urls) >= readers
        raws = raw_samples(urls[reader::readers] if by_shard else urls, self.skips)
        crop_rng = rng if self.cfg.crop == "random" else None
        for i, raw in enumerate(raws):
            if not by_shard and i % readers != reader:
                continue
            s = decode(raw, self.skips)
            if s is None:
                continue
            image = np.array(resize_crop(s.image, self.size, crop_rng))  # a writable copy for torch
            yield {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "caption": s.caption,
                   "meta": s.meta, "key": s.key}

    def _shuffled(self, samples: Iterator[dict], epoch: int) -> Iterator[dict]:
        n = self.cfg.shuffle_buffer
        if n <= 0:
            yield from samples
            return
        reader, _ = self._reader()
        rng = random.Random(f"buffer-{self.cfg.seed}-{epoch}-{reader}")
        buf: list[dict] = []
        for s in samples:
            if len(buf) < n:
                buf.append(s)
                continue
            i = rng.randrange(n)
            yield buf[i]
            buf[i] = s
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        while True:
            n = 0
            for s in self._shuffled(self._one_pass(epoch), epoch):
                n += 1
                yield s
            if not self.repeat:
                return
            if n == 0:
                raise UserError(f"reader {self._reader()[0]} got no usable sample from {len(self.urls)} shard(s)")
            epoch += 1


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W) uint8: normalise on the device
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "key": [s["key"] for s in samples],
    }


class ShardLoader:
    """Iterates batches; under torch.distributed every rank yields the same number of them."""

    def __init__(self, cfg: DataConfig, repeat: bool = False, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None) -> None:
        r, w = dist_info()
        self.rank, self.world_size = (r if rank is None else rank), (w if world_size is None else world_size)
        self.dataset = ShardDataset(cfg, self.rank, self.world_size, repeat)
        self.repeat = repeat
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                 collate_fn=collate, drop_last=drop_last, persistent_workers=False)

    @property
    def skips(self) -> SkipCounter:
        return self.dataset.skips

    def __iter__(self) -> Iterator[dict]:
        joined = not self.repeat and self.world_size > 1 and dist.is_available() and dist.is_initialized()
        # NCCL reduces CUDA tensors only
        device = f"cuda:{torch.cuda.current_device()}" if joined and dist.get_backend() == "nccl" else "cpu"
        it = iter(self.loader)
        while True:
            batch = next(it, None)
            if joined:
                # all ranks stop at the shortest stream: one tiny all-reduce per batch
                flag = torch.tensor([0 if batch is None else 1], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                if flag.item() == 0:
                    left = (0 if batch is None else len(batch["key"])) + sum(len(b["key"]) for b in it)
                    if left:
                        log.info("rank %d: %d sample(s) left over after the last common batch", self.rank, left)
                    break
            elif batch is None:
                break
            yield batch
        self.skips.log_summary()
