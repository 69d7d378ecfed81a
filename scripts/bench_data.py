"""Data throughput: `arimg data synth` and the shard loader, each beside a baseline measured in the same run.

- synth: samples/s drawn + PNG-encoded + written, with 1 process and with one per core;
- loader: samples/s of decoded, resized (64 -> 48, so the resize is real) uint8 batches from our loader,
  beside webdataset's own pipeline (WebDataset + decode("pil") + the same resize) over the same shards.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from arlm.config import DataConfig
from arlm.data.loader import ShardLoader, resize_crop
from arlm.data.writers import write_synth


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_synth(out: str, n: int, workers: int) -> float:
    return n / _timed(lambda: list(write_synth(out, n, (64, 64), seed=0, shard_size=1000, overwrite=True,
                                               workers=workers)))


def bench_loader(shards: str, n: int, workers: int) -> float:
    cfg = DataConfig(shards=shards, size="48", batch_size=64, num_workers=workers, shuffle_buffer=0)
    return n / _timed(lambda: sum(len(b["key"]) for b in ShardLoader(cfg)))


def bench_webdataset(shards: str, n: int) -> float:
    import webdataset as wds

    def to_tensor(img):
        return torch.from_numpy(np.array(resize_crop(img, (48, 48)))).permute(2, 0, 1)

    ds = (wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("pil")
          .to_tuple("png", "txt").map_tuple(to_tensor, lambda t: t).batched(64))
    return n / _timed(lambda: sum(len(b[1]) for b in ds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        synth_1 = bench_synth(f"{tmp}/s", args.n, 1)
        synth_n = bench_synth(f"{tmp}/s", args.n, cores)
        shards = f"{tmp}/s/shard-{{000000..{args.n // 1000 - 1:06d}}}.tar"
        n = (args.n // 1000) * 1000
        wds_rate = bench_webdataset(shards, n)
        ours_0 = bench_loader(shards, n, 0)
        ours_n = bench_loader(shards, n, cores)
    report = {
        "cores": cores,
        "synth_samples_per_s": {"1_process": round(synth_1), f"{cores}_processes": round(synth_n),
                                "speedup": round(synth_n / synth_1, 2)},
        "loader_samples_per_s": {"webdataset_baseline": round(wds_rate), "arimg_0_workers": round(ours_0),
                                 f"arimg_{cores}_workers": round(ours_n),
                                 "arimg_0_workers_vs_baseline": round(ours_0 / wds_rate, 2)},
    }
    print(json.dumps(report))
    print(f"synth {synth_n:,.0f} samples/s; loader {ours_n:,.0f} samples/s "
          f"({ours_0 / wds_rate:.2f}x webdataset at 0 workers)", file=sys.stderr)


if __name__ == "__main__":
    main()
