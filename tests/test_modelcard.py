"""arimg export / info and the bundled default model: an exported model samples exactly as its run did,
anywhere it is copied; `arimg info` says what a model is; a missing or damaged bundled file is one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from arlm.generation import modelcard
from arlm.transformer.ckpt import load_model


def _sample(run_cli, ckpt, out: Path, *extra) -> tuple[int, list[bytes], str]:
    args = ("sample", *(("--ckpt", ckpt) if ckpt is not None else ()), "-p", "a red circle", "-p", "two blue squares",
            "--n", "2", "--out", out, *extra)
    code, stdout, err = run_cli(*args)
    return code, [Path(json.loads(ln)["path"]).read_bytes() for ln in stdout.splitlines()], err


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_lm):
    out = tmp_path_factory.mktemp("export") / "model"
    report = tmp_path_factory.mktemp("evals") / "generator.json"
    report.write_text(json.dumps({"accuracy": 0.25, "per_kind": {"single": {"accuracy": 0.5, "n": 8}}, "n": 32}))
    modelcard.export(str(tiny_lm), str(out), [str(report)], name="tiny")
    return out


def test_an_exported_model_samples_the_same_bytes_anywhere(run_cli, tiny_lm, exported, tmp_path):
    code, from_run, err = _sample(run_cli, tiny_lm, tmp_path / "a")
    assert code == 0, err
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(exported, moved)  # the tokenizer travels inside: the run's tokenizer path is not needed
    code, from_export, err = _sample(run_cli, moved, tmp_path / "b")
    assert code == 0, err
    assert from_export == from_run and len(from_run) == 4
    assert sorted(p.name for p in moved.iterdir()) == ["card.json", "checkpoint.json", "config.yaml",
                                                       "model.safetensors", "tokenizer", "vocab.json"]
    assert not (moved / "tokenizer" / "state.pt").exists() and not (moved / "tokenizer" / "disc.safetensors").exists()


def test_a_run_given_minutes_lists_them_instead_of_its_max_steps(tiny_lm, tmp_path):
    """The lineage of a run sized by trainer.max_minutes gives its minutes and no max_steps (the clock ended it);
    a run given steps keeps its max_steps and lists no minutes."""
    import yaml

    from arlm import checkpoint

    ckpt = checkpoint.resolve(tiny_lm, "transformer")
    steps = modelcard.lineage(ckpt)[0]
    assert steps["max_steps"] is not None and "max_minutes" not in steps
    timed = tmp_path / "timed"
    shutil.copytree(ckpt, timed)
    cfg = yaml.safe_load((timed / "config.yaml").read_text())
    cfg["trainer"]["max_minutes"] = 55.0
    (timed / "config.yaml").write_text(yaml.safe_dump(cfg))
    stage = modelcard.lineage(timed)[0]
    assert stage["max_minutes"] == 55.0 and stage["max_steps"] is None and stage["step"] == steps["step"]


def test_info_of_a_run_and_of_an_export(run_cli, tiny_lm, exported):
    model, vocab, cfg = load_model(tiny_lm, "cpu")
    n_params = sum(t.numel() for t in model.state_dict().values())
    code, out, err = run_cli("info", tiny_lm)
    assert code == 0, err
    run = json.loads(out)
    assert run["kind"] == "transformer" and run["stage"] == "pretrain" and run["step"] == cfg.trainer.max_steps
    assert run["parameters"] == n_params and run["model"]["dim"] == cfg.model.dim
    assert run["vocab"]["codebook_size"] == vocab.codebook_size and run["image_tokenizer"]["kind"] == "tokenizer"
    assert [s["stage"] for s in run["lineage"]] == ["pretrain"]
    code, out, err = run_cli("info", exported)
    assert code == 0, err
    card = json.loads(out)["card"]
    assert card["name"] == "tiny" and card["parameters"] == n_params
    assert card["evals"]["generator"]["accuracy"] == 0.25 and card["stages"][0]["stage"] == "pretrain"



def test_info_on_a_terminal_is_a_summary_and_json_elsewhere(run_cli, exported):
    """A person at a terminal reads a few lines (name, kind, size, stages, tokenizer, figures per kind); a pipe
    or --json gets the JSON report."""
    import os
    import pty
    import subprocess
    import sys

    text = modelcard.describe(modelcard.info(str(exported)))
    lines = text.splitlines()
    assert lines[0].startswith("tiny: transformer (pretrain)") and "M parameters" in lines[0]
    assert any(ln.split()[0] == "stages" and "pretrain" in ln for ln in lines[1:])
    assert any(ln.split()[0] == "tokenizer" for ln in lines[1:])
    assert any(ln.split()[:3] == ["generator", "single", "50.0%"] for ln in lines[1:])
    code, out, err = run_cli("info", exported, "--json")  # (stdout captured here: JSON with or without --json)
    assert code == 0 and json.loads(out)["card"]["name"] == "tiny", err

    main, child = pty.openpty()  # the command on a terminal
    proc = subprocess.run([sys.executable, "-m", "arimg", "info", str(exported)], stdout=child,
                          stderr=subprocess.PIPE, timeout=120)
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: all read
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert proc.returncode == 0, proc.stderr
    assert shown.decode().replace("\r\n", "\n") == text


def test_export_and_info_bad_inputs(run_cli, tiny_run, tiny_lm, exported, tmp_path):
    code, out, err = run_cli("info", tmp_path)
    assert code == 1 and out == "" and err.count("arimg: error:") == 1 and "neither a checkpoint" in err
    before = sorted(p.name for p in exported.iterdir())
    code, _, err = run_cli("export", "--ckpt", tiny_lm, "--out", exported)
    assert code == 1 and "--overwrite" in err and sorted(p.name for p in exported.iterdir()) == before
    code, _, err = run_cli("export", "--ckpt", tiny_run, "--out", tmp_path / "x")
    assert code != 0 and "not a 'transformer'" in err and not (tmp_path / "x").exists()
    code, _, err = run_cli("export", "--ckpt", tiny_lm, "--out", tmp_path / "y", "--eval", tmp_path / "missing.json")
    assert code == 1 and "missing.json" in err and not (tmp_path / "y").exists()


def test_export_with_a_decoder_trained_alone(run_cli, synth_dir, tiny_run, tiny_lm, tmp_path):
    from arlm import checkpoint
    from arlm.training.tokenizer import train
    from conftest import tiny_cfg

    dec = train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", "decoder_only=true", "tokenizer.decoder_channels=24",
                         "trainer.max_steps=2", name="dec"))
    code, out, err = run_cli("export", "--ckpt", tiny_lm, "--out", tmp_path / "m", "--tokenizer", dec)
    assert code == 0, err
    packed = checkpoint.load_weights(tmp_path / "m" / "tokenizer")
    assert {k: v.shape for k, v in packed.items()} == {k: v.shape for k, v in checkpoint.load_weights(checkpoint.latest(dec)).items()}
    code, out, err = run_cli("info", tmp_path / "m")
    assert code == 0, err
    tok = json.loads(out)["card"]["image_tokenizer"]
    assert tok["decoder_only"] is True and tok["tokenizer"]["decoder_channels"] == 24 and tok["init_from"] == str(tiny_run)
    code, images, err = _sample(run_cli, tmp_path / "m", tmp_path / "s")
    assert code == 0 and len(images) == 4, err
    # an exported model exported again keeps the lineage its card recorded
    code, _, err = run_cli("export", "--ckpt", tmp_path / "m", "--out", tmp_path / "m2", "--tokenizer", tmp_path / "m" / "tokenizer")
    assert code == 0, err
    first, again = (json.loads((tmp_path / m / "card.json").read_text()) for m in ("m", "m2"))
    assert again["stages"] == first["stages"] and again["from"] == first["from"] == str(checkpoint.latest(tiny_lm))
    # a tokenizer with other codes would draw other pictures from the same tokens: refused, nothing written
    other = train(tiny_cfg(tmp_path, synth_dir, "trainer.max_steps=2", "trainer.seed=1", name="other"))
    code, _, err = run_cli("export", "--ckpt", tiny_lm, "--out", tmp_path / "n", "--tokenizer", other)
    assert code == 1 and "does not give the tokens" in err and not (tmp_path / "n").exists()


def test_the_default_model_missing_damaged_and_used(run_cli, exported, tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(modelcard.resources, "files", lambda name: package)
    code, out, err = run_cli("sample", "-p", "a red circle", "--out", tmp_path / "o")
    assert code == 1 and out == "" and "missing" in err and "reinstall" in err
    assert [ln for ln in err.splitlines() if ln.startswith("arimg: error:")] == err.strip().splitlines()[-1:]
    shutil.copytree(exported, package / "model")
    code, images, err = _sample(run_cli, None, tmp_path / "d")
    assert code == 0 and len(images) == 4 and "bundled default model" in err
    code, out, err = run_cli("info")
    assert code == 0 and json.loads(out)["card"]["name"] == "tiny"
    weights = package / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a damaged install
    code, out, err = run_cli("sample", "-p", "a red circle", "--out", tmp_path / "e")
    assert code == 1 and out == "" and "damaged" in err and "model.safetensors" in err and "reinstall" in err


def test_the_shipped_default_model_is_the_recipes_and_samples(run_cli, tmp_path):
    """The weights in arlm/default/model are what `make train-default` describes: the `small` model on the
    `gen` tokenizer's codes with the pretrain preset's word pieces, drawn by the larger decoder of `gen_dec`
    trained alone on those codes and post-trained on the transformer's draws."""
    from arlm import checkpoint
    from arlm.config import TrainTokenizerConfig, TrainTransformerConfig, compose, to_object

    try:
        path = modelcard.default_model()
    except Exception as e:
        pytest.skip(f"no bundled model in this tree yet: {e}")
    recipe = to_object(compose("pretrain"))
    shipped = checkpoint.load_config(path, TrainTransformerConfig)
    assert shipped.model == recipe.model
    tok = checkpoint.load_config(path / "tokenizer", TrainTokenizerConfig)
    assert tok.tokenizer == to_object(compose("train_tokenizer", ["tokenizer=gen_dec"])).tokenizer
    assert tok.decoder_only and dataclasses.replace(tok.tokenizer, decoder_channels=None, decoder_res_blocks=None) \
        == to_object(compose("train_tokenizer", ["tokenizer=gen"])).tokenizer  # the encoder and codebook are gen's
    # then post-trained on whole images with the transformer's draws (the default recipe's post stages)
    assert tok.resample_from and tok.data.crop_size is None and 0 < tok.resample_share < 1
    # its card recommends the sampling settings the recipe exports it with (conf/recipe/default.yaml)
    from arlm.recipe import load

    export = next(c.args for s in load("default").stages for c in s.commands if "arlm/default/model" in c.args)
    assert modelcard.recommended_sampling(None) == modelcard.parse_sampling(
        [export[i + 1] for i, a in enumerate(export) if a == "--sampling"])
    model, vocab, _ = load_model(path, "cpu")  # strict: every shape as the config says
    assert vocab.codebook_size == tok.tokenizer.codebook_size and 0 < len(vocab.words) <= recipe.data.words
    code, images, err = _sample(run_cli, None, tmp_path / "s")
    assert code == 0 and len(images) == 4, err


