"""Webdataset shards: writing them, reading them, and counting what could not be read.

A shard is a plain tar in which the files of one sample share a key (`KEY.png`, `KEY.txt`, `KEY.json`), the
convention img2dataset writes. Reading groups files into samples by webdataset's own key rule, so any
shard that webdataset reads, arimg reads the same way. What cannot be used (a truncated tar, an image
that does not decode, a sample without caption) is skipped, counted by reason and logged: never fatal,
never silent. Counters live in shared memory so that DataLoader workers add to the same totals.

Writing is deterministic (fixed tar headers: same samples, same bytes) and atomic (temp file + rename),
so a killed writer never leaves a half shard under a final name.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from arlm.errors import UserError
from arlm.log import log

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
REASONS = ("truncated shard", "no image", "no caption", "corrupt image", "corrupt json", "no tokens", "corrupt tokens",
           "filtered out")
WARN_LIMIT = 5  # per reason; the totals are logged at the end anyway
QUIET = ("filtered out",)  # asked for (a filter), not a fault: only counted


class SkipCounter:
    """Skipped samples by reason, shared by the loader's worker processes."""

    def __init__(self) -> None:
        self._counts = mp.Array("q", len(REASONS))

    def add(self, reason: str, where: str) -> None:
        i = REASONS.index(reason)
        with self._counts.get_lock():
            self._counts[i] += 1
            n = self._counts[i]
        if n <= WARN_LIMIT and reason not in QUIET:
            log.warning("skipped %s: %s%s", where, reason, " (further ones counted, not logged)" if n == WARN_LIMIT else "")

    def as_dict(self) -> dict[str, int]:
        return {r: int(n) for r, n in zip(REASONS, self._counts[:]) if n}

    @property
    def total(self) -> int:
        return int(sum(self._counts[:]))

    def log_summary(self) -> None:
        if self.total:
            log.warning("skipped %d samples: %s", self.total, ", ".join(f"{n} {r}" for r, n in self.as_dict().items()))


def expand(shards: str | Iterable[str]) -> list[str]:
    """Shard paths from a brace pattern ('d/shard-{000000..000009}.tar'), '::'-joined lists, a folder of
    .tar files, or a list of any of those. Every path must exist: a typo fails now, not mid-training."""
    items = [shards] if isinstance(shards, str) else list(shards)
    urls: list[str] = []
    for item in items:
        for url in expand_urls(str(item)):
            if os.path.isdir(url):
                found = sorted(str(p) for p in Path(url).glob("*.tar"))
                if not found:
                    raise UserError(f"no .tar shards in folder {url}")
                urls.extend(found)
            else:
                urls.append(url)
    if not urls:
        raise UserError("no shards given")
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"no such shard: {missing[0]}{more}")
    return urls


# ------------------------------------------------------------------------------------------------------
# reading


@dataclass
class Decoded:
    key: str
    image: Image.Image  # RGB
    caption: str
    meta: dict | None
    url: str


def raw_samples(urls: Iterable[str], skips: SkipCounter) -> Iterator[dict]:
    """Webdataset sample dicts (`__key__`, `__url__`, one bytes entry per extension) from local shards.

    Files are grouped into samples by webdataset's own key rule (the name up to the first dot of its last
    component). A shard that breaks off is counted once; the sample it was in the middle of is dropped.
    """
    for url in urls:
        current: dict | None = None
        try:
            with tarfile.open(url, mode="r|*") as tar:
                for info in tar:
                    key, ext = base_plus_ext(info.name)
                    if not info.isreg() or key is None or os.path.basename(info.name).startswith("__"):
                        continue
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            yield current
                        current = {"__key__": key, "__url__": url}
                    current[ext.lower()] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            skips.add("truncated shard", f"{url} ({e})")
            current = None
        if current is not None:
            yield current


