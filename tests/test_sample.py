"""The decoding engine and `arimg sample`: cache vs recomputation, guidance, seeds, batching, streaming,
completion, bad inputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from arlm import checkpoint
from arlm.generation.sampler import image_seed
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import GumbelNoise, Settings, sample, teacher_forced
from arlm.transformer.sequence import positions

PROMPTS = ["a red circle", "", "three green triangles on a black background"]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return load_model(tiny_lm, "cpu")


def reference(model, vocab, prompt, seed, h, w, cfg=1.0, keep=None):
    """One image, the slow obvious way: no batch, no padding, no cache; the twin run separately; the draw
    from the image's own noise (the Gumbel-max trick, as the engine)."""
    n, lo, K = h * w, vocab.visual0, vocab.codebook_size
    noise = GumbelNoise([seed], K, "cpu")
    seqs = {"c": vocab.prefix(prompt, h, w), "u": vocab.prefix("", h, w)}
    codes = [] if keep is None else keep.flatten().tolist()
    for _ in range(len(codes), n):
        logits = {}
        for name, pre in seqs.items():
            toks = torch.tensor([pre + [c + lo for c in codes]])
            pos = positions(torch.arange(toks.shape[1])[None], torch.tensor([[len(pre)]]), h, w, n)
            logits[name] = model(toks, pos)[0, -1, lo:lo + K].float()
        x = logits["u"] + cfg * (logits["c"] - logits["u"]) if cfg != 1 else logits["c"]
        codes.append(int((x + noise.step(len(codes))[0]).argmax()))
    return torch.tensor(codes).view(h, w)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_batched_cached_sampling_equals_the_slow_reference(lm, cfg):
    model, vocab, _ = lm
    seeds = [image_seed(0, p, 0) for p in PROMPTS]
    fast = sample(model, vocab, PROMPTS, seeds, 3, 4, Settings(cfg=cfg))  # padded rows, one batch, KV cache
    for i, p in enumerate(PROMPTS):
        assert torch.equal(fast[i], reference(model, vocab, p, seeds[i], 3, 4, cfg)), p


def test_cache_equals_recomputation(lm):
    model, vocab, _ = lm
    seeds = [1, 2, 3]
    for settings in (Settings(cfg=3.0, cfg_schedule="linear"), Settings(temperature=0)):
        a = sample(model, vocab, PROMPTS, seeds, 4, 4, settings)
        b = sample(model, vocab, PROMPTS, seeds, 4, 4, settings, use_cache=False)
        assert torch.equal(a, b)


def test_an_image_is_the_same_in_any_batch(lm):
    model, vocab, _ = lm
    s = Settings(cfg=2.0, top_k=20, top_p=0.9)
    together = sample(model, vocab, PROMPTS, [7, 8, 9], 4, 4, s)
    for i, p in enumerate(PROMPTS):
        assert torch.equal(sample(model, vocab, [p], [7 + i], 4, 4, s)[0], together[i])
    assert not torch.equal(together[0], sample(model, vocab, [PROMPTS[0]], [70], 4, 4, s)[0])


def test_gumbel_max_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    noise = GumbelNoise([3], 4, "cpu", chunk=1000)
    draws = torch.stack([(logits + noise.step(j)[0]).argmax() for j in range(20000)])
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.015, rtol=0)


