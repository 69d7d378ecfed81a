"""A trained tokenizer in use: load it from a run, images <-> token grids, shards -> token shards.

- `load_tokenizer(RUN)`: the model of a run or checkpoint directory (its EMA weights when the run kept
  them), built from the config stored in the checkpoint.
- `tokenize`: one JSON object per image, `{"path", "h", "w", "tokens": [[row], ...]}`.
- `detokenize`: those objects back to PNG files; a caption-aware tokenizer reads each line's `caption` (or one
  given for all), another ignores it.
- `pretokenize`: image shards to token shards, LlamaGen's extract-codes step: per sample `KEY.npy` (the
  (h, w) grid as int16 when the codebook fits, else int32), `KEY.txt` (caption) and `KEY.json` (the image's
  record plus `grid` and `tokenizer`), so that training the transformer never decodes an image again. The
  output folder gets `tokens.json`: tokenizer path, codebook size, stride, grid, sample count. Under
  torchrun the ranks share the encoding and rank 0 merges: the same shards as one process.

Bad inputs (an unreadable image, a line that is not a token grid, ids out of range) are reported one line
each on stderr and skipped; the caller exits non-zero at the end if any failed.
"""

from __future__ import annotations

import heapq
import io
import json
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from arlm import checkpoint, parallel
from arlm.config import DataConfig, TrainTokenizerConfig
from arlm.data.loader import resize_crop
from arlm.data.shards import (REASONS, BadImage, ShardWriter, SkipCounter, decode, expand, new_shard_set,
                               open_image, prepare_out_dir, raw_samples, safe_key)
from arlm.device import autocast, resolve_device
from arlm.errors import UserError
from arlm.log import log, progress
from arlm.perf import resolve_precision
from arlm.synth import parse_size
from arlm.tokenizer.caption import utf8
from arlm.tokenizer.model import Tokenizer, from_unit, to_unit

KIND = "tokenizer"
PARTS = ".parts"  # in the output folder: each reader's encoded samples, until rank 0 merges them


@dataclass
class Loaded:
    model: Tokenizer
    ckpt: Path
    device: torch.device
    precision: str

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> token ids (B, H/f, W/f) on the CPU."""
        with autocast(self.device, self.precision):
            return self.model.encode(to_unit(images.to(self.device))).cpu()

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """One RGB picture -> its token ids (H/f, W/f) on the CPU."""
        return self.encode(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None])[0]

    @property
    def reads_captions(self) -> bool:
        return self.model.cfg.caption != "none"

    def decode(self, tokens: torch.Tensor, captions: Sequence[str | None] | None = None) -> torch.Tensor:
        """token ids (B, h, w) -> uint8 (B, 3, h*f, w*f) on the CPU; `captions` (one per grid, None: the null
        caption) are read by a caption-aware tokenizer and ignored by another."""
        with autocast(self.device, self.precision):
            return from_unit(self.model.decode(tokens.to(self.device), captions)).cpu()


def load_tokenizer(path: str | Path, device: str = "auto", precision: str = "fp32", ema: bool = True) -> Loaded:
    ckpt = checkpoint.resolve(path, KIND)
    cfg = checkpoint.load_config(ckpt, TrainTokenizerConfig)
    dev = resolve_device(device)
    model = Tokenizer(cfg.tokenizer)
    checkpoint.load_into(model, checkpoint.load_reader_weights(ckpt, ema), ckpt)
    model.to(dev).eval()
    return Loaded(model, ckpt, dev, resolve_precision(precision, dev))


def _safe_stem(path: str) -> str:
    """A file-name-safe stem: no directories, no dots, nothing but [A-Za-z0-9_-]."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:60].strip("_")
    return stem or "image"


def read_image(path: str, size: tuple[int, int] | None) -> Image.Image:
    try:
        image, _ = open_image(path)
    except BadImage as e:
        raise UserError(f"{path}: cannot read image: {e}") from None
    return resize_crop(image, size) if size else image


def tokenize(tok: Loaded, paths: Iterable[str], size: str | None = None) -> Iterator[dict | UserError]:
    """Per image path: {"path", "h", "w", "tokens"}, or the UserError that stopped it."""
    target = parse_size(size) if size else None
    for path in paths:
        try:
            image = read_image(path, target)
            h, w = image.height, image.width
            if h % tok.model.stride or w % tok.model.stride:
                raise UserError(f"{path}: size {h}x{w} is not a multiple of the tokenizer's stride "
                                f"{tok.model.stride} (pass --size)")
            tokens = tok.encode_image(image)
            yield {"path": path, "h": h, "w": w, "tokens": tokens.tolist()}
        except UserError as e:
            yield e


