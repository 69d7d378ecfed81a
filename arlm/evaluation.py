"""`arimg eval images`: the judge's verdicts over a folder, a manifest or shards, summarised per kind."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

from arlm.config import EvalImagesConfig
from arlm.data.shards import BadImage, SkipCounter
from arlm.data.sources import Item, iter_items
from arlm.judge import check_reader, judge_many, summarize
from arlm.log import progress


def eval_images(src: str, cfg: EvalImagesConfig) -> dict:
    check_reader(cfg.judge, evaluation=True)
    skips = SkipCounter()
    source = iter_items(src, skips)  # opens and checks the source now, before any progress is drawn
    pending: deque[Item] = deque()  # items whose verdict is still to come (judge_many keeps input order)

    def loaded() -> Iterator[Item]:
        for item in source:
            try:
                item.load()
            except BadImage as e:  # count it, judge the rest
                skips.add(e.reason, f"{item.where} ({e.detail})")
                continue
            pending.append(item)
            yield item

    stream = loaded() if cfg.limit is None else islice(loaded(), cfg.limit)
    verdicts = []
    ok = 0
    with ExitStack() as stack:
        details = stack.enter_context(Path(cfg.details).open("w")) if cfg.details else None
        bar = stack.enter_context(progress())
        task = bar.add_task("judge", total=cfg.limit, info="")
        for v in judge_many(((it.image, it.caption) for it in stream), cfg.judge):
            item = pending.popleft()
            verdicts.append(v)
            ok += v.ok
            bar.update(task, advance=1, info=f"{ok / len(verdicts):.1%} ok")
            if details:
                row = {"where": item.where, "caption": item.caption, "ok": v.ok, "kind": v.kind, "reason": v.reason}
                details.write(json.dumps(row) + "\n")
    report = summarize(verdicts)
    report["skipped"] = skips.as_dict()
    skips.log_summary()
    return report
