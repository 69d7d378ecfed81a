"""The tokenizer end to end: training (both stages), resume, checkpoints, tokenize/detokenize/pretokenize, eval."""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from arlm import checkpoint
from arlm.config import TokenizerConfig, compose, to_object
from arlm.errors import ConfigError, UserError
from arlm.data.shards import SkipCounter, read_shards, raw_samples, expand
from arlm.tokenizer.codec import load_tokenizer
from arlm.tokenizer.model import Tokenizer, to_unit
from arlm.training.tokenizer import train
from conftest import TINY, tiny_cfg

def _image_files(synth_dir, tmp_path, n=3):
    paths = []
    for i, s in enumerate(read_shards(str(synth_dir))):
        if i == n:
            break
        p = tmp_path / f"img{i}.png"
        s.image.save(p)
        paths.append(p)
    return paths


def test_tiny_run_writes_a_complete_run_dir(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "run.json", "loss.png", "psnr.png", "usage.png", "images"} <= names
    rows = [json.loads(ln) for ln in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and 0 <= r["usage"] <= 1 for r in rows)
    assert (tiny_run / "checkpoints" / "latest").read_text() == "step-0000004"
    ckpt = checkpoint.resolve(tiny_run, "tokenizer")
    assert {"checkpoint.json", "config.yaml", "model.safetensors", "state.pt"} <= {p.name for p in ckpt.iterdir()}
    state = torch.load(ckpt / "state.pt", weights_only=True)  # plain data only
    assert state["step"] == 4
    grid = Image.open(sorted((tiny_run / "images").glob("recon-*.png"))[-1])
    assert grid.size == (2 * 8 * 32, 2 * 2 * 32)  # 8 inputs above 8 outputs, scaled 2x


