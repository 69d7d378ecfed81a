"""Fuzzed data (fault row 4): the row end to end, property tests on the lowest readers, and one
regression test per bug the fuzzing found."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from arlm.data.shards import (MAX_PIXELS, REASONS, BadImage, ShardWriter, SkipCounter, decode, open_image,
                              raw_samples, read_shards, safe_key)
from arlm.data.sources import iter_files
from arlm.data.writers import pack
from tests.faults import row_data
from tests.faults.row_data import crafted_png, good_image

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def test_row_fuzzed_data(tmp_path):
    row = row_data.run(1, tmp_path)
    assert row.lost == 0 and row.survived == row.trials, row.notes


@pytest.mark.slow
def test_row_fuzzed_data_many(tmp_path):
    row = row_data.run(12, tmp_path)
    assert row.lost == 0 and row.survived == row.trials, row.notes


# ------------------------------------------------------------------------------------------------------
# properties of the lowest readers


def _png(size=(6, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for at, value in edits:
        if b:
            b[at % len(b)] = value
    return bytes(b[:cut] if cut is not None else b)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
CUTS = st.none() | st.integers(0, 2_000)


def _decodes_or_counts(data: bytes) -> None:
    try:
        image, _ = open_image(data)
    except BadImage as e:
        assert e.reason in REASONS
    else:
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


@FUZZ
@given(st.binary(max_size=2_000))
def test_open_image_on_random_bytes_decodes_or_counts(data):
    _decodes_or_counts(data)


@FUZZ
@given(st.integers(0, 2**31), EDITS, CUTS)
def test_open_image_on_damaged_images_decodes_or_counts(seed, edits, cut):
    _decodes_or_counts(_mutate(good_image(random.Random(seed)), edits, cut))


NAMES = st.text(st.sampled_from("ab./\\_-é\0 "), min_size=1, max_size=12) | st.sampled_from(
    ["../x.png", "/abs/x.png", "./k.png", "a/../../k.txt", "k.png", "k.txt", "k.json", "__key__", "sub/k.png"])


def _tar(members: list[tuple[str, int, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name.replace("\0", ""))
            info.type = [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE][kind]
            if kind == 0:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "../../etc/passwd"
                tar.addfile(info)
    return buf.getvalue()


MEMBERS = st.lists(st.tuples(NAMES, st.sampled_from([0, 0, 0, 1, 2, 3, 4]),
                             st.sampled_from([b"", b"a caption", b"\xff\xfe", b"[1]", b"{}", _png()])), max_size=8)


@FUZZ
@given(MEMBERS, EDITS, CUTS)
def test_shard_reader_never_raises_and_keeps_keys_inside(tmp_path_factory, members, edits, cut):
    """Any tar (hostile names, links, damaged bytes) reads without raising; a sample that comes out has a
    key inside the shard, a caption and an RGB image; the writer takes its key once made safe."""
    path = tmp_path_factory.mktemp("tar") / "s.tar"
    path.write_bytes(_mutate(_tar(members), edits, cut))
    skips = SkipCounter()
    for raw in raw_samples([str(path)], skips):
        assert not raw["__key__"].startswith("/") and ".." not in raw["__key__"].split("/")
        s = decode(raw, skips)
        if s is not None:
            assert s.caption and s.image.mode == "RGB" and (s.meta is None or isinstance(s.meta, dict))
            ShardWriter(path.parent / "out", 10).write(safe_key(s.key), {"txt": b"x"})
    assert set(skips.as_dict()) <= set(REASONS)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([".jsonl", ".csv"]), st.binary(max_size=80), st.binary(max_size=80))
def test_manifest_and_folder_readers_never_raise(tmp_path_factory, manifest, suffix, caption, meta):
    """Any manifest bytes, any caption or record bytes: items come out with UTF-8 captions and dict
    records, or are counted; only a CSV without its header is a (one-line) error."""
    from arlm.errors import UserError

    root = tmp_path_factory.mktemp("src")
    (root / "a.png").write_bytes(_png())
    (root / "a.txt").write_bytes(caption)
    (root / "a.json").write_bytes(meta)
    (root / "m" / "x").mkdir(parents=True)
    (root / "m" / f"m{suffix}").write_bytes(manifest.replace(b"@", str(root / "a.png").encode()))
    for src in (root, root / "m" / f"m{suffix}"):
        skips = SkipCounter()
        try:
            items = list(iter_files(str(src), skips))
        except UserError:
            assert suffix == ".csv" and src != root
            continue
        for item in items:
            assert item.caption and item.caption.encode("utf-8") and isinstance(item.meta, dict)
            json.dumps(item.meta)  # pack stores it


@FUZZ
@given(st.text(max_size=40))
def test_safe_key_is_a_key_the_writer_takes(tmp_path_factory, key):
    ShardWriter(tmp_path_factory.mktemp("w"), 10).write(safe_key(key), {"txt": b"x"})


# ------------------------------------------------------------------------------------------------------
# regressions: one per bug the fuzzing found


def test_decompression_bombs_are_refused_from_the_header():
    """Was: 20,000 x 20,000 counted as 'corrupt image'; 10,000 x 10,000 (Pillow only warns) decoded."""
    for w, h in ((20_000, 20_000), (10_000, 10_000)):
        assert w * h > MAX_PIXELS
        with pytest.raises(BadImage, match="image too large"):
            open_image(crafted_png(w, h))


def test_zero_size_and_odd_modes():
    with pytest.raises(BadImage, match="corrupt image"):
        open_image(crafted_png(0, 7))
    for mode in ("I;16", "CMYK", "LA", "P", "F", "1"):
        buf = io.BytesIO()
        Image.new(mode, (3, 2)).save(buf, "TIFF")
        assert open_image(buf.getvalue())[0].mode == "RGB"


def _shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data or b""))


def test_members_outside_the_shard_or_links_are_counted(tmp_path):
    """Was: a '../k' or '/abs/k' key went through and crashed pretokenize's writer; a link was dropped
    without being counted."""
    _shard(tmp_path / "s.tar", [("../up.png", _png()), ("../up.txt", b"c"), ("/abs/k.png", _png()), ("/abs/k.txt", b"c"),
                                ("ln.png", None), ("ln.txt", b"c"), ("./dot.png", _png()), ("./dot.txt", b"dot"),
                                ("sub/k.png", _png()), ("sub/k.txt", b"sub")])
    skips = SkipCounter()
    got = [s.key for s in read_shards(str(tmp_path / "s.tar"), skips)]
    assert got == ["./dot", "sub/k"] and skips.as_dict() == {"unsafe member": 3}
    assert [safe_key(k) for k in got] == ["dot", "sub_k"]


def test_records_that_are_not_objects_are_corrupt_json(tmp_path):
    """Was: a shard's `[1]` or `3` record reached pretokenize and `inspect` as meta (TypeError, AttributeError);
    deep nesting raised RecursionError."""
    members = [("a.png", _png()), ("a.txt", b"c"), ("a.json", b"[1]"), ("b.png", _png()), ("b.txt", b"c"),
               ("b.json", b"[" * 100_000), ("c.png", _png()), ("c.txt", b"c"), ("c.json", b'{"ok": 1}')]
    _shard(tmp_path / "s.tar", members)
    skips = SkipCounter()
    assert [s.meta for s in read_shards(str(tmp_path / "s.tar"), skips)] == [{"ok": 1}]
    assert skips.as_dict() == {"corrupt json": 2}


def test_pack_manifest_with_bad_lines_and_non_utf8(tmp_path):
    """Was: a manifest line that was not UTF-8 raised UnicodeDecodeError; a non-string or NUL-holding
    path raised TypeError or ValueError; a folder's `[1]` record raised TypeError in pack."""
    (tmp_path / "caf\xe9.png".encode("latin-1").decode("utf-8", "surrogateescape")).write_bytes(_png())
    (tmp_path / "ok.png").write_bytes(_png())
    lines = [b'{"path": "caf\xe9.png", "caption": "latin-1 name"}', b'{"path": "ok.png", "caption": "caf\xe9"}',
             b'{"path": 5, "caption": "x"}', b'{"path": "a\\u0000b.png", "caption": "x"}', b"[" * 100_000,
             b'{"path": "ok.png", "caption": "fine"}']
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines))
    shards = list(pack(str(tmp_path / "m.jsonl"), tmp_path / "out"))
    assert [s.caption for s in read_shards([str(p) for p in shards])] == ["latin-1 name", "fine"]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.png").write_bytes(_png())
    (tmp_path / "f" / "a.txt").write_text("a")
    (tmp_path / "f" / "a.json").write_text("[1]")
    assert list(pack(str(tmp_path / "f"), tmp_path / "out2")) == []


