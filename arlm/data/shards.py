"""Webdataset shards: writing them, reading them, and counting what could not be read.

A shard is a plain tar in which the files of one sample share a key (`KEY.png`, `KEY.txt`, `KEY.json`), the
convention img2dataset writes. Reading groups files into samples by webdataset's own key rule, so any
shard that webdataset reads, arimg reads the same way. What cannot be used (a truncated tar, an image
that does not decode, a sample without caption) is skipped, counted by reason and logged: never fatal,
never silent. Counters live in shared memory so that DataLoader workers add to the same totals.

Nothing read from a shard is ever extracted to disk; still, a member named outside the shard (an absolute
path, a `..` component) or one that is not a plain file (a link, a device) marks its sample unsafe, and the
sample is skipped: a key like `../x` would otherwise become a file name in whatever is written from it.

Writing is deterministic (fixed tar headers: same samples, same bytes) and atomic (temp file + rename),
so a killed writer never leaves a half shard under a final name.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import re
import tarfile
import warnings
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
           "corrupt pair", "filtered out", "image too large", "unsafe member")
# Pillow's own warning threshold (about 89 M pixels, 358 MB as RGBA): above it Pillow only warns, and
# decoding such an image costs seconds and gigabytes; its header is enough to refuse it
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
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


class BadImage(Exception):
    """An image that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} ({detail})")
        self.reason, self.detail = reason, detail


def open_image(src: bytes | str | os.PathLike) -> tuple[Image.Image, str | None]:
    """(RGB image, format as Pillow names it) of encoded bytes or a file; BadImage when it cannot be used.

    Every reader of images goes through here, so that all refuse the same things: an image over MAX_PIXELS
    ('image too large', judged from its header before any pixel is decoded: a 20,000 x 20,000 PNG of one
    colour is a few hundred kB on disk and 1.6 GB in memory), and anything Pillow cannot decode or convert
    ('corrupt image': Pillow raises OSError, SyntaxError, ValueError, struct.error and more on bad data).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes: one line per image on stderr
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise BadImage("image too large", f"{image.width}x{image.height}")
                if image.width < 1 or image.height < 1:
                    raise BadImage("corrupt image", f"{image.width}x{image.height}")
                image.load()  # decoding is lazy: force it so that truncated data fails here
                return image.convert("RGB"), image.format
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("image too large", str(e).split(" exceeds")[0]) from None
    except Exception as e:  # any decoder failure means: not a usable image
        raise BadImage("corrupt image", e.__class__.__name__) from None


def _unsafe(info: tarfile.TarInfo) -> bool:
    """A member that no file written from it may be named after: outside the shard, or not a plain file."""
    return info.name.startswith("/") or ".." in info.name.split("/") or not (info.isreg() or info.isdir())


def _complete(sample: dict | None, unsafe: bool, skips: SkipCounter) -> Iterator[dict]:
    if sample is not None and unsafe:
        skips.add("unsafe member", f"{sample['__url__']}:{sample['__key__']}")
    elif sample is not None:
        yield sample


def raw_samples(urls: Iterable[str], skips: SkipCounter) -> Iterator[dict]:
    """Webdataset sample dicts (`__key__`, `__url__`, one bytes entry per extension) from local shards.

    Files are grouped into samples by webdataset's own key rule (the name up to the first dot of its last
    component). A shard that breaks off is counted once; the sample it was in the middle of is dropped.
    A sample with an unsafe member (see the module's docstring) is counted and dropped.
    """
    for url in urls:
        current: dict | None = None
        unsafe = False
        try:
            with tarfile.open(url, mode="r|*") as tar:
                for info in tar:
                    key, ext = base_plus_ext(info.name)
                    if info.isdir() or key is None or os.path.basename(info.name).startswith("__"):
                        continue
                    if current is None or current["__key__"] != key:
                        yield from _complete(current, unsafe, skips)
                        current, unsafe = {"__key__": key, "__url__": url}, False
                    if _unsafe(info):
                        unsafe = True
                        continue
                    current[ext.lower()] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as e:
            skips.add("truncated shard", f"{url} ({e})")
            current = None
        yield from _complete(current, unsafe, skips)


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
        image, _ = open_image(raw[ext])
    except BadImage as e:
        skips.add(e.reason, f"{where} ({e.detail})")
        return None
    meta = None
    if "json" in raw:
        meta = read_meta(raw["json"])
        if meta is None:
            skips.add("corrupt json", where)
            return None
    return Decoded(key=raw["__key__"], image=image, caption=caption, meta=meta, url=raw["__url__"])


def read_meta(data: bytes | str) -> dict | None:
    """A sample's JSON record, or None when it is not a JSON object (bad bytes, a list, nesting too deep)."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return meta if isinstance(meta, dict) else None


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


def safe_key(key: str) -> str:
    """A key ShardWriter accepts, from a key read from a shard: a webdataset key may hold folders and dots
    (`./000001`, `part.1/000001`), which a written key may not."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key).strip("_") or "sample"


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
            tar, self._tar = self._tar, None
            with contextlib.suppress(OSError):  # on a full disk closing fails too: the file goes all the same
                tar.close()
            self._path.with_suffix(".tar.tmp").unlink(missing_ok=True)


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