def test_a_card_recommends_sampling_settings_and_the_command_line_wins(run_cli, tiny_lm, exported, tmp_path):
    """`arimg export --sampling` records settings in the card; sample, eval generator and make-prefs start from
    them, an explicit setting wins, a run (no card) keeps SamplingConfig's defaults, and a re-export keeps them."""
    from arlm.config import SamplingConfig

    model = tmp_path / "m"
    code, _, err = run_cli("export", "--ckpt", exported, "--out", model, "--sampling", "top_k=3",
                           "--sampling", "temperature=0.9")
    assert code == 0, err
    assert json.loads((model / "card.json").read_text())["sampling"] == {"top_k": 3, "temperature": 0.9}
    assert modelcard.recommended_sampling(str(model)) == {"top_k": 3, "temperature": 0.9}
    assert modelcard.recommended_sampling(str(tiny_lm)) == {}

    def settings(ckpt, *extra):
        code, out, err = run_cli("sample", "--ckpt", ckpt, "-p", "a red circle", "--out", tmp_path / "s", *extra)
        assert code == 0, err
        return json.loads(out.splitlines()[0])["settings"]

    assert (settings(model)["top_k"], settings(model)["temperature"]) == (3, 0.9)
    assert settings(model)["cfg"] == SamplingConfig().cfg  # what the card does not set: the defaults
    assert (settings(model, "--top-k", "7")["top_k"], settings(model, "--top-k", "7")["temperature"]) == (7, 0.9)
    assert settings(tiny_lm)["top_k"] == SamplingConfig().top_k
    for command in (("eval", "generator"), ("make-prefs",)):
        code, out, err = run_cli(*command, "--ckpt", model, "--print-config")
        assert code == 0 and "top_k: 3" in out and "temperature: 0.9" in out, err
        code, out, err = run_cli(*command, "--ckpt", model, "sampling.top_k=5", "--print-config")
        assert code == 0 and "top_k: 5" in out and "temperature: 0.9" in out, err
    # exported again: kept unless replaced
    code, _, err = run_cli("export", "--ckpt", model, "--out", tmp_path / "m2")
    assert code == 0 and modelcard.recommended_sampling(str(tmp_path / "m2")) == {"top_k": 3, "temperature": 0.9}, err
    code, _, err = run_cli("export", "--ckpt", model, "--out", tmp_path / "m3", "--sampling", "top_k=0")
    assert code == 0 and modelcard.recommended_sampling(str(tmp_path / "m3")) == {"top_k": 0}, err


@pytest.mark.parametrize("item, message", [("top_q=3", "sampling settings are a mapping"), ("top_k", "KEY=VALUE"),
                                           ("top_k=many", "bad sampling settings"), ("top_p=0", "top-p")])
def test_bad_recommended_sampling_is_one_line(run_cli, exported, tmp_path, item, message):
    code, out, err = run_cli("export", "--ckpt", exported, "--out", tmp_path / "m", "--sampling", item)
    assert code == 1 and out == "" and err.count("arimg: error:") == 1 and message in err, err
    assert not (tmp_path / "m").exists()
    # a hand-edited card with such a setting: every command that reads it says which file
    model = tmp_path / "edited"
    shutil.copytree(exported, model)
    card = json.loads((model / "card.json").read_text())
    key, _, value = item.partition("=")
    (model / "card.json").write_text(json.dumps({**card, "sampling": {key: value or None}}))
    for args in (("sample", "-p", "a red circle", "--out", tmp_path / "s"), ("eval", "generator", "--print-config"),
                 ("make-prefs", "--print-config")):
        code, out, err = run_cli(*args, "--ckpt", model)
        assert code == 1 and out == "" and err.count("arimg: error:") == 1 and "card.json" in err, err
