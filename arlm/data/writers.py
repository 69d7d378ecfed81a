"""Making shards: the synthetic set (`arimg data synth`) and user images (`arimg data pack`).

Both yield each shard's path as soon as it is complete (the CLI prints it, so a pipeline can start on
the first shard), show progress on stderr, and on an error keep every finished shard. With overwrite, old
shards of the same name are replaced one by one (atomically) and leftover ones removed at the end.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from arlm import lock, synth
from arlm.data.shards import BadImage, ShardWriter, SkipCounter, encode_png, prepare_out_dir
from arlm.data.sources import iter_files
from arlm.errors import UserError
from arlm.log import log, progress

KEEP_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # stored as they are; others become PNG


def _write_all(writer: ShardWriter, samples: Iterator[tuple[str, dict[str, bytes]]], old: list[Path],
               total: int | None, label: str) -> Iterator[Path]:
    start = time.perf_counter()
    try:
        with progress() as bar:
            task = bar.add_task(label, total=total, info="")
            for key, files in samples:
                done = writer.write(key, files)
                if writer.total % 64 == 0 or done:  # a bar refresh costs as much as drawing a sample
                    rate = writer.total / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, completed=writer.total, info=f"{rate:,.0f}/s")
                if done:
                    yield done
            done = writer.close()
            if done:
                yield done
    except BaseException:
        writer.abort()
        raise
    for stale in set(old) - set(writer.written):
        stale.unlink(missing_ok=True)
    elapsed = time.perf_counter() - start
    log.info("wrote %d samples in %d shard(s) to %s in %.1f s (%.0f samples/s)", writer.total,
             len(writer.written), writer.out_dir, elapsed, writer.total / max(elapsed, 1e-9))


def _synth_files(job: tuple[int, int, tuple[int, int], tuple[str, ...], tuple[str, ...] | None]
                 ) -> tuple[str, dict[str, bytes]]:
    index, seed, size, kinds, vocabulary = job
    s = next(synth.generate(1, size, seed, kinds, start=index, vocabulary=vocabulary))
    return s.key, {"png": encode_png(s.image), "txt": s.caption.encode(), "json": json.dumps(s.record).encode()}


def write_synth(out: str | Path, n: int, size: tuple[int, int], seed: int = 0, kinds: Sequence[str] = synth.KINDS,
                shard_size: int = 1000, overwrite: bool = False, workers: int | None = None,
                vocabulary: Sequence[str] | None = None) -> Iterator[Path]:
    """The synthetic set as shards. Samples are drawn and encoded in `workers` processes (default: one per
    core); each is a pure function of (seed, index), so the bytes do not depend on the worker count. The text
    kind draws from `vocabulary` (None: the shipped word list)."""
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    kinds = tuple(kinds)
    synth.check_kinds(kinds)
    with lock.hold(out):
        old = prepare_out_dir(out, overwrite=overwrite)
        vocabulary = tuple(vocabulary) if vocabulary is not None else None
        jobs = ((i, seed, size, kinds, vocabulary) for i in range(n))
        workers = workers or os.cpu_count() or 1
        if workers == 1 or n < 256:
            yield from _write_all(ShardWriter(out, shard_size), map(_synth_files, jobs), old, n, "synth")
            return
        with mp.get_context("fork").Pool(workers) as pool:
            yield from _write_all(ShardWriter(out, shard_size), pool.imap(_synth_files, jobs, chunksize=32), old, n,
                                  "synth")


def pack(src: str, out: str | Path, shard_size: int = 1000, overwrite: bool = False) -> Iterator[Path]:
    """Shards from a folder of images with .txt captions, or a JSONL/CSV manifest (path, caption)."""
    skips = SkipCounter()
    items = iter_files(src, skips)  # opens and checks the source now
    def samples():
        for i, item in enumerate(items):
            try:
                image = item.load()
            except BadImage as e:
                skips.add(e.reason, f"{item.where} ({e.detail})")
                continue
            fmt = KEEP_FORMATS.get(item.format or "")
            data = item.data if fmt else encode_png(image)
            meta = {**item.meta, "source": item.where, "width": image.width, "height": image.height}
            files = {fmt or "png": data, "txt": item.caption.encode("utf-8"), "json": json.dumps(meta).encode()}
            yield f"{i:08d}", files

    with lock.hold(out):
        old = prepare_out_dir(out, overwrite=overwrite)
        yield from _write_all(ShardWriter(out, shard_size), samples(), old, None, "pack")
    skips.log_summary()