def parse_grid(line: str, codebook_size: int) -> torch.Tensor:
    """One tokenize line (or any JSON object with `tokens` as rows) -> (h, w) int64; UserError when invalid."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON ({e.msg})") from None
    rows = obj.get("tokens") if isinstance(obj, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
        raise UserError("no 'tokens' grid (a list of rows of ids)")
    if len({len(r) for r in rows}) != 1 or not all(isinstance(t, int) and not isinstance(t, bool) for r in rows for t in r):
        raise UserError("'tokens' must be rows of integers of one length")
    grid = torch.tensor(rows, dtype=torch.int64)
    bad = (grid < 0) | (grid >= codebook_size)
    if bad.any():
        raise UserError(f"token id {int(grid[bad][0])} out of range [0, {codebook_size - 1}]")
    return grid


def line_caption(obj: dict, caption: str | None, max_len: int | None) -> str | None:
    """The caption to decode a line (`obj`, its JSON object) with: `caption` when given, else the line's `caption`
    field (a string), else None; a UserError for one that is not text, has no UTF-8 form or is longer than
    `max_len` bytes (None: any)."""
    if caption is None:
        caption = obj.get("caption")
    if caption is None:
        return None
    size = len(utf8(caption))
    if max_len is not None and size > max_len:
        raise UserError(f"the caption has {size} bytes; this tokenizer reads at most {max_len} "
                        f"(tokenizer.caption_len)")
    return caption


def detokenize(tok: Loaded, lines: Iterable[str], out_dir: str | Path, caption: str | None = None
               ) -> Iterator[Path | UserError]:
    """Per input line: the PNG written, or the UserError that stopped it. Files are numbered in input
    order; the stem of a line's `path` (sanitised) is appended when present. A caption-aware tokenizer draws
    each grid with `caption`, else with the line's `caption` field, else with the null caption."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_len = tok.model.cfg.caption_len if tok.reads_captions else None
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            grid = parse_grid(line, tok.model.codebook_size)
            obj = json.loads(line)  # a JSON object: parse_grid has checked it
            image = tok.decode(grid.unsqueeze(0), [line_caption(obj, caption, max_len)])[0].permute(1, 2, 0).numpy()
            src = obj.get("path")
            name = f"{n:06d}" + (f"-{_safe_stem(src)}" if isinstance(src, str) and src else "") + ".png"
            path = out / name
            Image.fromarray(image).save(path)
            yield path
        except UserError as e:
            yield UserError(f"line {n + 1}: {e}")


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16) if codebook_size <= 2**15 else np.dtype(np.int32)


class _Share(IterableDataset):
    """This rank's part of one in-order pass over `urls`: decoded samples (resized and centre-cropped), each
    tagged with its place in the global order, (input shard, raw position in it), and the reader it came from.

    The pass is split over world * num_workers readers as ShardLoader splits it: whole shards (shard i to
    reader i mod n) when there are at least as many shards as readers, else every n-th raw sample of the
    whole stream. Either way each reader's samples come in global order, so the readers' streams merge into
    exactly the order of one process reading alone: fewer shards than ranks needs no error."""

    def __init__(self, urls: list[str], size: tuple[int, int], rank: int, world: int) -> None:
        self.urls, self.size, self.rank, self.world = urls, size, rank, world
        self.skips = SkipCounter()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        readers, reader = self.world * workers, self.rank * workers + worker
        whole = len(self.urls) >= readers
        # shared shards are walked by every reader: a broken shard is counted by reader 0 alone
        shard_skips = self.skips if whole or reader == 0 else SkipCounter()
        g = -1  # raw samples of the whole stream so far
        for i, url in enumerate(self.urls):
            if whole and i % readers != reader:
                continue
            for j, raw in enumerate(raw_samples([url], shard_skips)):
                g += 1
                if not whole and g % readers != reader:
                    continue
                s = decode(raw, self.skips)
                if s is None:
                    continue
                image = np.array(resize_crop(s.image, self.size))  # a writable copy for torch
                yield {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "caption": s.caption,
                       "meta": s.meta, "key": s.key, "at": f"{i:09d}_{j:09d}", "reader": reader}


def _collate(samples: list[dict]) -> dict:
    return {"image": torch.stack([s.pop("image") for s in samples]), "rest": samples}  # (B, 3, H, W) uint8