def test_loss_goes_down_on_a_fixed_batch(synth_dir):
    torch.manual_seed(0)
    cfg = TokenizerConfig(downsample=4, channels=16, channel_mult=[1, 2, 2], codebook_size=64)
    model = Tokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images = [torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1) for s, _ in zip(read_shards(str(synth_dir)), range(8))]
    x = to_unit(torch.stack(images))
    losses = []
    for _ in range(40):
        recon, _, q = model(x)
        loss = (recon - x).abs().mean() + sum(q.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("quantizer,extra", [("vq", {}), ("vq", {"ema": True, "dead_threshold": 1.0}),
                                             ("fsq", {"code_dim": 4, "fsq_levels": [5, 5, 4, 4]}),
                                             ("lfq", {"code_dim": 6}),
                                             ("vq", {"decoder_attn": 2, "decoder_heads": 2})])
def test_decoding_the_indices_gives_the_reconstruction(quantizer, extra):
    torch.manual_seed(0)
    cfg = TokenizerConfig(quantizer=quantizer, downsample=4, channels=16, channel_mult=[1, 2, 2], codebook_size=64,
                          **extra)
    model = Tokenizer(cfg)
    x = torch.rand(2, 3, 32, 48) * 2 - 1  # non-square
    model(x)[0].mean().backward()  # one training pass (k-means init, EMA, restarts)
    model.eval()
    recon, indices, _ = model(x)
    assert indices.shape == (2, 8, 12) and int(indices.max()) < model.codebook_size
    assert torch.equal(model.decode(indices), recon)
    assert torch.equal(model.encode(x), indices)


def test_token_noise_changes_what_the_decoder_sees_not_the_tokens(synth_dir):
    torch.manual_seed(0)
    model = Tokenizer(to_object(compose("train_tokenizer", TINY)).tokenizer).eval()
    x = to_unit(torch.stack([torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
                             for s, _ in zip(read_shards(str(synth_dir)), range(4))]))
    with torch.no_grad():
        clean, tokens, _ = model(x)
        noisy, same, _ = model(x, token_noise=0.5)
        assert torch.equal(tokens, same) and torch.equal(model.decode(tokens), clean)
        assert not torch.allclose(noisy, clean)


def test_bad_sizes_and_configs():
    from arlm.errors import ConfigError

    model = Tokenizer(TokenizerConfig(downsample=4, channels=16, channel_mult=[1, 2, 2], codebook_size=64))
    with pytest.raises(ValueError, match="multiple of the tokenizer's stride 4"):
        model(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="token ids"):
        model.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(ConfigError, match="downsample"):
        Tokenizer(TokenizerConfig(downsample=8, channel_mult=[1, 2, 2]))
    with pytest.raises(ConfigError, match="quantizer"):
        Tokenizer(TokenizerConfig(quantizer="rvq", downsample=4, channel_mult=[1, 2, 2]))
    with pytest.raises(ConfigError, match="decoder_heads"):  # 32 channels at the lowest resolution, 3 heads
        Tokenizer(TokenizerConfig(downsample=4, channels=16, channel_mult=[1, 2, 2], decoder_attn=1, decoder_heads=3))
    with pytest.raises(ConfigError, match="decoder_attn"):
        Tokenizer(TokenizerConfig(downsample=4, channels=16, channel_mult=[1, 2, 2], decoder_attn=-1))


def _resume_run(tmp_path, synth_dir, extra):
    """4 steps straight, and the same run resumed from its step-2 checkpoint as if killed after it."""
    full = train(tiny_cfg(tmp_path, synth_dir, *extra, name="full"))
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    (cut / "checkpoints" / "latest").write_text("step-0000002")
    train(tiny_cfg(tmp_path, synth_dir, *extra, "resume=true", name="cut"))
    return full, cut


@pytest.mark.parametrize("extra", [
    [],
    # the VQ-GAN stage: discriminator, LeCAM, edge loss, EMA of the weights, dead-code restarts, random crops
    ["tokenizer.loss.disc_weight=0.5", "tokenizer.loss.disc_channels=8", "tokenizer.loss.lecam=0.01",
     "tokenizer.loss.perceptual=0.5", "trainer.ema=0.9", "tokenizer.dead_threshold=2.0", "data.crop=random",
     "data.crop_size=24"],
], ids=["vqvae", "vqgan"])
def test_resume_continues_the_same_run(tmp_path, synth_dir, extra):
    _assert_same_run(*_resume_run(tmp_path, synth_dir, extra), ["model"] + (["disc", "ema"] if extra else []))


def test_resume_continues_the_post_training(tmp_path, synth_dir, tiny_run, tiny_lm):
    """The transformer's draws come from the saved RNG: a resumed post-training draws what the straight run drew."""
    _assert_same_run(*_resume_run(tmp_path, synth_dir, [f"init_from={tiny_run}", "decoder_only=true",
                                                         f"resample_from={tiny_lm}", "data.crop_size=null"]), ["model"])


def _assert_same_run(full, cut, names):
    rows = lambda run: [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = rows(full), rows(cut)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        ra.pop("img_s"), rb.pop("img_s")
        assert ra == rb
    ca, cb = checkpoint.latest(full), checkpoint.latest(cut)
    for name in names:
        wa, wb = checkpoint.load_weights(ca, name), checkpoint.load_weights(cb, name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_dir_is_never_mixed(tmp_path, synth_dir, tiny_run, run_cli):
    code, _, err = run_cli("train-tokenizer", *TINY, f"data.shards={synth_dir}", f"run_dir={tiny_run}")
    assert code == 1 and "resume=true" in err and "overwrite=true" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("train-tokenizer", *TINY, f"data.shards={synth_dir}", f"run_dir={tmp_path / 'new'}",
                           "resume=true")
    assert code == 1 and "no checkpoint" in err


def test_overwrite_starts_afresh_without_old_checkpoints(tmp_path, synth_dir):
    train(tiny_cfg(tmp_path, synth_dir, "trainer.max_steps=6", "trainer.ckpt_every=3"))
    with pytest.raises(Exception, match="inside run_dir"):
        train(tiny_cfg(tmp_path, synth_dir, f"init_from={tmp_path / 'run'}", "overwrite=true"))
    run = train(tiny_cfg(tmp_path, synth_dir, "overwrite=true"))  # 4 steps: step-6 of the old run must not win
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000004"]
    assert checkpoint.latest(run).name == "step-0000004"


def test_vqgan_stage_starts_from_the_vqvae_run(tmp_path, synth_dir, tiny_run):
    # lr 0: the generator keeps the weights it started from, so they must be the vqvae run's
    cfg = tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "tokenizer.loss.disc_weight=0.5",
                   "tokenizer.loss.disc_channels=8", "tokenizer.loss.disc_start=2", "trainer.max_steps=3",
                   "tokenizer.loss.perceptual=1.0", "trainer.lr=0", name="gan")
    run = train(cfg)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert "g" not in rows[0] and "g" in rows[2]  # adversarial from disc_start on
    for r in rows:  # the loss is its logged parts: reconstruction, the quantizer's, and 0.5 x adaptive weight x g
        parts = r["rec"] + cfg.tokenizer.loss.codebook * (r["commit"] + r["codebook"])
        assert r["loss"] == pytest.approx(parts + 0.5 * r.get("g_weight", 0) * r.get("g", 0), rel=1e-5), r["step"]
    assert 0 < rows[2]["g_weight"] < 1e4  # the adaptive weight, strictly inside its clamp
    src = checkpoint.load_weights(checkpoint.latest(tiny_run))
    got = checkpoint.load_weights(checkpoint.latest(run))
    params = {k for k, _ in Tokenizer(to_object(compose("train_tokenizer", TINY)).tokenizer).named_parameters()}
    assert params and all(torch.equal(src[k], got[k]) for k in params)
    assert "disc.safetensors" in {p.name for p in checkpoint.latest(run).iterdir()}
    # a different architecture does not load: one line, non-zero
    bad = tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "tokenizer.channels=8", name="bad")
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        train(bad)


def test_decoder_only_keeps_the_tokens_and_trains_a_larger_decoder(tmp_path, synth_dir, tiny_run):
    base = to_object(compose("train_tokenizer", TINY)).tokenizer
    wide = base.channels * 2
    cfg = tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true", f"tokenizer.decoder_channels={wide}",
                   "tokenizer.decoder_res_blocks=2", "trainer.max_steps=3", name="dec")
    run = train(cfg)
    src = checkpoint.load_weights(checkpoint.latest(tiny_run))
    got = checkpoint.load_weights(checkpoint.latest(run))
    frozen = [k for k in src if not k.startswith("decoder.")]
    assert frozen and all(torch.equal(src[k], got[k]) for k in frozen)  # encoder, codebook and its buffers
    assert got["decoder.inp.weight"].shape[0] == 2 * src["decoder.inp.weight"].shape[0]
    old, new = load_tokenizer(tiny_run, "cpu"), load_tokenizer(run, "cpu")
    images = torch.stack([torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
                          for s, _ in zip(read_shards(str(synth_dir)), range(4))])
    codes = old.encode(images)
    assert torch.equal(new.encode(images), codes)  # a transformer of the old tokenizer's tokens fits the new one
    assert new.decode(codes).shape == images.shape
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["rec"]) for r in rows)
    # the same shape goes on from the decoder it finds
    same = tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true", "trainer.max_steps=1",
                    "trainer.lr=0", name="same")
    kept = checkpoint.load_weights(checkpoint.latest(train(same)))
    assert all(torch.equal(src[k], kept[k]) for k in src)
    # context blocks added to that decoder: it goes on from it, the blocks starting as the identity (the same
    # images at lr 0, up to rounding), and they learn
    ctx = ("decoder_only=true", "tokenizer.decoder_attn=2", "tokenizer.decoder_heads=2")
    still = train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", *ctx, "trainer.max_steps=1", "trainer.lr=0",
                           name="ctx0"))
    with_ctx = load_tokenizer(still, "cpu")
    assert with_ctx.model.cfg.decoder_attn == 2 and torch.equal(with_ctx.encode(images), codes)
    assert torch.allclose(with_ctx.decode(codes).float(), old.decode(codes).float(), atol=1)  # uint8 images
    learnt = checkpoint.load_weights(checkpoint.latest(train(tiny_cfg(
        tmp_path, synth_dir, f"init_from={still}", *ctx, "trainer.max_steps=2", name="ctx"))))
    zeros = [k for k in learnt if k.startswith("decoder.context.") and k.endswith("proj.weight")]
    assert zeros and all(learnt[k].abs().sum() > 0 for k in zeros)
    assert all(torch.equal(src[k], learnt[k]) for k in frozen)
    # token noise: the decoder learns from corrupted tokens, the encoder and codebook stay as they were
    noisy = checkpoint.load_weights(checkpoint.latest(train(tiny_cfg(
        tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true", "tokenizer.loss.token_noise=0.3",
        "trainer.max_steps=2", name="noisy"))))
    assert all(torch.equal(src[k], noisy[k]) for k in frozen)
    with pytest.raises(ConfigError, match="token_noise"):
        train(tiny_cfg(tmp_path, synth_dir, "tokenizer.loss.token_noise=0.3", name="noise-all"))
    # without a tokenizer to keep, or with an encoder built otherwise: one line each
    with pytest.raises(ConfigError, match="init_from"):
        train(tiny_cfg(tmp_path, synth_dir, "decoder_only=true", name="none"))
    with pytest.raises(ConfigError, match="tokenizer.codebook_size"):
        train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true",
                       f"tokenizer.codebook_size={base.codebook_size * 2}", name="other"))


