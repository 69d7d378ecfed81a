"""Row 4, fuzzed data: corrupt, hostile and odd inputs through every command that reads images.

Each trial draws (seeded) a set of samples, most of them carrying exactly one defect, so that the reason
it must be counted under is known: random bytes, a truncated or mislabelled file, a PNG header claiming
20,000 x 20,000 pixels (a decompression bomb, a few hundred bytes on disk), a zero-size image, a caption
that is not UTF-8 or is missing, a JSON record that is not an object; in shards also members named
`../x` or `/abs/x` and links. Good samples come in odd shapes too: CMYK JPEG, 16-bit, palette and LA
PNG, a JPEG named `.png`, a non-UTF-8 file name. The set goes through

- `arimg data pack` (a folder, or a JSON-lines manifest with bad lines of its own),
- the shard reader in-process (`read_shards`),
- `arimg eval images` and `arimg pretokenize` on shards, and `arimg tokenize` on files (argv and stdin).

A trial survives when no command crashed (no traceback; exit codes as documented), every good sample
came out, every bad one was counted under its reason, and no file appeared outside the output folder.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from arlm.data.shards import SkipCounter, raw_samples, read_shards
from tests.faults.common import Row, arimg, files_under

TEST = "tests/faults/test_fuzz_data.py::test_row_fuzzed_data"
SIZE = 16  # tokenize and pretokenize resize to this (a multiple of the tiny tokenizer's stride)


# ------------------------------------------------------------------------------------------------------
# images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header claims (width, height) and whose pixel data is a few bytes: what a decompression
    bomb's header looks like, without the cost of making a real one."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(rng: random.Random, mode: str = "RGB") -> Image.Image:
    w, h = rng.randint(8, 40), rng.randint(8, 40)
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def good_image(rng: random.Random) -> bytes:
    """A decodable image in one of the forms users have: the suffix it is stored under says PNG or JPEG
    but Pillow goes by content, so a JPEG named .png is a good image."""
    kind = rng.choice(["rgb", "gray", "palette", "rgba", "la", "16bit", "cmyk-jpeg", "jpeg", "gif", "thin"])
    if kind == "16bit":
        values = np.random.default_rng(rng.getrandbits(32)).integers(0, 65536, (rng.randint(4, 32), rng.randint(4, 32)))
        return _encode(Image.fromarray(values.astype(np.uint16)), "PNG")
    if kind == "palette":
        image = _noise(rng).convert("P", palette=Image.ADAPTIVE, colors=16)
        return _encode(image, "PNG", transparency=0)  # tRNS: Pillow warns on convert("RGB")
    if kind == "thin":
        return _encode(Image.new("RGB", (rng.randint(1, 3), rng.randint(200, 2000)), "red"), "PNG")
    if kind in ("cmyk-jpeg", "jpeg"):
        return _encode(_noise(rng, "CMYK" if kind == "cmyk-jpeg" else "RGB"), "JPEG")
    if kind == "gif":
        return _encode(_noise(rng, "P"), "GIF")
    return _encode(_noise(rng, {"rgb": "RGB", "gray": "L", "rgba": "RGBA", "la": "LA"}[kind]), "PNG")


# one defect each, and the reason it must be counted under (pack, shard readers; tokenize reports them all)
BAD_IMAGES = {
    "random bytes": (lambda rng: rng.randbytes(rng.randint(0, 300)), "corrupt image"),
    "truncated": (lambda rng: (d := _encode(_noise(rng), "PNG"))[: rng.randint(0, len(d) // 2)], "corrupt image"),
    "text as png": (lambda rng: b"a red circle\n" * rng.randint(0, 5), "corrupt image"),
    "zero size": (lambda rng: crafted_png(rng.choice([0, 7]), 0), "corrupt image"),
    "bomb": (lambda rng: crafted_png(20_000, 20_000), "image too large"),
    "warning-zone bomb": (lambda rng: crafted_png(10_000, 10_000), "image too large"),  # Pillow only warns here
}


# ------------------------------------------------------------------------------------------------------
# a trial's samples


@dataclass
class Sample:
    key: str
    image: bytes | None
    caption: bytes | None  # None: no caption file or member
    meta: bytes | None = None
    reason: str | None = None  # None: a good sample
    trick: str | None = None  # shards only: how its members are named ("../", "/abs", "symlink", "hardlink")


@dataclass
class Trial:
    samples: list[Sample] = field(default_factory=list)

    @property
    def good(self) -> list[Sample]:
        return [s for s in self.samples if s.reason is None]

    def expected(self, reasons: set[str] | None = None) -> Counter:
        return Counter(s.reason for s in self.samples if s.reason and (reasons is None or s.reason in reasons))


def draw(rng: random.Random, n: int, shards: bool) -> Trial:
    """n samples, about half with one defect each (the tar tricks only where the input is a shard)."""
    trial = Trial()
    for i in range(n):
        key = f"k{i:04d}"
        caption = f"sample {i} {rng.choice(['ok', 'déjà vu', '猫', '🙂', 'a  b', 'x' * 300])}".encode()
        s = Sample(key, good_image(rng), caption, json.dumps({"i": i}).encode() if rng.random() < 0.5 else None)
        defect = rng.choice(["none"] * 6 + ["image", "image", "caption", "json"] + (["no image", "trick"] if shards else []))
        if defect == "image":
            make, s.reason = BAD_IMAGES[rng.choice(sorted(BAD_IMAGES))]
            s.image = make(rng)
        elif defect == "caption":
            s.caption = rng.choice([b"\xff\xfe caption in latin-1: caf\xe9", b"", b"  \n", None])
            s.reason = "no caption"
        elif defect == "json":
            s.meta = rng.choice([b"[1, 2]", b"\xff{", b"{not json", b"[" * 100_000 + b"]" * 100_000, b"3"])
            s.reason = "corrupt json"
        elif defect == "no image":
            s.image, s.reason = None, "no image"
        elif defect == "trick":
            s.trick, s.reason = rng.choice(["../", "/abs", "symlink", "hardlink", "fifo"]), "unsafe member"
        trial.samples.append(s)
    return trial


# ------------------------------------------------------------------------------------------------------
# inputs on disk


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def write_shard(path: Path, samples: list[Sample], outside: Path) -> None:
    """One shard of the samples; a trick names members outside the shard (`outside` is where an extracting
    reader would write them) or makes the image a link."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for s in samples:
            prefix = {"../": "../" * 4 + "escaped-", "/abs": f"{outside}/"}.get(s.trick or "", "")
            files = {"txt": s.caption, "json": s.meta}
            if s.image is not None and s.trick in ("symlink", "hardlink", "fifo"):
                info = tarfile.TarInfo(f"{s.key}.png")
                info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[s.trick]
                info.linkname = f"{outside}/linked.png" if s.trick == "symlink" else "k0000.png"
                tar.addfile(info)
            elif s.image is not None:
                tar.addfile(*_member(f"{prefix}{s.key}.png", s.image))
            for ext, data in files.items():
                if data is not None:
                    tar.addfile(*_member(f"{prefix}{s.key}.{ext}", data))