def test_csv_manifest_with_a_huge_field_skips_that_row(tmp_path):
    """Was: a field over csv.field_size_limit() raised csv.Error out of `data pack`."""
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "m.csv").write_text(f"path,caption\nok.png,{'x' * 200_000}\nok.png,fine\n")
    skips = SkipCounter()
    assert [i.caption for i in iter_files(str(tmp_path / "m.csv"), skips)] == ["fine"]
    assert skips.as_dict() == {"no image": 1}


def test_tokenize_reads_non_utf8_paths_from_stdin(tmp_path, run_cli, monkeypatch):
    """Was: a file name that is not UTF-8 on stdin raised UnicodeDecodeError out of `arimg tokenize`."""
    name = bytes(tmp_path / "x") + b"-\xe9.png"
    with open(name, "wb") as f:
        f.write(_png((16, 16)))
    tok = row_data.tiny_tokenizer(tmp_path / "tok")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(name + b"\n")))
    code, out, err = run_cli("tokenize", "-t", tok, "--device", "cpu", "-")
    assert code == 0, err
    assert json.loads(out)["path"].encode("utf-8", "surrogateescape") == name


def _broken_chunk_png() -> bytes:
    """A PNG whose pixel data goes on in a chunk with a garbage type: Pillow raises SyntaxError."""
    data = _png((9, 24))
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    pixels = data[start + 8:start + 8 + length]
    half = len(pixels) // 2
    return (data[:start] + row_data._png_chunk(b"IDAT", pixels[:half]) + row_data._png_chunk(b"\xc7\xca\xb1\xf0", pixels[half:])
            + data[start + 12 + length:])


