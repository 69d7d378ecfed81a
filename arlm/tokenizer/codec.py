"""A trained tokenizer in use: load it from a run, images <-> token grids, shards -> token shards.

- `load_tokenizer(RUN)`: the model of a run or checkpoint directory (its EMA weights when the run kept
  them), built from the config stored in the checkpoint.
- `tokenize`: one JSON object per image, `{"path", "h", "w", "tokens": [[row], ...]}`.
- `detokenize`: those objects back to PNG files.
- `pretokenize`: image shards to token shards, LlamaGen's extract-codes step: per sample `KEY.npy` (the
  (h, w) grid as int16 when the codebook fits, else int32), `KEY.txt` (caption) and `KEY.json` (the image's
  record plus `grid` and `tokenizer`), so that training the transformer never decodes an image again. The
  output folder gets `tokens.json`: tokenizer path, codebook size, stride, grid, sample count.

Bad inputs (an unreadable image, a line that is not a token grid, ids out of range) are reported one line
each on stderr and skipped; the caller exits non-zero at the end if any failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arlm import checkpoint, lock
from arlm.config import DataConfig, TrainTokenizerConfig
from arlm.data.loader import ShardLoader, resize_crop
from arlm.data.shards import BadImage, new_shard_set, open_image, safe_key
from arlm.errors import UserError
from arlm.log import log, progress
from arlm.synth import parse_size
from arlm.tokenizer.model import Tokenizer, from_unit, to_unit
from arlm.training import autocast, resolve_device
from arlm.perf import resolve_precision

KIND = "tokenizer"


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

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (B, h, w) -> uint8 (B, 3, h*f, w*f) on the CPU."""
        with autocast(self.device, self.precision):
            return from_unit(self.model.decode(tokens.to(self.device))).cpu()


def load_tokenizer(path: str | Path, device: str = "auto", precision: str = "fp32", ema: bool = True) -> Loaded:
    ckpt = checkpoint.resolve(path, KIND)
    cfg = checkpoint.load_config(ckpt, TrainTokenizerConfig)
    dev = resolve_device(device)
    model = Tokenizer(cfg.tokenizer)
    use_ema = ema and (ckpt / "ema.safetensors").is_file()
    weights = checkpoint.load_weights(ckpt, "ema" if use_ema else "model")
    if use_ema:  # the EMA holds floating-point entries only; integer buffers come from the model file
        weights = {**checkpoint.load_weights(ckpt, "model"), **weights}
    checkpoint.load_into(model, weights, ckpt)
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
            x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
            tokens = tok.encode(x)[0]
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


def detokenize(tok: Loaded, lines: Iterable[str], out_dir: str | Path) -> Iterator[Path | UserError]:
    """Per input line: the PNG written, or the UserError that stopped it. Files are numbered in input
    order; the stem of a line's `path` (sanitised) is appended when present."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            grid = parse_grid(line, tok.model.codebook_size)
            image = tok.decode(grid.unsqueeze(0))[0].permute(1, 2, 0).numpy()
            src = json.loads(line).get("path")
            name = f"{n:06d}" + (f"-{_safe_stem(src)}" if isinstance(src, str) and src else "") + ".png"
            path = out / name
            Image.fromarray(image).save(path)
            yield path
        except UserError as e:
            yield UserError(f"line {n + 1}: {e}")


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16) if codebook_size <= 2**15 else np.dtype(np.int32)


def pretokenize(tok: Loaded, data: DataConfig, out_dir: str | Path, shard_size: int = 1000,
                overwrite: bool = False) -> dict:
    """Encode every sample of `data` (resized and cropped to data.size) into token shards in `out_dir`."""
    h, w = parse_size(data.size)
    grid = tok.model.grid(h, w) if not (h % tok.model.stride or w % tok.model.stride) else None
    if grid is None:
        raise UserError(f"data.size {data.size} is not a multiple of the tokenizer's stride {tok.model.stride}")
    loader = ShardLoader(data, repeat=False)
    prefix = "shard" if loader.world_size == 1 else f"shard-r{loader.rank:03d}"
    dtype = token_dtype(tok.model.codebook_size)
    n = 0
    with lock.hold(out_dir) if loader.rank == 0 else contextlib.nullcontext(), \
            new_shard_set(out_dir, shard_size, prefix, overwrite) as writer, progress() as bar:
        task = bar.add_task("pretokenize", total=None, info="")
        for batch in loader:
            tokens = tok.encode(batch["image"]).numpy().astype(dtype)  # (B, h, w)
            for key, caption, meta, codes in zip(batch["key"], batch["caption"], batch["meta"], tokens):
                buf = io.BytesIO()
                np.save(buf, codes)
                record = {**(meta or {}), "grid": list(grid), "tokenizer": str(tok.ckpt)}
                writer.write(safe_key(key), {"npy": buf.getvalue(), "txt": caption.encode(), "json": json.dumps(record).encode()})
            n += len(batch["key"])
            bar.update(task, completed=n, info=f"{n} samples")
    info = {"tokenizer": str(tok.ckpt), "codebook_size": tok.model.codebook_size, "stride": tok.model.stride,
            "grid": list(grid), "size": [h, w], "samples": n, "shards": [str(p) for p in writer.written],
            "skipped": loader.skips.as_dict()}
    if loader.rank == 0:
        Path(out_dir, "tokens.json").write_text(json.dumps(info, indent=1))
    log.info("wrote %d samples in %d token shard(s) to %s", n, len(writer.written), out_dir)
    return info
