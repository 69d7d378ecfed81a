"""Shards: write/read round trip, img2dataset layout, and skip-and-count of what cannot be read."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from arlm import synth
from arlm.data.shards import ShardWriter, SkipCounter, encode_png, expand, read_shards
from arlm.errors import UserError


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(color=(200, 10, 10), size=(20, 16)):
    return encode_png(Image.new("RGB", size, color))


def _jpg(color=(10, 200, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_round_trip(tmp_path):
    samples = list(synth.generate(10, (32, 32), seed=5))
    w = ShardWriter(tmp_path, shard_size=4)
    done = [w.write(s.key, {"png": encode_png(s.image), "txt": s.caption.encode(), "json": json.dumps(s.record).encode()})
            for s in samples]
    done.append(w.close())
    assert [p.name for p in done if p] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    skips = SkipCounter()
    got = list(read_shards(str(tmp_path / "shard-{000000..000002}.tar"), skips))
    assert skips.total == 0 and [g.key for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples):
        assert g.caption == s.caption and g.meta == s.record
        assert np.array_equal(np.asarray(g.image), np.asarray(s.image))


def test_corrupt_truncated_and_uncaptioned_samples_are_skipped_and_counted(tmp_path):
    _tar(tmp_path / "a.tar", [
        ("000.png", _png()), ("000.txt", b"a red square"),
        ("001.png", _png()[:40]), ("001.txt", b"truncated png"),          # corrupt image
        ("002.png", b"\x89PNG\r\n\x1a\n" + bytes(100)), ("002.txt", b"garbage png"),  # corrupt image
        ("003.png", _png()),                                              # no caption
        ("004.png", _png()), ("004.txt", b"   "),                         # empty caption
        ("005.txt", b"caption without image"),                            # no image
        ("006.png", _png()), ("006.txt", b"bad json"), ("006.json", b"{not json"),
        ("007.jpg", _jpg()), ("007.txt", b"a jpeg"), ("007.json", b'{"key": "007"}'),
    ])
    # a shard cut in the middle of its second sample's image
    noise = encode_png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    _tar(tmp_path / "b.tar", [("000.png", _png()), ("000.txt", b"kept"), ("001.png", noise), ("001.txt", b"lost")])
    raw = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(raw[: 4 * 512 + 512 + len(noise) // 2])
    skips = SkipCounter()
    got = list(read_shards([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], skips))
    assert [(g.key, g.caption) for g in got] == [("000", "a red square"), ("007", "a jpeg"), ("000", "kept")]
    assert got[1].meta == {"key": "007"} and got[1].image.size == (40, 30)
    counts = skips.as_dict()
    assert counts["corrupt image"] == 2 and counts["no caption"] == 2 and counts["corrupt json"] == 1
    assert counts["truncated shard"] == 1 and counts.get("no image", 0) == 1
    assert skips.total == 7


def test_img2dataset_layout_reads_as_is(tmp_path):
    # img2dataset: KEY.jpg + KEY.txt + KEY.json, keys are zero-padded numbers, plus a parquet/stats beside
    _tar(tmp_path / "00000.tar", [
        ("000000000.jpg", _jpg()), ("000000000.txt", b"a photo"),
        ("000000000.json", json.dumps({"url": "x", "key": "000000000", "status": "success"}).encode()),
        ("000000001.jpg", _jpg((0, 0, 255))), ("000000001.txt", b"another photo"),
        ("000000001.json", b'{"status": "success"}'),
    ])
    (tmp_path / "00000_stats.json").write_text("{}")
    got = list(read_shards(str(tmp_path)))
    assert [g.caption for g in got] == ["a photo", "another photo"] and got[0].meta["status"] == "success"


def test_expand(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"s-{i}.tar", [("0.png", _png()), ("0.txt", b"x")])
    assert expand(str(tmp_path / "s-{0..2}.tar")) == [str(tmp_path / f"s-{i}.tar") for i in range(3)]
    assert expand(str(tmp_path)) == [str(tmp_path / f"s-{i}.tar") for i in range(3)]
    assert len(expand(f"{tmp_path}/s-0.tar::{tmp_path}/s-2.tar")) == 2
    with pytest.raises(UserError, match="no such shard"):
        expand(str(tmp_path / "s-{0..3}.tar"))
    with pytest.raises(UserError, match="no .tar shards"):
        expand(str(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else "")


def test_writer_abort_keeps_finished_shards(tmp_path):
    w = ShardWriter(tmp_path, shard_size=2)
    for i in range(3):
        w.write(f"{i}", {"txt": b"x"})
    w.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]