def test_decoder_stage_on_a_transformers_draws(run_cli, tmp_path, synth_dir, tiny_run, tiny_lm):
    """resample_from: the decoder learns from the transformer's teacher-forced draws; encoder and codebook stay, and
    the forward pass with a draw that changes nothing is the plain one."""
    run = train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true", f"resample_from={tiny_lm}",
                         "resample_share=1", "data.crop_size=null", "trainer.max_steps=2", name="post"))
    src, got = (checkpoint.load_weights(checkpoint.latest(r)) for r in (tiny_run, run))
    frozen = [k for k in src if not k.startswith("decoder.")]
    assert all(torch.equal(src[k], got[k]) for k in frozen)
    assert not all(torch.equal(src[k], got[k]) for k in src if k.startswith("decoder."))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["rec"]) for r in rows)
    code, out, err = run_cli("info", run)  # what the decoder learnt from
    assert code == 0 and json.loads(out)["resample_from"] == str(tiny_lm) and json.loads(out)["resample_share"] == 1, err
    model = load_tokenizer(run, "cpu").model
    x = to_unit(torch.stack([torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1)
                             for s, _ in zip(read_shards(str(synth_dir)), range(4))]))
    with torch.no_grad():
        plain, tokens, _ = model(x)
        same, _, _ = model(x, draw=lambda i: i.clone())
        other, kept, _ = model(x, draw=lambda i: (i + 1) % model.codebook_size)
    assert torch.equal(plain, same) and torch.equal(tokens, kept) and not torch.allclose(plain, other)
    # one line each: not a decoder stage, windows, a share outside (0, 1], a transformer of other tokens
    post = [f"init_from={tiny_run}", "decoder_only=true", f"resample_from={tiny_lm}", "data.crop_size=null"]
    with pytest.raises(ConfigError, match="decoder_only"):
        train(tiny_cfg(tmp_path, synth_dir, f"resample_from={tiny_lm}", "data.crop_size=null", name="e1"))
    with pytest.raises(ConfigError, match="crop_size"):
        train(tiny_cfg(tmp_path, synth_dir, *post, "data.crop_size=16", name="e2"))
    with pytest.raises(ConfigError, match="resample_share"):
        train(tiny_cfg(tmp_path, synth_dir, *post, "resample_share=0", name="e3"))
    stranger = train(tiny_cfg(tmp_path, synth_dir, "trainer.seed=5", name="stranger"))
    with pytest.raises(UserError, match="encoder or codebook differs"):
        train(tiny_cfg(tmp_path, synth_dir, *post[1:], f"init_from={stranger}", name="e4"))
    assert not any((tmp_path / "e4").glob("*"))  # nothing written


