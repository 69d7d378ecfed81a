"""train-tokenizer under torchrun (2 processes, gloo on the CPU): the losses and the codebook of one process,
codebooks identical on every rank, exact resume, and a world size that does not divide the batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arlm import checkpoint
from arlm.training.tokenizer import train
from conftest import TINY, tiny_cfg

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# every part that must be kept in step across processes: EMA codebook with k-means init and restarts (decay
# 0.5 and threshold 1: codes die within the 4 steps), the discriminator with LeCAM and the adaptive weight,
# and a weight EMA
GAN_VQ = ("tokenizer.ema=true", "tokenizer.decay=0.5", "tokenizer.dead_threshold=1.0", "trainer.ema=0.9",
          "tokenizer.loss.disc_weight=0.5", "tokenizer.loss.disc_start=2", "tokenizer.loss.disc_channels=16",
          "tokenizer.loss.lecam=0.1")
NOISE = ("img_s",)  # timings: never equal


def _torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def _train2(synth_dir, run, *extra):
    proc = _torchrun("-m", "arimg", "train-tokenizer", *TINY, f"data.shards={synth_dir}", f"run_dir={run}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(run)]  # rank 0 alone prints
    return run


def _rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, name):
    return checkpoint.load_weights(checkpoint.latest(run), name)


@pytest.fixture(scope="module")
def two(tmp_path_factory, synth_dir):
    """4 steps of the GAN/EMA-VQ tiny run in 2 processes, checkpoints at 2 and 4."""
    return _train2(synth_dir, tmp_path_factory.mktemp("ddp") / "two", *GAN_VQ)


def test_codebooks_stay_identical_on_every_rank(tmp_path):
    """k-means init, EMA updates and dead-code restarts: the same codebook state on both ranks, bit for bit,
    and that of one process on the global batch up to summation order."""
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    subprocess.run([sys.executable, str(HERE / "torchrun_tokenizer_probe.py"), str(tmp_path / "one")], env=ENV,
                   check=True, timeout=120)
    proc = _torchrun(str(HERE / "torchrun_tokenizer_probe.py"), str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, r0, r1 = (torch.load(tmp_path / d / f"rank{r}.pt") for d, r in (("one", 0), ("two", 0), ("two", 1)))
    assert all(s["restarted"] > 0 for s in one[1:])  # restarts happened at every step after the init
    for a, b, c in zip(one, r0, r1):
        assert a["restarted"] == b["restarted"] == c["restarted"]
        for k in a["state"]:
            assert torch.equal(b["state"][k], c["state"][k]), k
            torch.testing.assert_close(b["state"][k], a["state"][k], atol=1e-6, rtol=0)  # measured 2.4e-7


def test_two_processes_give_the_losses_and_codebook_of_one(tmp_path, synth_dir, two):
    one = train(tiny_cfg(tmp_path, synth_dir, *GAN_VQ, name="one"))
    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in b] == [1, 2, 3, 4] and "d" in b[-1] and "g" in b[-1]
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6)  # same samples, same weights, same k-means
    for ra, rb in zip(a, b):  # later steps: averaged gradients, summed EMA statistics (measured <= 3e-5)
        for k in ("loss", "rec", "commit", "g", "d", "psnr", "perplexity"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4), (rb["step"], k)
    for name in ("model", "disc"):
        wa, wb = _weights(one, name), _weights(two, name)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-3)
    cb = "quantizer.codebook"
    assert (_weights(two, "model")[cb] - _weights(one, "model")[cb]).abs().max() < 1e-4


def test_resume_under_two_processes_continues_the_same_run(tmp_path, synth_dir, two):
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    (cut / "checkpoints" / "latest").write_text("step-0000002")
    _train2(synth_dir, cut, *GAN_VQ, "resume=true")
    a, b = _rows(two), _rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in NOISE} == {k: v for k, v in rb.items() if k not in NOISE}
    for name in ("model", "ema", "disc"):
        wa, wb = _weights(two, name), _weights(cut, name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    state = checkpoint.load_state(checkpoint.latest(cut))
    assert state["world_size"] == 2 and {r for r, _ in state["data"]["positions"]} == {0, 1}  # both ranks' places


def test_a_world_size_that_does_not_divide_the_batch_is_a_one_line_error(tmp_path, synth_dir):
    run = tmp_path / "run"
    proc = _torchrun("-m", "arimg", "train-tokenizer", *TINY, f"data.shards={synth_dir}", f"run_dir={run}",
                     "data.batch_size=5")
    assert proc.returncode != 0  # torchrun's own: 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("arimg: error:")]
    assert len(errors) == 2  # one per rank, the same line
    assert "data.batch_size 5" in errors[0] and "2 processes" in errors[0] and errors[0] == errors[1]
    # torchrun's summary: the first rank to exit did so with 2; it may stop the other before that one exits
    assert proc.stderr.count("exitcode  : 2") >= 1
    assert "/arlm/" not in proc.stderr  # the only traceback is torchrun's, none of ours
    assert not (run / "config.yaml").exists()


@pytest.mark.slow
def test_lfq_entropy_is_that_of_the_global_batch(tmp_path, synth_dir):
    """LFQ's batch entropy is not a mean over samples: it is taken over the processes' averaged distribution."""
    lfq = ("tokenizer.quantizer=lfq", "tokenizer.code_dim=6")
    one = train(tiny_cfg(tmp_path, synth_dir, *lfq, name="one"))
    two = _train2(synth_dir, tmp_path / "two", *lfq)
    for ra, rb in zip(_rows(one), _rows(two)):  # measured <= 6e-7
        for k in ("loss", "entropy", "commit"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), (rb["step"], k)