def decode(raw: dict, skips: SkipCounter) -> Decoded | None:
    """Image + caption (+ json) of one raw sample, or None (counted) when it cannot be used."""
    where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        skips.add("no image", where)
        return None
    caption = raw.get("txt")
    try:
        caption = caption.decode("utf-8").strip() if caption is not None else ""
    except UnicodeDecodeError:
        caption = ""
    if not caption:
        skips.add("no caption", where)
        return None
    try:
        image = Image.open(io.BytesIO(raw[ext]))
        image.load()  # decoding is lazy: force it so that truncated data fails here
        image = image.convert("RGB")
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError)
        skips.add("corrupt image", where)
        return None
    meta = None
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError:
            skips.add("corrupt json", where)
            return None
    return Decoded(key=raw["__key__"], image=image, caption=caption, meta=meta, url=raw["__url__"])


def read_shards(shards: str | Iterable[str], skips: SkipCounter | None = None) -> Iterator[Decoded]:
    """Every usable sample of the shards, in order, at its stored size."""
    skips = skips if skips is not None else SkipCounter()
    for raw in raw_samples(expand(shards), skips):
        sample = decode(raw, skips)
        if sample is not None:
            yield sample


# ------------------------------------------------------------------------------------------------------
# writing


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed headers: same content, same bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


class ShardWriter:
    """Writes samples into `OUT/shard-000000.tar`, ... with `shard_size` samples each.

    `write` returns the path of a shard it just finished (else None); `close` returns the last one.
    Each shard is written as `.tar.tmp` and renamed when complete.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int, prefix: str = "shard") -> None:
        if shard_size < 1:
            raise UserError(f"shard size must be >= 1, got {shard_size}")
        self.out_dir, self.shard_size, self.prefix = Path(out_dir), shard_size, prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index, self.count, self.total = 0, 0, 0
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None

    def write(self, key: str, files: dict[str, bytes]) -> Path | None:
        if "." in key or "/" in key:
            raise ValueError(f"sample keys may not contain '.' or '/': {key!r}")
        if self._tar is None:
            self._path = self.out_dir / f"{self.prefix}-{self.index:06d}.tar"
            self._tar = tarfile.open(self._path.with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT)
        for ext, data in files.items():
            self._tar.addfile(*_tar_member(f"{key}.{ext}", data))
        self.count += 1
        self.total += 1
        return self._finish() if self.count == self.shard_size else None

    def _finish(self) -> Path | None:
        if self._tar is None:
            return None
        self._tar.close()
        tmp = self._path.with_suffix(".tar.tmp")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        done, self._tar = self._path, None
        self.written.append(done)
        self.index += 1
        self.count = 0
        return done

    def close(self) -> Path | None:
        return self._finish()

    def abort(self) -> None:
        """Drop the shard in progress (its temp file), keep the finished ones."""
        if self._tar is not None:
            self._tar.close()
            self._path.with_suffix(".tar.tmp").unlink(missing_ok=True)
            self._tar = None


def prepare_out_dir(out_dir: str | os.PathLike, prefix: str = "shard", overwrite: bool = False) -> list[Path]:
    """Refuse to mix a new set of shards with an old one; with overwrite, return the old ones to remove
    once the new set is complete (the old set stays readable until then)."""
    out_dir = Path(out_dir)
    for tmp in out_dir.glob(f"{prefix}-*.tar.tmp"):  # left by a killed writer: incomplete by definition
        tmp.unlink()
    old = sorted(out_dir.glob(f"{prefix}-*.tar")) if out_dir.is_dir() else []
    if old and not overwrite:
        raise UserError(f"{out_dir} already holds {len(old)} shard(s); pass --overwrite to replace them")
    return old


@contextlib.contextmanager
def new_shard_set(out_dir: str | os.PathLike, shard_size: int, prefix: str = "shard",
                  overwrite: bool = False) -> Iterator[ShardWriter]:
    """A ShardWriter for a new set of shards in `out_dir` (refused over an old set unless `overwrite`). On
    success the last shard is closed and what is left of the old set removed; on an error the shard in
    progress is dropped and the old set's remaining shards stay."""
    old = prepare_out_dir(out_dir, prefix, overwrite)
    writer = ShardWriter(out_dir, shard_size, prefix)
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for stale in set(old) - set(writer.written):
        stale.unlink(missing_ok=True)


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)  # 2x faster than the default 6, and no larger on synth
    return buf.getvalue()