def test_tokenize_detokenize_round_trip(run_cli, tmp_path, synth_dir, tiny_run, monkeypatch):
    paths = _image_files(synth_dir, tmp_path)
    code, out, err = run_cli("tokenize", "--tokenizer", tiny_run, *paths)
    assert code == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert [ln["path"] for ln in lines] == [str(p) for p in paths]
    tok = load_tokenizer(tiny_run, "cpu")
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) for p in paths])
    tokens = tok.encode(images)
    assert all(torch.equal(torch.tensor(ln["tokens"]), t) and (ln["h"], ln["w"]) == (32, 32) for ln, t in zip(lines, tokens))

    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    code, out2, err = run_cli("detokenize", "--tokenizer", tiny_run, "--out", tmp_path / "png")
    assert code == 0, err
    written = out2.split()
    assert len(written) == 3 and all(p.endswith(f"-img{i}.png") for i, p in enumerate(written))
    expected = tok.decode(tokens)
    for p, e in zip(written, expected):
        assert np.array_equal(np.asarray(Image.open(p)), e.permute(1, 2, 0).numpy())
    # tokenize of a decoded image: the pipeline closes (tokens of the PNG written are valid ids of the same grid)
    code, out3, _ = run_cli("tokenize", "--tokenizer", tiny_run, written[0])
    assert code == 0 and np.array(json.loads(out3)["tokens"]).shape == (8, 8)