def test_schedules_and_filters():
    s = Settings(cfg=3.0, cfg_schedule="interval", cfg_interval=(0.25, 0.5))
    assert [s.scale(j, 8) for j in range(8)] == [1, 1, 3, 3, 1, 1, 1, 1]
    lin = Settings(cfg=3.0, cfg_schedule="linear")
    assert lin.scale(7, 8) == 3.0 and 1 < lin.scale(0, 8) < lin.scale(3, 8) < 3
    assert not Settings(cfg=1.0).guided(8) and Settings(cfg=1.5).guided(8)
    from arlm.transformer.sample import filter_logits

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    kept = lambda s: torch.isfinite(filter_logits(logits, s))[0].tolist()  # noqa: E731
    assert kept(Settings(top_k=2)) == [True, True, False, False]
    assert kept(Settings(top_p=0.5)) == [True, False, False, False]  # the top id alone holds 64%
    assert kept(Settings(top_p=0.85)) == [True, True, False, False]  # 64% + 24%
    assert kept(Settings(top_p=0.9)) == [True, True, True, False]
    assert kept(Settings(min_p=0.3)) == [True, True, False, False]  # e^-1 = 0.37 of the top id's probability
    assert kept(Settings(min_p=0.4)) == [True, False, False, False]
    assert kept(Settings(min_p=1.0)) == [True, False, False, False]  # the top id alone: greedy
    # after temperature: 1.5, 1 and 0.5 lie within ln(1 / 0.3) = 1.2 of the top
    assert kept(Settings(temperature=2.0, min_p=0.3)) == [True, True, True, False]
    for bad in (Settings(cfg_schedule="cosine"), Settings(top_p=0), Settings(cfg_interval=(0.5, 0.5)),
                Settings(min_p=-0.1), Settings(min_p=1.5)):
        with pytest.raises(ValueError):
            bad.check()


def test_completion_keeps_the_kept_rows(lm):
    model, vocab, _ = lm
    keep = torch.randint(0, vocab.codebook_size, (2, 2, 4))
    out = sample(model, vocab, ["a red circle", "x"], [1, 2], 4, 4, Settings(cfg=2.0), keep=keep)
    assert torch.equal(out[:, :2], keep)
    assert torch.equal(out[1], reference(model, vocab, "x", 2, 4, 4, 2.0, keep=keep[1]))