def write_folder(folder: Path, samples: list[Sample]) -> list[Path]:
    """`KEY.png` + `KEY.txt` (+ `KEY.json`) per sample; the image paths."""
    folder.mkdir(parents=True)
    paths = []
    for s in samples:
        paths.append(folder / f"{s.key}.png")
        paths[-1].write_bytes(s.image)
        for ext, data in (("txt", s.caption), ("json", s.meta)):
            if data is not None:
                (folder / f"{s.key}.{ext}").write_bytes(data)
    return paths


def write_manifest(path: Path, samples: list[Sample], images: list[Path], rng: random.Random) -> Counter:
    """A JSON-lines manifest of the samples (caption and record inline), one file renamed to a name that
    is not UTF-8, plus lines that are bad in themselves; what those must be counted as."""
    lines: list[bytes] = []
    for s, p in zip(samples, images):
        if s.reason is None and rng.random() < 0.3:  # a file name in Latin-1 names its file all the same
            p = p.rename(os.fsdecode(bytes(p)[:-4] + b"-\xe9.png"))
        caption = s.caption if s.caption is not None else b""
        meta = json.loads(s.meta) if s.meta and s.meta.startswith(b"{") and s.meta.endswith(b"}") else {}
        # JSON strings hold only UTF-8; raw bytes are spliced in as they would appear in a Latin-1 file
        line = json.dumps({"path": "@PATH@", "caption": "@CAPTION@", **meta}).encode()
        lines.append(line.replace(b"@PATH@", bytes(p)).replace(b"@CAPTION@", caption.replace(b"\n", b" ").strip()))
    bad = [(b"not json at all", "no image"), (b'{"path": 5, "caption": "x"}', "no image"),
           (b'{"path": "nul\\u0000byte.png", "caption": "x"}', "no image"),
           (b'{"path": "missing.png", "caption": "x"}', "no image"), (b"[" * 100_000, "no image"),
           (b'{"path": ["a"], "caption": "x"}', "no image")]
    picked = rng.sample(bad, rng.randint(1, len(bad)))
    for line, _ in picked:
        lines.insert(rng.randint(0, len(lines)), line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Counter(reason for _, reason in picked)


def tiny_tokenizer(run: Path) -> Path:
    """An untrained tiny tokenizer checkpoint: tokenize and pretokenize need one, not a good one."""
    from arlm import checkpoint
    from arlm.config import compose, to_object, to_yaml
    from arlm.tokenizer.model import Tokenizer

    cfg = compose("train_tokenizer", ["tokenizer=tiny", "data=tiny", "trainer=tiny", f"run_dir={run}"])
    model = Tokenizer(to_object(cfg).tokenizer)
    checkpoint.save(run, 0, "tokenizer", {"model": model.state_dict()}, {}, to_yaml(cfg))
    return run


# ------------------------------------------------------------------------------------------------------
# checks


def _traceback(proc) -> bool:
    return b"Traceback" in proc.stderr


def _logged_skips(stderr: bytes) -> Counter:
    """The `skipped N samples: n reason, ...` summary of a command's log (rich may wrap it)."""
    text = " ".join(stderr.decode(errors="replace").split())
    found = re.search(r"skipped \d+ samples: ((?:\d+ [a-z ]+?)(?:, \d+ [a-z ]+?)*)(?= WARNING| INFO|$)", text)
    if not found:
        return Counter()
    return Counter({r: int(n) for n, r in (part.split(" ", 1) for part in found.group(1).split(", "))})


def _captions(shard_dir: Path) -> Counter:
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    return Counter(raw["txt"].decode() for raw in raw_samples(urls, SkipCounter()) if "txt" in raw)


def _good_captions(trial: Trial) -> Counter:
    return Counter(s.caption.decode().strip() for s in trial.good)


class Check:
    """One trial's verdict: the first thing wrong, if any."""

    def __init__(self, root: Path) -> None:
        self.root, self.why = root, None

    def expect(self, ok: bool, why: str) -> None:
        if not ok and self.why is None:
            self.why = why

    def wrote_only_under(self, before: set[Path], out: Path | None, what: str) -> None:
        new = files_under(self.root) - before
        stray = sorted(p for p in new if out is None or not p.is_relative_to(out))
        self.expect(not stray, f"{what} wrote outside its output folder: {stray[:3]}")


def one_trial(seed: int, root: Path, tokenizer: Path) -> str | None:
    """Run one trial in `root`; None when it survived, else why not."""
    rng = random.Random(seed)
    check = Check(root)
    outside = root / "outside"  # where an extracting reader would put a tar's absolute members

    # data pack: a folder or a manifest of files
    files = draw(rng, rng.randint(4, 10), shards=False)
    images = write_folder(root / "src", files.samples)
    expected = files.expected()
    src = root / "src"
    if seed % 2:
        src = root / "manifest.jsonl"
        for s in files.samples:  # a manifest carries its records inline: sidecars are not read
            if s.reason == "corrupt json":
                s.reason = None
        expected = files.expected() + write_manifest(src, files.samples, images, rng)
    before = files_under(root)
    proc = arimg("data", "pack", src, root / "packed", "--shard-size", 3, cwd=root)
    check.expect(proc.returncode == 0 and not _traceback(proc), f"pack: exit {proc.returncode}: {proc.stderr[-300:]!r}")
    check.wrote_only_under(before, root / "packed", "pack")
    check.expect(_captions(root / "packed") == _good_captions(files), "pack: good samples lost or bad ones kept")
    check.expect(_logged_skips(proc.stderr) == expected, f"pack: skips {_logged_skips(proc.stderr)} != {expected}")

    # tokenize: the same files, through argv or stdin
    paths = sorted(p for p in files_under(root / "src") if p.suffix == ".png")
    good = {bytes(p) for p in paths if _decodes_as_good(p, files)}
    stdin = rng.random() < 0.5
    before = files_under(root)
    proc = arimg("tokenize", "-t", tokenizer, "--size", SIZE, "--device", "cpu", *(["-"] if stdin else paths),
                 input=b"".join(bytes(p) + b"\n" for p in paths) if stdin else None, cwd=root)
    out = [os.fsencode(json.loads(ln)["path"]) for ln in proc.stdout.splitlines()]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(b"arimg: error:")]
    failed = len(paths) - len(good)
    check.expect(not _traceback(proc) and proc.returncode == (1 if failed else 0), f"tokenize: exit {proc.returncode}: {proc.stderr[-300:]!r}")
    check.expect(set(out) == good and len(out) == len(good), f"tokenize: {len(out)} of {len(good)} good images out")
    check.expect(len(errors) == failed + bool(failed), f"tokenize: {len(errors)} error lines for {failed} bad images")
    check.wrote_only_under(before, None, "tokenize")

    # shards: read in-process, judged and pretokenized
    shard = draw(rng, rng.randint(4, 12), shards=True)
    (root / "shards").mkdir()
    write_shard(root / "shards" / "a.tar", shard.samples, outside)
    junk = rng.random() < 0.5
    if junk:  # a shard that is no tar at all
        (root / "shards" / "b.tar").write_bytes(rng.randbytes(rng.randint(0, 2000)))
    expected = shard.expected() + Counter({"truncated shard": 1} if junk else {})
    skips = SkipCounter()
    before = files_under(root)
    try:
        read = Counter(s.caption for s in read_shards(str(root / "shards"), skips))
    except Exception as e:  # noqa: BLE001 - a row counts what a test would assert
        return f"read_shards raised {e!r}"
    check.expect(read == _good_captions(shard), "read_shards: good samples lost or bad ones kept")
    check.expect(Counter(skips.as_dict()) == expected, f"read_shards: skips {skips.as_dict()} != {dict(expected)}")
    check.wrote_only_under(before, None, "read_shards")

    (root / "judged").mkdir()
    before = files_under(root)
    proc = arimg("eval", "images", root / "shards", f"details={root / 'judged' / 'details.jsonl'}", cwd=root)
    report = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    check.expect(proc.returncode == 0 and not _traceback(proc), f"eval images: exit {proc.returncode}: {proc.stderr[-300:]!r}")
    check.expect(report.get("n") == len(shard.good), f"eval images: judged {report.get('n')} of {len(shard.good)}")
    check.expect(Counter(report.get("skipped", {})) == expected, f"eval images: skips {report.get('skipped')} != {dict(expected)}")
    check.wrote_only_under(before, root / "judged", "eval images")

    before = files_under(root)
    proc = arimg("pretokenize", root / "shards", "-t", tokenizer, "--out", root / "tokens", "--size", SIZE,
                 "--batch-size", 4, "--shard-size", 5, "--device", "cpu", cwd=root)
    info = json.loads((root / "tokens" / "tokens.json").read_text()) if (root / "tokens" / "tokens.json").is_file() else {}
    check.expect(proc.returncode == 0 and not _traceback(proc), f"pretokenize: exit {proc.returncode}: {proc.stderr[-300:]!r}")
    check.expect(info.get("samples") == len(shard.good) and _captions(root / "tokens") == _good_captions(shard),
                 f"pretokenize: {info.get('samples')} of {len(shard.good)} samples")
    check.expect(Counter(info.get("skipped", {})) == expected, f"pretokenize: skips {info.get('skipped')} != {dict(expected)}")
    check.wrote_only_under(before, root / "tokens", "pretokenize")
    check.expect(not outside.exists(), "something was written where a tar member's absolute path points")
    return check.why


def _decodes_as_good(path: Path, trial: Trial) -> bool:
    """Whether tokenize must read this file: its sample's image is good (caption and record play no part)."""
    key = path.name[:5]
    return next(s for s in trial.samples if s.key == key).reason not in {r for _, r in BAD_IMAGES.values()}


def run(trials: int, workdir: Path) -> Row:
    row = Row("fuzzed data", test=TEST)
    start = time.perf_counter()
    tokenizer = tiny_tokenizer(Path(workdir) / "tokenizer")
    for t in range(trials):
        root = Path(workdir) / f"trial-{t:04d}"
        root.mkdir(parents=True)
        try:
            why = one_trial(t, root, tokenizer)
        except Exception as e:  # noqa: BLE001 - a bug of the row itself still counts, never aborts the table
            why = f"row error: {e!r}"
        row.record(why and f"trial {t}: {why}")
    row.seconds = time.perf_counter() - start
    return row