def test_tokenize_and_detokenize_bad_inputs_go_on(run_cli, tmp_path, synth_dir, tiny_run, monkeypatch):
    good = _image_files(synth_dir, tmp_path, n=2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[0].read_bytes()[:60])
    odd = tmp_path / "odd.png"
    Image.new("RGB", (30, 32)).save(odd)
    code, out, err = run_cli("tokenize", "--tokenizer", tiny_run, good[0], broken, tmp_path / "missing.png", odd, good[1])
    assert code == 1
    assert [json.loads(ln)["path"] for ln in out.splitlines()] == [str(good[0]), str(good[1])]
    errs = err.strip().splitlines()
    assert len(errs) == 4 and "broken.png" in errs[0] and "missing.png" in errs[1] and "stride 4" in errs[2]
    # --size makes an odd image usable
    code, out, _ = run_cli("tokenize", "--tokenizer", tiny_run, "--size", "32", odd)
    assert code == 0 and json.loads(out)["h"] == 32

    lines = ['{"tokens": [[1, 2], [3, 4]], "path": "../../etc/passwd"}', "not json", '{"tokens": [[1, 64]]}',
             '{"tokens": [[1, 2], [3]]}', '{"tokens": [[-1]]}', '{"tokens": [[5, 6]]}']
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = run_cli("detokenize", "--tokenizer", tiny_run, "--out", tmp_path / "png")
    assert code == 1
    written = out.split()
    # file names never come from raw input paths
    assert [p.split("/")[-1] for p in written] == ["000000-passwd.png", "000005.png"]
    assert all(str(tmp_path / "png") in p for p in written)
    errs = err.strip().splitlines()
    assert len(errs) == 5 and "line 2" in errs[0] and "out of range" in errs[1] and "one length" in errs[2]


