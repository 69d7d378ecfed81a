"""Captioned images from wherever a user keeps them: a folder, a manifest, or shards.

- a folder: every image file (recursively, sorted) with a same-name `.txt` caption and optional `.json`;
- a manifest: JSON lines or CSV with `path` and `caption` (or `prompt`, as `arimg sample` writes), other
  fields kept as metadata; relative paths are relative to the manifest's folder; `-` reads JSON lines
  from stdin;
- anything else is taken as shards (a brace pattern, a `.tar`, a folder of `.tar` files).

Items that cannot be used are skipped and counted with the shard reader's reasons. A manifest is read as
UTF-8 with undecodable bytes kept (surrogate escapes, as Python does for file names): a path in another
encoding still names its file, and a caption that is not UTF-8 is counted as 'no caption'.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from PIL import Image

from arlm.data.shards import SkipCounter, expand, open_image, read_meta, read_shards
from arlm.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Item:
    where: str  # a path, or shard:key, for messages
    caption: str
    meta: dict
    data: bytes | None = None  # the file's bytes (folder and manifest sources)
    image: Image.Image | None = None  # decoded RGB (shard sources, and after `load`)
    format: str | None = None  # the file's format as Pillow names it (PNG, JPEG, ...), after `load`

    def load(self) -> Image.Image:
        """Decode (once); raises BadImage (with its reason) on an image that cannot be used."""
        if self.image is None:
            self.image, self.format = open_image(self.data)
        return self.image


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _file_item(path: Path, caption: str, meta: dict, skips: SkipCounter) -> Item | None:
    if not caption:
        skips.add("no caption", str(path))
        return None
    try:
        data = path.read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        skips.add("no image", str(path))
        return None
    return Item(where=str(path), caption=caption, meta=meta, data=data)


def iter_folder(folder: Path, skips: SkipCounter) -> Iterator[Item]:
    # list eagerly: an empty folder fails before any work or progress starts
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"no images in folder {folder}")
    return _folder_items(paths, skips)


def _folder_items(paths: list[Path], skips: SkipCounter) -> Iterator[Item]:
    for p in paths:
        meta: dict | None = {}
        if p.with_suffix(".json").is_file():
            meta = read_meta(p.with_suffix(".json").read_bytes())
            if meta is None:
                skips.add("corrupt json", str(p.with_suffix(".json")))
                continue
        item = _file_item(p, _read_caption(p.with_suffix(".txt")), meta, skips)
        if item is not None:
            yield item


def stdin_text() -> TextIO:
    """Standard input as UTF-8 text that keeps undecodable bytes as surrogate escapes, as argv does: file
    names need not be UTF-8."""
    buffer = getattr(sys.stdin, "buffer", None)  # None when a test has put a StringIO there
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape") if buffer else sys.stdin


def _manifest_rows(src: str) -> Iterator[tuple[int, dict | None]]:
    """(line number, row or None) of a manifest; opened and checked now, read lazily."""
    if src == "-":
        return _json_rows(stdin_text())
    path = Path(src)
    if not path.is_file():
        raise UserError(f"no such manifest: {src}")
    f = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    if path.suffix.lower() != ".csv":
        return _json_rows(f)
    reader = csv.DictReader(f)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as e:
        raise UserError(f"{src}: not a CSV manifest ({e})") from None
    if not fieldnames or "path" not in fieldnames:
        raise UserError(f"{src}: a CSV manifest needs a header with 'path' and 'caption' columns")
    return _csv_rows(reader)


def _csv_rows(reader: csv.DictReader) -> Iterator[tuple[int, dict | None]]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:  # a field over csv.field_size_limit(), a stray quote: this row only
            row = None
        yield reader.line_num, row


def _json_rows(lines) -> Iterator[tuple[int, dict | None]]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        yield n, row if isinstance(row, dict) else None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate escape: a byte that was not UTF-8
        return False
    return True


def iter_manifest(src: str, skips: SkipCounter) -> Iterator[Item]:
    base = Path.cwd() if src == "-" else Path(src).parent
    return _manifest_items(src, _manifest_rows(src), base, skips)


def _manifest_items(src: str, rows, base: Path, skips: SkipCounter) -> Iterator[Item]:
    for n, row in rows:
        where = f"{src}:{n}"
        if row is None or not isinstance(row.get("path"), str) or not row["path"]:
            skips.add("no image", f"{where} (no 'path')")
            continue
        path = Path(row["path"])
        path = path if path.is_absolute() else base / path
        caption = str(row.get("caption", row.get("prompt", "")) or "").strip()
        if not _is_utf8(caption):
            skips.add("no caption", f"{where} (not UTF-8)")
            continue
        meta = {k: v for k, v in row.items() if k not in ("path", "caption", "prompt")}
        item = _file_item(path, caption, meta, skips)
        if item is not None:
            yield item


def _is_shards(src: str) -> bool:
    path = Path(src)
    return src.endswith(".tar") or "{" in src or "::" in src or (path.is_dir() and any(path.glob("*.tar")))


def iter_files(src: str, skips: SkipCounter) -> Iterator[Item]:
    """Items of a folder of images or of a manifest ('-': JSON lines on stdin). The source is opened and
    checked on the call, so a bad one fails before any work starts; items are read lazily."""
    path = Path(src)
    if src == "-" or path.suffix.lower() in (".jsonl", ".json", ".csv"):
        return iter_manifest(src, skips)
    if path.is_dir() and not _is_shards(src):
        return iter_folder(path, skips)
    raise UserError(f"expected a folder of images or a .jsonl/.csv manifest, got {src}")


def iter_items(src: str, skips: SkipCounter) -> Iterator[Item]:
    """Items of shards, a folder of images or a manifest, whichever `src` is (checked on the call)."""
    if src != "-" and _is_shards(src):
        urls = expand(src)
        return (Item(where=f"{s.url}:{s.key}", caption=s.caption, meta=s.meta or {}, image=s.image)
                for s in read_shards(urls, skips))
    return iter_files(src, skips)
