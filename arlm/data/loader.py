"""Batches of (image, caption) from webdataset shards, for one process or for each rank under torchrun.

Work is split over `world_size * num_workers` readers. With at least that many shards each reader takes
whole shards (shard i to reader i mod n); with fewer, every reader walks all shards and keeps every n-th
sample, so that a small data set still feeds every rank. Images are resized (shorter side to the target)
and centre- or randomly-cropped to the configured (H, W); an image already at that size is untouched,
so synthetic pixels stay exact. `crop_size` then takes a smaller window at that resolution (training a
convolutional tokenizer on patches: more, cheaper steps from the same pixels).

With `split=True` (training with data.batch_size the global batch) every rank reads the one stream that a
single process reads and keeps its own contiguous part of each global batch: rank r the samples r*B/n ..
(r+1)*B/n - 1 of every B, the others read but not decoded. n processes then train on exactly the batches
of one process (on a clean data set; a corrupt sample shifts only its own rank's part).

Every rank must take the same number of optimizer steps. With `repeat=True` (training) the stream never
ends, so steps are counted by the trainer. With `repeat=False` (one pass: pre-tokenizing, evaluation),
each rank asks all ranks after every batch whether they still have one, and all stop together at the
shortest; the few samples this drops are logged.

Resume: `ShardLoader.state_dict()` records, per reader (per rank and reader when split), how many raw
samples lie behind the batches handed out; `load_state_dict` makes a new loader skip them (read, not
decoded) and go on with exactly the batches the interrupted run would have seen next: shuffling is seeded per (seed, epoch, reader), shuffles raw
samples before decoding, and random crops are seeded per sample.
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


BUSY_TRIES = 4  # data.crop=busy: windows drawn per sample, the busiest kept
SLIVER = 16  # resize_crop resizes only the window of an image this many times the target's area once scaled


def resize_crop(image: Image.Image, size: tuple[int, int], rng: random.Random | None = None) -> Image.Image:
    """Scale so the image covers (H, W), then crop: centred, or at a random offset when rng is given."""
    h, w = size
    if image.size == (w, h):
        return image
    scale = max(h / image.height, w / image.width)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    x = rng.randint(0, rw - w) if rng else (rw - w) // 2
    y = rng.randint(0, rh - h) if rng else (rh - h) // 2
    if rw * rh > SLIVER * w * h:  # a 1 x 80,000 sliver would be resized to gigabytes: resize the window only
        return image.resize((w, h), Image.BICUBIC, box=(x / scale, y / scale, (x + w) / scale, (y + h) / scale))
    image = image.resize((rw, rh), Image.BICUBIC, reducing_gap=3.0)
    return image.crop((x, y, x + w, y + h))


def crop(image: Image.Image, size: tuple[int, int], rng: random.Random | None = None, tries: int = 1) -> Image.Image:
    """A (H, W) window of an image at least that large: centred, or at a random offset when rng is given.

    With `tries` > 1, the busiest of that many random windows (largest pixel variance): on images that are
    mostly flat background, a window then more often holds a stroke or an edge to learn from.
    """
    h, w = size
    if rng is None:
        x, y = (image.width - w) // 2, (image.height - h) // 2
        return image.crop((x, y, x + w, y + h))
    offsets = [(rng.randint(0, image.width - w), rng.randint(0, image.height - h)) for _ in range(tries)]
    if tries > 1:
        pixels = np.asarray(image, dtype=np.float32)
        offsets.sort(key=lambda o: -float(pixels[o[1] : o[1] + h, o[0] : o[0] + w].var()))  # stable: ties keep order
    x, y = offsets[0]
    return image.crop((x, y, x + w, y + h))


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed, else from torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Samples as dicts: image (3, H, W) uint8, caption str, meta dict or None, key str."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, repeat: bool = False,
                 split: bool = False) -> None:
        self.cfg, self.rank, self.world_size, self.repeat, self.split = cfg, rank, world_size, repeat, split
        if split and cfg.batch_size % world_size:
            raise ConfigError(f"data.batch_size {cfg.batch_size} is the global batch and must be a multiple of the "
                              f"{world_size} processes: change data.batch_size or --nproc-per-node")
        self.local = cfg.batch_size // world_size if split else cfg.batch_size
        self.urls = expand(cfg.shards)
        self.size = parse_size(cfg.size)
        self.crop_size = parse_size(cfg.crop_size) if cfg.crop_size else None
        if self.crop_size and (self.crop_size[0] > self.size[0] or self.crop_size[1] > self.size[1]):
            raise ConfigError(f"data.crop_size {cfg.crop_size} is larger than data.size {cfg.size}")
        if cfg.crop not in ("center", "random", "busy"):
            raise ConfigError(f"data.crop must be center, random or busy, got {cfg.crop!r}")
        self.skips = SkipCounter()
        self.epoch = 0
        self.skip: dict[int, int] = {}  # reader -> raw samples already consumed (set on resume)
        self.rotate = 0  # worker w reads as reader w + rotate (set on resume: see ShardLoader.load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int, int]:
        """(reader, readers, slot): the stream this worker reads, how many streams there are, and the key of
        its position in the resume state. Split, the ranks read the same streams, so the slot names the rank."""
        info = get_worker_info()
        workers, worker = (info.num_workers, (info.id + self.rotate) % info.num_workers) if info else (1, 0)
        slot = self.rank * workers + worker
        return (worker, workers, slot) if self.split else (slot, self.world_size * workers, slot)

    def _mine(self, pos: int) -> bool:
        """Split: whether the stream's sample at 1-based position `pos` lies in this rank's part of its batch."""
        return not self.split or (pos - 1) % self.cfg.batch_size // self.local == self.rank

    def _raw_pass(self, epoch: int, reader: int, readers: int) -> Iterator[dict]:
        """This reader's undecoded samples of one epoch, shuffled: decoding comes after, so a resumed run
        can skip what it has already consumed without decoding it."""
        urls = list(self.urls)
        if self.cfg.shuffle_buffer > 0:
            random.Random(f"shards-{self.cfg.seed}-{epoch}").shuffle(urls)  # same order on every reader
        if len(urls) >= readers:
            raws = raw_samples(urls[reader::readers], self.skips)
        else:
            raws = (r for i, r in enumerate(raw_samples(urls, self.skips)) if i % readers == reader)
        return self._shuffled(raws, random.Random(f"buffer-{self.cfg.seed}-{epoch}-{reader}"))

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        n = self.cfg.shuffle_buffer
        if n <= 0:
            yield from samples
            return
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
        reader, readers, slot = self._reader()
        skip, pos, epoch = self.skip.get(slot, 0), 0, self.epoch
        while True:
            yielded = skipped = others = mine = 0
            for raw in self._raw_pass(epoch, reader, readers):
                pos += 1  # this reader's raw samples so far, over epochs: the resume position
                if pos <= skip:
                    skipped += 1
                    continue
                if not self._mine(pos):  # another rank's part of the global batch
                    others += 1
                    continue
                mine += 1
                s = decode(raw, self.skips)
                if s is None:
                    continue
                # str seeds are stable across processes; one per sample, so skipping keeps the crops
                crop_rng = random.Random(f"crop-{self.cfg.seed}-{reader}-{pos}") if self.cfg.crop != "center" else None
                image = resize_crop(s.image, self.size, crop_rng)
                if self.crop_size:
                    image = crop(image, self.crop_size, crop_rng, tries=BUSY_TRIES if self.cfg.crop == "busy" else 1)
                image = np.array(image)  # a writable copy for torch
                yielded += 1
                yield {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "caption": s.caption,
                       "meta": s.meta, "key": s.key, "pos": (slot, pos)}
            if not self.repeat:
                return
            # split, a short pass may hold other ranks' samples only: that is no error
            if yielded == 0 and skipped == 0 and (mine or not others):
                raise UserError(f"reader {reader} got no usable sample from {len(self.urls)} shard(s)")
            epoch += 1


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W) uint8: normalise on the device
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "key": [s["key"] for s in samples],
        "pos": [s["pos"] for s in samples],
    }


class ShardLoader:
    """Iterates batches; under torch.distributed every rank yields the same number of them."""

    def __init__(self, cfg: DataConfig, repeat: bool = False, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None, split: bool = False) -> None:
        r, w = dist_info()
        self.rank, self.world_size = (r if rank is None else rank), (w if world_size is None else world_size)
        self.dataset = ShardDataset(cfg, self.rank, self.world_size, repeat, split)
        self.repeat = repeat
        # its own generator: a DataLoader draws a base seed from the global RNG each time an iterator starts,
        # which would shift a training run's random stream on resume
        self.loader = DataLoader(self.dataset, batch_size=self.dataset.local, num_workers=cfg.num_workers,
                                 collate_fn=collate, drop_last=drop_last, persistent_workers=False,
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self.positions: dict[int, int] = {}  # slot -> raw samples behind the batches handed out so far
        self.batches = 0

    @property
    def skips(self) -> SkipCounter:
        return self.dataset.skips

    def state_dict(self) -> dict:
        """Where the stream stands after the last batch handed out (prefetched batches do not count):
        plain ints, so it goes into a checkpoint that loads with torch.load(weights_only=True)."""
        return {"epoch": self.dataset.epoch, "num_workers": self.loader.num_workers, "world_size": self.world_size,
                "batches": self.batches, "positions": sorted([r, p] for r, p in self.positions.items())}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batches of `state`: the next batch is the one an uninterrupted run gets."""
        if (state["num_workers"], state["world_size"]) != (self.loader.num_workers, self.world_size):
            raise ConfigError(f"cannot resume a data stream read by {state['world_size']} rank(s) x "
                              f"{state['num_workers']} worker(s) with {self.world_size} x {self.loader.num_workers}")
        self.dataset.epoch = state["epoch"]
        workers = max(1, self.loader.num_workers)
        mine = range(self.rank * workers, (self.rank + 1) * workers)  # a merged state holds every rank's slots
        self.positions = {int(r): int(p) for r, p in state["positions"] if int(r) in mine}
        self.dataset.skip = dict(self.positions)
        self.batches = int(state["batches"])
        # DataLoader takes batches from its workers in turn, starting with worker 0; the next batch of the
        # interrupted run was due from worker (batches mod workers), so the workers take their roles rotated
        self.dataset.rotate = self.batches % max(1, self.loader.num_workers)

    @staticmethod
    def merge_states(states: list[dict]) -> dict:
        """One state for the loaders of all ranks (their `state_dict()`s in rank order): each rank's
        `load_state_dict` takes its own positions from it."""
        first = states[0]
        for st in states[1:]:
            if (st["epoch"], st["batches"]) != (first["epoch"], first["batches"]):
                raise ValueError(f"the ranks' data streams disagree: {st} vs {first}")
        return {**first, "positions": sorted(rp for st in states for rp in st["positions"])}

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
            for reader, pos in batch["pos"]:
                self.positions[reader] = max(pos, self.positions.get(reader, 0))
            self.batches += 1
            yield batch
        self.skips.log_summary()
