"""pretokenize, make-prefs and eval generator under torchrun (2 processes, gloo on the CPU): each rank does its
share, rank 0 writes, and the folder holds what one process writes (paths to the folder aside).

One process runs on two threads, each rank of two on one: a convolution or a matmul may then round otherwise
(on AVX2 kernels a decoded pixel moves by 1, a reward in its seventh digit). So what is discrete (codes,
verdicts, the pairs chosen, file names, keys) must be equal, and what is computed in floating point is
compared with the tolerances below, never byte for byte."""

import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arlm.data.shards import ShardWriter, SkipCounter, expand, raw_samples

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args, nproc=2, env=ENV):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "arimg",
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


REL = 1e-5  # a float of a report or a record: measured 2e-7 between 1 and 2 processes on AVX2 kernels
PIXEL = 2  # a decoded pixel may move by this much (measured: 1) ...
PIXEL_SHARE = 0.01  # ... in at most this share of an image's values


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, the folder's own path in them written OUT."""
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"OUT")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _close_data(a, b, where: str) -> None:
    """Parsed JSON alike: equal structure, equal strings, ints and booleans, floats within REL."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=REL, abs_tol=1e-12), f"{where}: {a} against {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _close_data(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close_data(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} against {b!r}"


def _close_file(name: str, a: bytes, b: bytes) -> None:
    """One file's content alike, by its kind (a tar shard member by member)."""
    if name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(a)) as ta, tarfile.open(fileobj=io.BytesIO(b)) as tb:
            assert ta.getnames() == tb.getnames(), name
            for m in ta.getmembers():
                _close_file(f"{name}/{m.name}", ta.extractfile(m).read(), tb.extractfile(m.name).read())
    elif name.endswith(".png"):
        pa, pb = (np.asarray(Image.open(io.BytesIO(x)), dtype=np.int16) for x in (a, b))
        assert pa.shape == pb.shape, name
        diff = np.abs(pa - pb)
        assert diff.max() <= PIXEL and (diff > 0).mean() <= PIXEL_SHARE, \
            f"{name}: {(diff > 0).mean():.2%} of the values differ, by up to {diff.max()}"
    elif name.endswith(".npy"):
        xa, xb = np.load(io.BytesIO(a)), np.load(io.BytesIO(b))
        assert xa.dtype == xb.dtype and xa.shape == xb.shape, name
        if np.issubdtype(xa.dtype, np.floating):
            np.testing.assert_allclose(xa, xb, rtol=REL, err_msg=name)
        else:
            assert np.array_equal(xa, xb), name  # codes
    elif name.endswith(".json"):
        _close_data(json.loads(a), json.loads(b), name)
    elif name.endswith(".jsonl"):
        la, lb = a.decode().splitlines(), b.decode().splitlines()
        assert len(la) == len(lb), name
        for n, (x, y) in enumerate(zip(la, lb), 1):
            _close_data(json.loads(x), json.loads(y), f"{name}:{n}")
    else:
        assert a == b, name


def _same(one: Path, two: Path) -> None:
    """The two folders hold the same files, alike by their kind."""
    a, b = _files(one), _files(two)
    assert list(a) == list(b)
    for name in a:
        _close_file(name, a[name], b[name])


def _same_report(a: str, one: Path, b: str, two: Path) -> None:
    """Two JSON reports alike, the folders' own paths aside."""
    _close_data(json.loads(a.replace(str(one), "OUT")), json.loads(b.replace(str(two), "OUT")), "report")


@pytest.fixture(scope="module")
def images(tmp_path_factory, synth_dir):
    """The 4 synthetic shards of 12, a fifth holding a corrupt image between two good samples and a sixth that
    breaks off (counted once, though with more readers than shards every reader walks it): shards of uneven
    length, and skip counts that must add up."""
    folder = tmp_path_factory.mktemp("images")
    for p in sorted(synth_dir.glob("*.tar")):
        (folder / p.name).write_bytes(p.read_bytes())
    good = [r for r in raw_samples(expand(str(synth_dir)), SkipCounter())][:2]
    writer = ShardWriter(folder, 3, prefix="zz")
    for n, raw in enumerate([good[0], {**good[1], "png": b"not a png"}, good[1]]):
        writer.write(f"extra{n}", {k: raw[k] for k in ("png", "txt", "json")})
    writer.close()
    first = sorted(synth_dir.glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        cut = tar.getmembers()[-6]  # the image of the eleventh sample: the shard breaks off inside it
    (folder / "zz-000001.tar").write_bytes(first.read_bytes()[:cut.offset_data + cut.size // 2])
    return folder


# 2 x 4 readers > 6 shards: each reader keeps every 8th sample of the whole stream
@pytest.mark.parametrize("workers", [0, pytest.param(4, marks=pytest.mark.slow)])
def test_pretokenize_on_two_ranks_writes_the_shards_of_one(run_cli, tmp_path, images, tiny_run, workers):
    one, two = tmp_path / "one" / "tok", tmp_path / "two" / "tok"
    args = (str(images), "--tokenizer", tiny_run, "--size", "32", "--shard-size", "20")
    code, stdout, err = run_cli("pretokenize", *args, "--out", one, "--batch-size", "16")
    assert code == 0, err
    # other batches (7 images, split between ranks and workers): an image's codes must not depend on its batch
    two_out = _torchrun("pretokenize", *args, "--out", two, "--batch-size", "7", "--num-workers", workers)
    assert two_out.split() == [p.replace(str(one), str(two)) for p in stdout.split()]  # rank 0 alone prints
    info = json.loads((one / "tokens.json").read_text())
    assert info["samples"] == 50 + 10 and info["skipped"] == {"truncated shard": 1, "corrupt image": 1}
    _same(one, two)  # shards and tokens.json; no part left behind


def _prefs_args(out):
    return ("make-prefs", "kinds=[single,count]", "per_kind=3", "k=3", "batch_size=4", "margin=0.0",
            "reward=prefs_reward:brightness", "pairs=all", f"out={out}")


def test_make_prefs_on_two_ranks_writes_the_pairs_of_one(run_cli, tmp_path, tiny_lm, reward_module):
    one, two = tmp_path / "one", tmp_path / "two"
    code, stdout, err = run_cli(*_prefs_args(one), "--ckpt", tiny_lm)
    assert code == 0, err
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(reward_module), ENV.get("PYTHONPATH", "")])}
    got = _torchrun(*_prefs_args(two), "--ckpt", tiny_lm, env=env)  # one report: rank 0's
    _same_report(stdout, one, got, two)
    report = json.loads(got)
    assert report["samples"] == 2 * 3 * 3 and report["pairs"] > 0
    _same(one, two)  # shards (tokens, reference log-probs), candidates, pairs.png, prefs.json, tokens.json


def test_eval_generator_on_two_ranks_gives_the_verdicts_of_one(run_cli, tmp_path, tiny_lm):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("eval", "generator", "--ckpt", tiny_lm, "per_kind=1", "n=3", "seeds=[0,1]", "batch_size=4",
            "sampling.top_k=8")
    code, stdout, err = run_cli(*args, f"out={one}")
    assert code == 0, err
    _same_report(stdout, one, _torchrun(*args, f"out={two}"), two)
    _same(one, two)  # every image, verdicts.jsonl, the sheets
