"""`arimg data inspect`: what a set of shards holds, as numbers and as a contact sheet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from arlm.data.shards import IMAGE_EXTS, SkipCounter, decode, expand, raw_samples
from arlm.log import progress
from arlm.viz import contact_sheet


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def inspect_shards(shards: str, sheet: str | Path | None = "contact-sheet.png", sheet_n: int = 48,
                   limit: int | None = None) -> dict:
    urls = expand(shards)
    skips = SkipCounter()
    chars, words, widths, heights = [], [], [], []
    sizes, formats, kinds, per_shard = Counter(), Counter(), Counter(), Counter()
    thumbs, labels = [], []
    with progress() as bar:
        task = bar.add_task("inspect", total=limit, info="")
        for raw in raw_samples(urls, skips):
            s = decode(raw, skips)
            if s is None:
                continue
            per_shard[s.url] += 1
            chars.append(len(s.caption))
            words.append(len(s.caption.split()))
            widths.append(s.image.width)
            heights.append(s.image.height)
            sizes[f"{s.image.height}x{s.image.width}"] += 1
            formats[next(e for e in IMAGE_EXTS if e in raw)] += 1
            if s.meta and isinstance(s.meta.get("kind"), str):
                kinds[s.meta["kind"]] += 1
            if len(thumbs) < sheet_n:
                thumbs.append(s.image)
                labels.append(s.caption)
            bar.update(task, advance=1)
            if limit is not None and len(chars) >= limit:
                break
    report = {
        "shards": len(urls),
        "samples": len(chars),
        "skipped": skips.as_dict(),
        "samples_per_shard": _stats([per_shard.get(u, 0) for u in urls]),
        "caption_chars": _stats(chars),
        "caption_words": _stats(words),
        "image_height": _stats(heights),
        "image_width": _stats(widths),
        "sizes_HxW": dict(sizes.most_common(10)),
        "formats": dict(formats),
        "kinds": dict(kinds),
        "contact_sheet": None,
    }
    if sheet and thumbs:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(thumbs, labels).save(sheet)
        report["contact_sheet"] = str(sheet)
    skips.log_summary()
    return report