def test_bad_checkpoints_are_one_line_errors(run_cli, tmp_path, synth_dir, tiny_run):
    img = _image_files(synth_dir, tmp_path, n=1)[0]
    code, _, err = run_cli("tokenize", "--tokenizer", tmp_path / "nope", img)
    assert code == 1 and "no such run" in err
    # corrupt weights
    bad = tmp_path / "corrupt"
    shutil.copytree(checkpoint.latest(tiny_run), bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("tokenize", "--tokenizer", bad, img)
    assert code == 1 and "corrupt checkpoint file" in err and len(err.strip().splitlines()) == 1
    # a checkpoint of another kind
    other = tmp_path / "other"
    shutil.copytree(checkpoint.latest(tiny_run), other)
    meta = json.loads((other / "checkpoint.json").read_text())
    (other / "checkpoint.json").write_text(json.dumps({**meta, "kind": "transformer"}))
    code, _, err = run_cli("tokenize", "--tokenizer", other, img)
    assert code == 2 and "not a 'tokenizer'" in err
    # garbage metadata
    (other / "checkpoint.json").write_text("{")
    code, _, err = run_cli("eval", "tokenizer", "--tokenizer", other, str(synth_dir))
    assert code == 1 and "corrupt checkpoint" in err


def test_pretokenize_writes_the_tokens_of_each_image(run_cli, tmp_path, synth_dir, tiny_run):
    out = tmp_path / "tok"
    code, stdout, err = run_cli("pretokenize", str(synth_dir), "--tokenizer", tiny_run, "--out", out, "--size", "32",
                                "--batch-size", "16", "--shard-size", "20")
    assert code == 0, err
    assert [p.split("/")[-1] for p in stdout.split()] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    info = json.loads((out / "tokens.json").read_text())
    assert info["samples"] == 48 and info["grid"] == [8, 8] and info["codebook_size"] == 64
    tok = load_tokenizer(tiny_run, "cpu")
    originals = {s.key: s for s in read_shards(str(synth_dir))}
    n = 0
    for raw in raw_samples(expand(str(out)), SkipCounter()):
        codes = np.load(io.BytesIO(raw["npy"]))
        src = originals[raw["__key__"]]
        assert codes.dtype == np.int16 and codes.shape == (8, 8)
        x = torch.from_numpy(np.asarray(src.image).copy()).permute(2, 0, 1).unsqueeze(0)
        assert np.array_equal(codes, tok.encode(x)[0].numpy())
        assert raw["txt"].decode() == src.caption
        meta = json.loads(raw["json"])
        assert meta["grid"] == [8, 8] and meta["kind"] == src.meta["kind"]
        n += 1
    assert n == 48
    code, _, err = run_cli("pretokenize", str(synth_dir), "--tokenizer", tiny_run, "--out", out)
    assert code == 1 and "--overwrite" in err
    code, _, err = run_cli("pretokenize", str(synth_dir), "--tokenizer", tiny_run, "--out", tmp_path / "t2", "--size", "30")
    assert code == 1 and "stride" in err


def test_eval_tokenizer_reports_its_figures(run_cli, synth_dir, tiny_run):
    code, out, err = run_cli("eval", "tokenizer", "--tokenizer", tiny_run, str(synth_dir), "--size", "32", "--limit", "20")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 20 and r["tokens"] == 20 * 64 and r["grid"] == [8, 8]
    assert r["bpp"] == pytest.approx(64 * 6 / (32 * 32))
    assert 0 < r["usage"] <= 1 and 1 <= r["perplexity"] <= 64 and -1 <= r["ssim"] <= 1 and r["psnr"] > 5
    assert r["jpeg"]["bpp"] > 0 and r["jpeg"]["psnr"] > 5
    assert r["judge"]["n"] == 20 and set(r["judge"]["per_kind"]) <= {"single", "count", "relation", "text"}


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    import os
    import signal
    import time

    probe = (
        "import sys, torch\n"
        "from arlm import checkpoint\n"
        "w = {'model': {'w': torch.randn(4_000_000)}}\n"
        "for step in range(1, 1000):\n"
        "    checkpoint.save(sys.argv[1], step, 'tokenizer', w, {'step': step, 'x': torch.randn(1000)}, 'a: 1\\n')\n"
        "    print(step, flush=True)\n"
    )
    run = tmp_path / "run"
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", probe, str(run)], stdout=subprocess.PIPE)
        first = proc.stdout.readline()  # one checkpoint exists
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert first.strip()
        ckpt = checkpoint.resolve(run, "tokenizer")
        state = checkpoint.load_state(ckpt)
        assert state["step"] >= 1 and checkpoint.load_weights(ckpt)["w"].shape == (4_000_000,)
        assert len(list((run / "checkpoints").glob("step-*"))) <= 3