def test_syntax_errors_of_pillow_are_corrupt_images(tmp_path):
    """Was: `arimg tokenize` caught OSError only, so a PNG that Pillow rejects with SyntaxError crashed it."""
    from arlm.errors import UserError
    from arlm.tokenizer.codec import read_image

    with pytest.raises(BadImage, match="corrupt image"):
        open_image(_broken_chunk_png())
    (tmp_path / "b.png").write_bytes(_broken_chunk_png())
    with pytest.raises(UserError, match="corrupt image"):
        read_image(str(tmp_path / "b.png"), None)


def test_resize_crop_of_a_sliver_resizes_the_window_only():
    """Was: a 1 x 80,000 image (80 k pixels, no bomb) was resized whole to 64 x 5,120,000 (1.3 GB) first."""
    from arlm.data.loader import resize_crop

    sliver = Image.new("RGB", (1, 80_000), "red")
    out = resize_crop(sliver, (64, 64), random.Random(0))
    assert out.size == (64, 64) and out.getpixel((5, 5)) == (255, 0, 0)
    # an ordinary image still takes the old path: the same pixels as resize-then-crop
    image = Image.frombytes("RGB", (40, 20), bytes(range(256)) * 9 + bytes(96))
    assert resize_crop(image, (16, 16)).tobytes() == image.resize((32, 16), Image.BICUBIC, reducing_gap=3.0).crop((8, 0, 24, 16)).tobytes()
