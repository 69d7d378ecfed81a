"""`arimg eval images`: the judge's verdicts over a folder, a manifest or shards, summarised per kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from arlm.config import EvalImagesConfig
from arlm.data.shards import SkipCounter
from arlm.data.sources import Item, iter_items
from arlm.judge import judge_many, summarize
from arlm.log import progress


def eval_images(src: str, cfg: EvalImagesConfig) -> dict:
    skips = SkipCounter()
    items: list[Item] = []

    source = iter_items(src, skips)  # opens and checks the source now, before any progress is drawn

    def loaded() -> Iterator[Item]:
        for item in source:
            try:
                item.load()
            except Exception:  # any decoder error: count it, judge the rest
                skips.add("corrupt image", item.where)
                continue
            items.append(item)
            yield item

    stream = loaded() if cfg.limit is None else islice(loaded(), cfg.limit)
    verdicts = []
    details = Path(cfg.details).open("w") if cfg.details else None
    try:
        with progress() as bar:
            task = bar.add_task("judge", total=cfg.limit, info="")
            for i, v in enumerate(judge_many(((it.image, it.caption) for it in stream), cfg.judge)):
                verdicts.append(v)
                bar.update(task, advance=1, info=f"{sum(x.ok for x in verdicts) / len(verdicts):.1%} ok")
                if details:
                    row = {"where": items[i].where, "caption": items[i].caption, "ok": v.ok, "kind": v.kind,
                           "reason": v.reason}
                    details.write(json.dumps(row) + "\n")
    finally:
        if details:
            details.close()
    report = summarize(verdicts)
    report["skipped"] = skips.as_dict()
    skips.log_summary()
    return report