def pretokenize(tok: Loaded, data: DataConfig, out_dir: str | Path, shard_size: int = 1000,
                overwrite: bool = False) -> dict:
    """Encode every sample of `data` (resized and centre-cropped to data.size) into token shards in `out_dir`,
    in shard order (data.shuffle_buffer and data.crop do not apply).

    Under torchrun each rank encodes its share (see _Share) into a part file per reader in `OUT/.parts/`;
    rank 0 then merges the parts in global order into the shards and `tokens.json`, so that any number of
    ranks and workers writes the bytes of one process. Each image is encoded in a batch of its rank's
    samples: identical codes require the tokenizer's encoding of an image not to depend on its batch
    (measured so on the CPU in fp32: tests/test_ranks.py)."""
    h, w = parse_size(data.size)
    grid = tok.model.grid(h, w) if not (h % tok.model.stride or w % tok.model.stride) else None
    if grid is None:
        raise UserError(f"data.size {data.size} is not a multiple of the tokenizer's stride {tok.model.stride}")
    urls = expand(data.shards)
    with parallel.launched(tok.device, writes=out_dir) as (rank, world, device):
        if device != tok.device:  # one device per local rank
            tok = Loaded(tok.model.to(device), tok.ckpt, device, tok.precision)
        return _pretokenize(tok, urls, (h, w), grid, data, Path(out_dir), shard_size, overwrite, rank, world)


def _pretokenize(tok: Loaded, urls: list[str], size: tuple[int, int], grid: tuple[int, int], data: DataConfig,
                 out: Path, shard_size: int, overwrite: bool, rank: int, world: int) -> dict:
    parts = out / PARTS
    if rank == 0:
        if shard_size < 1:
            raise UserError(f"shard size must be >= 1, got {shard_size}")
        prepare_out_dir(out, overwrite=overwrite)  # refuse an old set now, before the encoding
        shutil.rmtree(parts, ignore_errors=True)  # left by a killed run
        parts.mkdir(parents=True)
    parallel.barrier()
    share = _Share(urls, size, rank, world)
    loader = DataLoader(share, batch_size=data.batch_size, num_workers=data.num_workers, collate_fn=_collate)
    dtype = token_dtype(tok.model.codebook_size)
    writers: dict[int, ShardWriter] = {}  # reader -> its part: samples in global order
    try:
        _encode(tok, loader, grid, dtype, parts, writers)
    except BaseException:  # a full disk, a bad input: this rank's partial parts go (a killed run's: at the next start)
        for writer in writers.values():
            writer.abort()
        if world == 1:
            shutil.rmtree(parts, ignore_errors=True)
        raise
    share.skips.log_summary()
    counts = parallel.all_gather_object(share.skips.as_dict())  # after every rank's parts are complete
    info = None
    if rank == 0:
        skipped = {r: sum(c.get(r, 0) for c in counts) for r in REASONS}
        try:
            with new_shard_set(out, shard_size, overwrite=overwrite) as writer:
                # a k-way merge of the readers' ordered parts: one sample of each in memory
                streams = [raw_samples([str(p)], SkipCounter()) for p in sorted(parts.glob("reader-*.tar"))]
                for raw in heapq.merge(*streams, key=lambda r: r["__key__"]):
                    writer.write(raw["key"].decode(), {"npy": raw["npy"], "txt": raw["txt"], "json": raw["json"]})
        finally:
            shutil.rmtree(parts, ignore_errors=True)
        info = {"tokenizer": checkpoint.record_path(tok.ckpt, out), "codebook_size": tok.model.codebook_size,
                "stride": tok.model.stride,
                "grid": list(grid), "size": list(size), "samples": writer.total,
                "shards": [str(p) for p in writer.written], "skipped": {r: c for r, c in skipped.items() if c}}
        (out / "tokens.json").write_text(json.dumps(info, indent=1))
        log.info("wrote %d samples in %d token shard(s) to %s", writer.total, len(writer.written), out)
    return parallel.all_gather_object(info)[0]  # every rank returns rank 0's report


def _encode(tok: Loaded, loader: DataLoader, grid: tuple[int, int], dtype, parts: Path,
            writers: dict[int, ShardWriter]) -> None:
    """Each sample's codes into its reader's part (`writers`, filled here), in the order the reader gives."""
    n = 0
    recorded = checkpoint.record_path(tok.ckpt, parts.parent)  # as tokens.json records it, beside the shards
    with progress() as bar:
        task = bar.add_task("pretokenize", total=None, info="")
        for batch in loader:
            tokens = tok.encode(batch["image"]).numpy().astype(dtype)  # (B, h, w)
            for s, codes in zip(batch["rest"], tokens):
                buf = io.BytesIO()
                np.save(buf, codes)
                record = {**(s["meta"] or {}), "grid": list(grid), "tokenizer": recorded}
                if s["reader"] not in writers:
                    writers[s["reader"]] = ShardWriter(parts, 1 << 62, f"reader-{s['reader']:04d}")
                writers[s["reader"]].write(s["at"], {"key": safe_key(s["key"]).encode(), "npy": buf.getvalue(),
                                                     "txt": s["caption"].encode(), "json": json.dumps(record).encode()})
            n += len(tokens)
            bar.update(task, completed=n, info=f"{n} samples")
    for writer in writers.values():
        writer.close()