def test_sample_command(run_cli, tiny_lm, tmp_path, synth_dir):
    out = tmp_path / "out"
    code, stdout, err = run_cli("sample", "--ckpt", tiny_lm, "-p", "a red circle", "-p", "", "-p", "../../etc/passwd",
                                "--n", "2", "--batch-size", "3", "--cfg", "2", "--grid", "--out", out, "--seed", "5")
    assert code == 0, err
    recs = [json.loads(ln) for ln in stdout.splitlines()]
    assert [(r["prompt"], r["index"]) for r in recs] == [(p, i) for p in ("a red circle", "", "../../etc/passwd")
                                                        for i in range(2)]
    for r in recs:
        path = out / f"{r['path'].split('/')[-1]}"
        assert str(path) == r["path"] and Image.open(path).size == (32, 32)  # the training grid, 8x8 x 4
        assert r["settings"]["cfg"] == 2 and r["image_seed"] == image_seed(5, r["prompt"], r["index"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{k:05d}-{i:03d}.png" for k in range(3) for i in range(2)] + [f"{k:05d}-grid.png" for k in range(3)])
    # the same command again gives the same bytes; --batch-size does not change an image
    code, again, _ = run_cli("sample", "--ckpt", tiny_lm, "-p", "a red circle", "--n", "2", "--batch-size", "1",
                             "--cfg", "2", "--out", tmp_path / "again", "--seed", "5")
    for a, b in zip(recs[:2], [json.loads(ln) for ln in again.splitlines()]):
        assert open(a["path"], "rb").read() == open(b["path"], "rb").read()
    # completion, and a non-square size
    img = next(p for p in out.iterdir() if p.name.endswith("000.png"))
    code, stdout, err = run_cli("sample", "--ckpt", tiny_lm, "-p", "a red circle", "--prefix-image", img,
                                "--keep-rows", "3", "--size", "32x48", "--out", tmp_path / "c")
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["settings"]["keep_rows"] == 3 and Image.open(rec["path"]).size == (48, 32)


def test_sample_bad_inputs(run_cli, tiny_lm, tmp_path):
    def run(*args):
        code, out, err = run_cli("sample", "--ckpt", tiny_lm, "--out", tmp_path / "o", *args)
        return code, out, [ln for ln in err.splitlines() if ln.startswith("arimg: error:")]

    code, out, errors = run("-p", "x" * 500, "-p", "a red circle")
    assert code == 1 and len(out.splitlines()) == 1 and "prompt 1" in errors[0] and "context" in errors[0]
    code, _, errors = run("-p", "a", "--size", "30")
    assert code == 2 and "stride" in errors[0]
    code, _, errors = run("-p", "a", "--cfg-schedule", "cosine")
    assert code == 2 and "schedule" in errors[0]
    code, _, errors = run("-p", "a", "--keep-rows", "9", "--prefix-image", str(tmp_path / "missing.png"))
    assert code == 2 and "keep-rows" in errors[0]
    code, _, errors = run_cli("sample", "--ckpt", tmp_path / "nope", "-p", "a")[0], None, None
    assert code == 1


def test_stdin_is_streamed_and_bad_lines_go_on(tiny_lm, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "arimg", "sample", "--ckpt", str(tiny_lm), "--prompt", "-",
                             "--out", str(tmp_path / "s"), "--cfg", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b"a red circle\n")
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())  # output before stdin ends
    assert first["prompt"] == "a red circle"
    proc.stdin.write(b"\xff\xfe bad bytes\n" + b"y" * 400 + b"\n" + b"a blue square\n")
    proc.stdin.close()
    rest = proc.stdout.read().decode().splitlines()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1
    assert [json.loads(ln)["prompt"] for ln in rest] == ["a blue square"]
    errors = [ln for ln in err.splitlines() if ln.startswith("arimg: error:")]
    assert "stdin line 2: not UTF-8" in errors[0] and "prompt 3" in errors[1] and "2 input(s) failed" in errors[2]


def test_rerank_keeps_the_best_scored_candidate(run_cli, tiny_lm, tmp_path):
    # one prompt: no batch holds padding, whose masked attention rounds differently from the unmasked one
    args = ("sample", "--ckpt", tiny_lm, "-p", "two blue squares", "--n", "6", "--top-k", "8")
    code, plain, err = run_cli(*args, "--out", tmp_path / "plain")
    assert code == 0, err
    code, ranked, err = run_cli(*args, "--out", tmp_path / "ranked", "--rerank", "4", "--batch-size", "5")
    assert code == 0, err
    plain = {(r["prompt"], r["index"]): r for r in map(json.loads, plain.splitlines())}
    ranked = [json.loads(line) for line in ranked.splitlines()]
    assert len(ranked) == 6
    for r in ranked:
        rr = r["rerank"]
        assert rr["candidates"] == 4 and len(rr["scores"]) == 4
        assert rr["score"] == max(rr["scores"]) == rr["scores"][rr["chosen"]]
        assert rr["chosen"] == rr["scores"].index(max(rr["scores"]))  # the first of the best
        same = open(r["path"], "rb").read() == open(plain[(r["prompt"], r["index"])]["path"], "rb").read()
        assert same == (rr["chosen"] == 0)  # candidate 0 is the image drawn without reranking
    code, _, err = run_cli(*args, "--out", tmp_path / "x", "--rerank", "0")
    assert code == 2 and "--rerank" in err


def test_teacher_forced_draws_each_code_after_the_true_ones(lm):
    """RobusTok's data: code j is drawn from the guided logits after the prompt and the true codes before j, all
    positions in one pass; greedy, it is the slow one-prefix-at-a-time argmax, and the sampler's own draw when
    an image's first rows are kept."""
    model, vocab, _ = lm
    prompts = ["a red circle", "three green triangles on a black background"]
    grids = sample(model, vocab, prompts, [1, 2], 4, 4, Settings(cfg=2.0))
    greedy = Settings(cfg=2.0, temperature=0)
    forced = teacher_forced(model, vocab, prompts, grids, greedy)
    lo, K = vocab.visual0, vocab.codebook_size
    for b, prompt in enumerate(prompts):
        for j in range(16):
            logits = []
            for text in (prompt, ""):
                pre = vocab.prefix(text, 4, 4)
                toks = torch.tensor([pre + (grids[b].flatten()[:j] + lo).tolist()])
                pos = positions(torch.arange(toks.shape[1])[None], torch.tensor([[len(pre)]]), 4, 4, 16)
                logits.append(model(toks, pos)[0, -1, lo:lo + K].float())
            assert int(forced[b].flatten()[j]) == int((logits[1] + 2.0 * (logits[0] - logits[1])).argmax())
    for r in range(4):
        assert torch.equal(forced[:, r, 0], sample(model, vocab, prompts, [1, 2], 4, 4, greedy, keep=grids[:, :r])[:, r, 0])
    # drawn: valid codes, the same under the same seed; top-k 1 is the greedy draw
    torch.manual_seed(0)
    drawn = teacher_forced(model, vocab, prompts, grids, Settings(cfg=2.0, top_k=5))
    torch.manual_seed(0)
    assert torch.equal(drawn, teacher_forced(model, vocab, prompts, grids, Settings(cfg=2.0, top_k=5)))
    assert drawn.shape == grids.shape and 0 <= int(drawn.min()) and int(drawn.max()) < K
    assert torch.equal(teacher_forced(model, vocab, prompts, grids, Settings(cfg=2.0, top_k=1)), forced)


def test_a_run_moved_with_its_tokenizer_samples_from_any_folder(run_cli, tmp_path, synth_dir, monkeypatch):
    """Paths a run records of another (its image tokenizer, the run it started from) are relative to the
    recording run: the tree moved as a whole samples, and tells its lineage, from any working folder. A path recorded against the working folder, as older runs did,
    fails from elsewhere with one line naming the file that recorded it."""
    import shutil

    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    a.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(a)
    for args in (["train-tokenizer", "tokenizer=tiny", "data=tiny", "trainer=tiny", f"data.shards={synth_dir}",
                  "run_dir=runs/tok"],
                 ["pretokenize", str(synth_dir), "--tokenizer", "runs/tok", "--out", "data/tok", "--size", "32"],
                 ["pretrain", "model=tiny", "trainer=tiny", "trainer.compile=false", "sample.n=0", "data.batch_size=8",
                  "data.shards=data/tok", "run_dir=runs/pt"],
                 ["sft", "trainer=tiny", "trainer.compile=false", "sample.n=0", "data.batch_size=8", "init_from=runs/pt",
                  "data.shards=data/tok", "run_dir=runs/sft"]):
        code, _, err = run_cli(*args)
        assert code == 0, err
    shutil.move(a, b)
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli("sample", "--ckpt", b / "runs" / "pt", "-p", "a red circle", "--out", "s")
    assert code == 0, err
    assert Path(json.loads(out)["path"]).is_file()
    code, out, err = run_cli("info", b / "runs" / "sft")  # its lineage is found from here too
    assert code == 0 and [s["stage"] for s in json.loads(out)["lineage"]] == ["pretrain", "sft"], err

    ckpt = checkpoint.latest(b / "runs" / "pt")
    vocab = json.loads((ckpt / "vocab.json").read_text())
    vocab["tokenizer"] = str(Path("runs/tok/checkpoints") / checkpoint.latest(b / "runs" / "tok").name)
    (ckpt / "vocab.json").write_text(json.dumps(vocab))  # as older runs recorded it: against their working folder
    code, _, err = run_cli("sample", "--ckpt", b / "runs" / "pt", "-p", "a red circle", "--out", "s")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"no such run or checkpoint: {vocab['tokenizer']}" in err and str(ckpt / "vocab.json") in err
    assert "arimg export" in err
    monkeypatch.chdir(b)  # from the folder it was trained in, it still samples
    code, _, err = run_cli("sample", "--ckpt", "runs/pt", "-p", "a red circle", "--out", "s")
    assert code == 0, err
