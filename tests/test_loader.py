"""The shard loader: shapes, resizing, and each rank its own part with the same number of batches."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from PIL import Image

from arlm.config import DataConfig
from arlm.data.loader import BUSY_TRIES, ShardDataset, ShardLoader, crop, resize_crop


def _cfg(shards, **kw):
    return replace(DataConfig(shards=str(shards), size="32", batch_size=5, shuffle_buffer=0), **kw)


def test_batches(synth_dir):
    batches = list(ShardLoader(_cfg(synth_dir)))
    assert [len(b["key"]) for b in batches] == [5] * 9 + [3]
    b = batches[0]
    assert b["image"].shape == (5, 3, 32, 32) and b["image"].dtype == torch.uint8
    assert all(isinstance(c, str) and c for c in b["caption"]) and b["meta"][0]["size"] == [32, 32]
    assert len({k for b in batches for k in b["key"]}) == 48


def test_resize_and_crop():
    img = Image.fromarray(np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3))
    assert resize_crop(img, (32, 32)).size == (32, 32)
    assert resize_crop(img, (16, 64)).size == (64, 16)
    same = Image.new("RGB", (32, 32), (1, 2, 3))
    assert resize_crop(same, (32, 32)) is same  # pixels untouched at the target size
    import random
    a, b = resize_crop(img, (20, 20), random.Random(0)), resize_crop(img, (20, 20), random.Random(1))
    assert a.size == b.size == (20, 20)


def test_loader_resizes_to_non_square(synth_dir):
    b = next(iter(ShardLoader(_cfg(synth_dir, size="16x24"))))
    assert b["image"].shape[1:] == (3, 16, 24)


@pytest.mark.parametrize("world", [2, 3, 8])  # 4 shards: whole shards for 2 ranks, sample split for 8
def test_ranks_partition_the_data(synth_dir, world):
    keys = [[s["key"] for s in ShardDataset(_cfg(synth_dir), rank=r, world_size=world)] for r in range(world)]
    flat = [k for part in keys for k in part]
    assert len(flat) == len(set(flat)) == 48
    assert all(part for part in keys)


def test_shuffle_is_seeded_and_complete(synth_dir):
    order = lambda seed: [s["key"] for s in ShardDataset(_cfg(synth_dir, shuffle_buffer=10, seed=seed))]
    assert order(1) == order(1) and sorted(order(1)) == sorted(order(2)) and order(1) != order(2)


def test_repeat_runs_forever(synth_dir):
    it = iter(ShardLoader(_cfg(synth_dir), repeat=True))
    assert sum(len(next(it)["key"]) for _ in range(25)) == 125


def test_workers_share_skip_counts(tmp_path, synth_dir):
    import shutil
    for p in sorted(synth_dir.glob("*.tar")):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "shard-000001.tar").write_bytes((tmp_path / "shard-000001.tar").read_bytes()[:3000])
    loader = ShardLoader(_cfg(tmp_path, num_workers=2))
    n = sum(len(b["key"]) for b in loader)
    assert 36 <= n < 48 and loader.skips.as_dict() == {"truncated shard": 1}


def _rank_main(rank, world, init, cfg, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        batches = [b["key"] for b in ShardLoader(cfg)]
        (out / f"{rank}.json").write_text(json.dumps(batches))
    finally:
        dist.destroy_process_group()


def test_two_ranks_under_gloo_take_the_same_number_of_batches(tmp_path, synth_dir):
    # uneven parts: 4 shards of 12 over 3 ranks -> 24, 12, 12 samples; all stop with the shortest
    cfg = _cfg(synth_dir, batch_size=4)
    world = 3
    tmp.spawn(_rank_main, args=(world, f"file://{tmp_path}/init", cfg, tmp_path), nprocs=world)
    parts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == 3
    keys = [k for p in parts for b in p for k in b]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("crop", ["center", "random", "busy"])
def test_resume_continues_the_same_stream(synth_dir, workers, crop):
    import io

    cfg = _cfg(synth_dir, shuffle_buffer=10, seed=3, num_workers=workers, crop=crop, size="24x20",
               crop_size="16" if crop == "busy" else None)
    first = ShardLoader(cfg, repeat=True)
    it = iter(first)
    for _ in range(13):  # past the end of the first epoch (48 samples) for every worker
        next(it)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # plain data: loads with weights_only=True
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    expected = [next(it) for _ in range(6)]
    resumed = ShardLoader(cfg, repeat=True)
    resumed.load_state_dict(state)
    got = [b for _, b in zip(range(6), resumed)]
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, expected))


def test_resume_refuses_another_reader_layout(synth_dir):
    state = ShardLoader(_cfg(synth_dir, num_workers=2), repeat=True).state_dict()
    from arlm.errors import ConfigError
    with pytest.raises(ConfigError, match="resume"):
        ShardLoader(_cfg(synth_dir, num_workers=0), repeat=True).load_state_dict(state)


def test_under_torchrun(tmp_path, synth_dir):
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).parent / "torchrun_loader_probe.py"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(probe), str(synth_dir), str(tmp_path)], check=True, capture_output=True, timeout=120)
    parts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 6  # 2 shards of 12 per rank, batches of 4
    keys = [k for p in parts for b in p for k in b]
    assert len(keys) == len(set(keys)) == 48


def test_crop_size_takes_windows_at_full_resolution(synth_dir):
    from arlm.config import DataConfig
    from arlm.data.shards import read_shards

    full = {s.key: np.asarray(s.image) for s in read_shards(str(synth_dir))}
    cfg = DataConfig(shards=str(synth_dir), size="32", crop="random", crop_size="16x24", batch_size=8, shuffle_buffer=0)
    batch = next(iter(ShardLoader(cfg)))
    assert batch["image"].shape == (8, 3, 16, 24)
    for img, key in zip(batch["image"], batch["key"]):
        window = img.permute(1, 2, 0).numpy()
        src = full[key]
        # the window is a pixel-exact piece of the 32x32 image (no resampling)
        assert any(np.array_equal(src[y:y + 16, x:x + 24], window) for y in range(17) for x in range(9))
    with pytest.raises(Exception, match="larger than data.size"):
        ShardLoader(DataConfig(shards=str(synth_dir), size="32", crop_size="48"))


def test_busy_crop_keeps_the_most_varied_of_its_random_windows():
    import random

    from PIL import Image

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[40:48, 4:12] = 255  # one small stroke on a flat background
    image = Image.fromarray(pixels)
    hits = {"random": 0, "busy": 0}
    for i in range(200):
        plain = np.asarray(crop(image, (32, 32), random.Random(i)))
        busy = np.asarray(crop(image, (32, 32), random.Random(i), tries=BUSY_TRIES))
        # the busy window is one of the same draws: its first candidate is the plain random window
        rng = random.Random(i)
        candidates = [(rng.randint(0, 32), rng.randint(0, 32)) for _ in range(BUSY_TRIES)]
        windows = [pixels[y:y + 32, x:x + 32] for x, y in candidates]
        assert np.array_equal(windows[0], plain)
        assert any(np.array_equal(w, busy) for w in windows)
        assert busy.astype(np.float32).var() == max(w.astype(np.float32).var() for w in windows)
        hits["random"] += bool(plain.any())
        hits["busy"] += bool(busy.any())
    assert hits["busy"] > hits["random"]
    assert np.array_equal(np.asarray(crop(image, (32, 32), None, tries=BUSY_TRIES)), pixels[16:48, 16:48])
