"""Captioned images from wherever a user keeps them: a folder, a manifest, or shards.

- a folder: every image file (recursively, sorted) with a same-name `.txt` caption and optional `.json`;
- a manifest: JSON lines or CSV with `path` and `caption` (or `prompt`, as `arimg sample` writes), other
  fields kept as metadata; relative paths are relative to the manifest's folder; `-` reads JSON lines
  from stdin;
- anything else is taken as shards (a brace pattern, a `.tar`, a folder of `.tar` files).

Items that cannot be used are skipped and counted with the shard reader's reasons.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from arlm.data.shards import SkipCounter, expand, read_shards
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
        """Decode (once); raises on a corrupt image."""
        if self.image is None:
            image = Image.open(io.BytesIO(self.data))
            image.load()  # decoding is lazy: force it so that truncated data fails here
            self.format = image.format
            self.image = image.convert("RGB")
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
    except OSError:
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
        meta: dict = {}
        if p.with_suffix(".json").is_file():
            try:
                meta = json.loads(p.with_suffix(".json").read_text())
            except ValueError:
                skips.add("corrupt json", str(p.with_suffix(".json")))
                continue
        item = _file_item(p, _read_caption(p.with_suffix(".txt")), meta, skips)
        if item is not None:
            yield item


def _manifest_rows(src: str) -> Iterator[tuple[int, dict | None]]:
    """(line number, row or None) of a manifest; opened and checked now, read lazily."""
    if src == "-":
        return _json_rows(sys.stdin)
    path = Path(src)
    if not path.is_file():
        raise UserError(f"no such manifest: {src}")
    f = path.open(encoding="utf-8", newline="")
    if path.suffix.lower() != ".csv":
        return _json_rows(f)
    reader = csv.DictReader(f)
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise UserError(f"{src}: a CSV manifest needs a header with 'path' and 'caption' columns")
    return enumerate(reader, start=2)


def _json_rows(lines) -> Iterator[tuple[int, dict | None]]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        yield n, row if isinstance(row, dict) else None


def iter_manifest(src: str, skips: SkipCounter) -> Iterator[Item]:
    base = Path.cwd() if src == "-" else Path(src).parent
    return _manifest_items(src, _manifest_rows(src), base, skips)


def _manifest_items(src: str, rows, base: Path, skips: SkipCounter) -> Iterator[Item]:
    for n, row in rows:
        where = f"{src}:{n}"
        if row is None or not row.get("path"):
            skips.add("no image", f"{where} (not a JSON object with a 'path')")
            continue
        path = Path(row["path"])
        path = path if path.is_absolute() else base / path
        caption = str(row.get("caption", row.get("prompt", "")) or "").strip()
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
