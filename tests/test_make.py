"""`make demo` is a chain of stage targets on their outputs: after an interruption a second `make demo` runs
only what is left, and a training stage that had written a checkpoint resumes it. Run with a stand-in for
`arimg` that logs its arguments (the stages themselves are tested in their own files)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import check_parses

ROOT = Path(__file__).resolve().parents[1]
FAKE = '''#!{python}
import os, pathlib, shlex, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(shlex.join(args) + "\\n")
if "--out" in args:
    pathlib.Path(args[args.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
for a in args:
    if a.startswith("out="):
        pathlib.Path(a[4:]).mkdir(parents=True, exist_ok=True)
    if a.startswith("run_dir="):  # a training stage writes its first checkpoint, then may be interrupted
        ckpt = pathlib.Path(a.split("=", 1)[1]) / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "latest").write_text("step-0000001")
sys.exit(1 if os.environ.get("FAKE_FAIL") in args[:1] else 0)
'''


def _make(tmp: Path, fail: str | None = None, *extra: str) -> tuple[int, list[str]]:
    log = tmp / "log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_FAIL": fail or "-"}
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"VENV={tmp}/venv", f"PY={sys.executable}",
                        f"ARIMG={tmp}/arimg", f"DEMO={tmp}/demo", f"SYNTH={tmp}/synth", f"RUNS={tmp}/runs", *extra],
                       env=env, capture_output=True, text=True)
    return r.returncode, log.read_text().splitlines() if log.exists() else []


NO_MAKE = subprocess.run(["make", "--version"], capture_output=True).returncode != 0


def _fake_install(tmp: Path) -> None:
    (tmp / "venv").mkdir()
    (tmp / "venv" / ".installed").touch()
    fake = tmp / "arimg"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)


def _plain(tmp: Path) -> list[str]:
    """The log of a `make demo` with none of train-default's variables, in its own folder under `tmp`."""
    plain = tmp / "plain"
    plain.mkdir()
    _fake_install(plain)
    code, log = _make(plain)
    assert code == 0, log
    return log


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_make_demo_resumes_where_it_stopped(tmp_path):
    _fake_install(tmp_path)

    code, first = _make(tmp_path, fail="pretrain")  # interrupted during pretrain
    assert code != 0
    assert [ln.split()[0] for ln in first] == ["data", "data", "data", "eval", "train-tokenizer", "eval",
                                               "pretokenize", "pretrain"]
    assert "overwrite=true" in first[-1]

    code, second = _make(tmp_path)
    assert code == 0, second
    stages = [ln.split()[0] for ln in second]
    assert stages[:2] == ["pretrain", "eval"]  # nothing before pretrain again; then its evaluation
    assert "resume=true" in second[0]  # its checkpoint is newer than its input: continued, not restarted
    assert {"sft", "make-prefs", "dpo", "sample"} <= set(stages) and stages.count("eval") == 3
    assert not any("pretrain-more" in ln for ln in first + second)  # no PRETRAIN_MORE_ARGS: no second phase
    assert (tmp_path / "demo" / "summary.md").is_file()

    code, third = _make(tmp_path)  # all done: nothing runs
    assert code == 0 and third == []
    for line in first + second:  # and every command the Makefile gives arimg parses and composes today
        check_parses(shlex.split(line))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_a_second_pretrain_phase_starts_from_the_first_and_sft_from_it(tmp_path):
    """PRETRAIN_MORE_ARGS (train-default's longer schedule): pretrain-more runs init_from the pretrain with those
    overrides, is evaluated beside it, and SFT starts from it; without them (the demo) no such stage runs."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "PRETRAIN_MORE_ARGS=trainer.max_steps=7 trainer.lr=1e-3")
    assert code == 0, log
    runs = tmp_path / "runs"
    more = [ln for ln in log if f"run_dir={runs}/pretrain-more" in ln]
    assert len(more) == 1 and more[0].startswith("pretrain ") and f"init_from={runs}/pretrain " in more[0] + " "
    assert "trainer.max_steps=7" in more[0] and "trainer.lr=1e-3" in more[0]
    sft = [ln for ln in log if ln.startswith("sft ")]
    assert len(sft) == 1 and f"init_from={runs}/pretrain-more " in sft[0] + " "
    assert log.index(more[0]) < log.index(sft[0])
    evals = [ln for ln in log if ln.startswith("eval generator")]
    assert any(f"--ckpt {runs}/pretrain-more " in e + " " for e in evals) and len(evals) == 4
    assert not any("pretrain-more2" in ln for ln in log)  # no PRETRAIN_MORE2_ARGS: no third phase
    for line in log:
        check_parses(shlex.split(line))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_a_third_pretrain_phase_starts_from_the_second(tmp_path):
    """PRETRAIN_MORE2_ARGS: pretrain-more2 runs init_from pretrain-more after it, every phase is evaluated, and
    SFT starts from the last phase."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "PRETRAIN_MORE_ARGS=trainer.max_steps=7",
                      "PRETRAIN_MORE2_ARGS=trainer.max_steps=5 data.seed=2")
    assert code == 0, log
    runs = tmp_path / "runs"
    phases = [ln for ln in log if ln.startswith("pretrain ")]
    assert [ln.split("run_dir=")[1].split()[0] for ln in phases] == [
        f"{runs}/pretrain", f"{runs}/pretrain-more", f"{runs}/pretrain-more2"]  # in this order, one run each
    assert f"init_from={runs}/pretrain-more " in phases[2] + " " and "trainer.max_steps=5 data.seed=2" in phases[2]
    assert "trainer.max_steps=7" in phases[1] and "data.seed=2" not in phases[1]
    sft = [ln for ln in log if ln.startswith("sft ")]
    assert len(sft) == 1 and f"init_from={runs}/pretrain-more2 " in sft[0] + " "
    evals = [ln.split("--ckpt ")[1].split()[0] for ln in log if ln.startswith("eval generator")]
    assert sorted(evals) == sorted(f"{runs}/{s}" for s in ("pretrain", "pretrain-more", "pretrain-more2", "sft", "dpo"))
    for line in log:
        check_parses(shlex.split(line))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_a_second_preference_round_starts_from_the_dpo_run(tmp_path):
    """DEMO_PREFS2 (train-default's second round): make-prefs samples the DPO run, dpo2 trains from the DPO run on
    those pairs, both DPO runs are evaluated and the sample grids come from dpo2; without it (the demo) no such
    stage runs and the grids come from the DPO run."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "DEMO_PREFS2=k=4 seed=1", "DEMO_DPO2=trainer.max_steps=9")
    assert code == 0, log
    runs, demo = tmp_path / "runs", tmp_path / "demo"
    prefs = [ln for ln in log if ln.startswith("make-prefs ")]
    assert len(prefs) == 2 and f"--ckpt {runs}/sft " in prefs[0] and f"--ckpt {runs}/dpo " in prefs[1] + " "
    assert f"out={demo}/prefs2" in prefs[1] and "k=4 seed=1" in prefs[1]
    dpo = [ln for ln in log if ln.startswith("dpo ")]
    assert len(dpo) == 2 and f"init_from={runs}/dpo run_dir={runs}/dpo2 data.shards={demo}/prefs2" in dpo[1]
    assert "trainer.max_steps=9" in dpo[1] and log.index(prefs[1]) < log.index(dpo[1])
    evals = [ln.split("--ckpt ")[1].split()[0] for ln in log if ln.startswith("eval generator")]
    assert sorted(evals) == sorted(f"{runs}/{s}" for s in ("pretrain", "sft", "dpo", "dpo2"))
    sample = [ln for ln in log if ln.startswith("sample ")]
    assert len(sample) == 1 and f"--ckpt {runs}/dpo2 " in sample[0]
    for line in log:
        check_parses(shlex.split(line))

    log = _plain(tmp_path)
    assert not any("dpo2" in ln or "prefs2" in ln for ln in log)
    assert f"--ckpt {tmp_path}/plain/runs/dpo " in [ln for ln in log if ln.startswith("sample ")][0]


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_a_decoder_trained_alone_draws_the_last_model(tmp_path):
    """DEC_ARGS (train-default): a decoder stage runs init_from the tokenizer with decoder_only=true, the last model
    is exported with it into runs/final and that export is evaluated; the transformer stages never use it, and
    without DEC_ARGS (the demo) no such stage runs."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "DEC_ARGS=trainer.max_steps=11")
    assert code == 0, log
    runs, demo = tmp_path / "runs", tmp_path / "demo"
    dec = [ln for ln in log if ln.startswith("train-tokenizer ") and f"run_dir={runs}/tok-dec" in ln]
    assert len(dec) == 1 and f"init_from={runs}/tok-gen " in dec[0] and "decoder_only=true" in dec[0]
    assert dec[0].endswith("trainer.max_steps=11")  # after the tokenizer's own overrides: DEC_ARGS decide
    export = [ln for ln in log if ln.startswith("export ")]
    assert len(export) == 1 and f"--ckpt {runs}/dpo --tokenizer {runs}/tok-dec --out {runs}/final" in export[0]
    final = [ln for ln in log if ln.startswith("eval generator") and f"--ckpt {runs}/final " in ln + " "]
    assert len(final) == 1 and log.index(export[0]) < log.index(final[0]) and f"out={demo}/eval-final" in final[0]
    assert not any(f"{runs}/tok-dec" in ln for ln in log if ln.split()[0] in ("pretokenize", "pretrain", "sft",
                                                                               "make-prefs", "dpo"))
    for line in log:
        check_parses(shlex.split(line))

    assert not any("tok-dec" in ln or "final" in ln for ln in _plain(tmp_path))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_the_decoder_post_trained_on_the_last_models_draws(tmp_path):
    """POST_ARGS (train-default, with DEC_ARGS): after the last model and the decoder stage, the decoder is trained
    on, from the decoder stage, with the last model's teacher-forced draws on whole images, and the last model is
    exported with that decoder; the transformer stages never use it."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "DEC_ARGS=trainer.max_steps=11", "POST_ARGS=trainer.max_steps=5")
    assert code == 0, log
    runs = tmp_path / "runs"
    post = [ln for ln in log if ln.startswith("train-tokenizer ") and f"run_dir={runs}/tok-post" in ln]
    assert len(post) == 1 and f"init_from={runs}/tok-dec " in post[0] and "decoder_only=true" in post[0]
    assert f"resample_from={runs}/dpo " in post[0] and "data.crop_size=null" in post[0]
    assert post[0].endswith("trainer.max_steps=5")  # POST_ARGS decide
    dpo = [ln for ln in log if ln.startswith("dpo ")]
    assert log.index(dpo[-1]) < log.index(post[0])  # it needs the last model
    export = [ln for ln in log if ln.startswith("export ")]
    assert len(export) == 1 and f"--ckpt {runs}/dpo --tokenizer {runs}/tok-post --out {runs}/final" in export[0]
    assert log.index(post[0]) < log.index(export[0])
    assert any(ln.startswith("eval tokenizer") and f"--tokenizer {runs}/tok-post " in ln + " " for ln in log)
    for line in log:
        check_parses(shlex.split(line))


@pytest.mark.skipif(NO_MAKE, reason="no make")
def test_a_second_post_phase_and_the_final_models_sampling(tmp_path):
    """POST2_ARGS (train-default): a second post-training phase from the first's decoder, with which the last model
    is exported; FINAL_SAMPLING: the settings that export's card recommends (its evaluation then uses them)."""
    _fake_install(tmp_path)
    code, log = _make(tmp_path, None, "DEC_ARGS=trainer.max_steps=11", "POST_ARGS=trainer.max_steps=5",
                      "POST2_ARGS=trainer.max_steps=3 trainer.lr=1e-4", "FINAL_SAMPLING=top_k=3 temperature=0.9")
    assert code == 0, log
    runs = tmp_path / "runs"
    post = [ln for ln in log if ln.startswith("train-tokenizer ") and f"run_dir={runs}/tok-post" in ln]
    assert len(post) == 2 and f"run_dir={runs}/tok-post2 " in post[1] and f"init_from={runs}/tok-post " in post[1]
    assert f"resample_from={runs}/dpo " in post[1] and post[1].endswith("trainer.max_steps=3 trainer.lr=1e-4")
    export = [ln for ln in log if ln.startswith("export ")]
    assert len(export) == 1 and f"--tokenizer {runs}/tok-post2 --out {runs}/final" in export[0]
    assert "--sampling top_k=3 --sampling temperature=0.9" in export[0]
    assert log.index(post[1]) < log.index(export[0])
    for line in log:
        check_parses(shlex.split(line))
    # without them: one phase, and no recommendation
    tmp = tmp_path / "one"
    tmp.mkdir()
    _fake_install(tmp)
    code, log = _make(tmp, None, "DEC_ARGS=trainer.max_steps=11", "POST_ARGS=trainer.max_steps=5")
    assert code == 0 and not any("tok-post2" in ln or "--sampling" in ln for ln in log), log
