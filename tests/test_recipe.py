"""`arimg recipe` (make demo, make train-default): the stages of conf/recipe/NAME.yaml in order; after an
interruption a second run does only what is left and a training stage that had written a checkpoint resumes
it; the recipes chain their stages as the model's history says. Run with a stand-in for `arimg` that logs its
arguments (the stages themselves are tested in their own files)."""

from __future__ import annotations

import shlex
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


@pytest.fixture
def recipe(tmp_path, run_cli, monkeypatch):
    """`recipe(NAME, *args, fail=CMD)`: `arimg recipe NAME` on folders under tmp_path with the stand-in, from the
    repository root (the summary stage runs scripts/); returns (exit code, the stand-in's log, stdout, stderr)."""
    fake, log = tmp_path / "arimg", tmp_path / "log"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_LOG", str(log))

    def run(name: str, *args: str, fail: str = "-"):
        monkeypatch.setenv("FAKE_FAIL", fail)
        log.unlink(missing_ok=True)
        code, out, err = run_cli("recipe", name, f"data={tmp_path}/demo", f"runs={tmp_path}/runs",
                                 f"synth={tmp_path}/synth", "--arimg", fake, *args)
        return code, log.read_text().splitlines() if log.exists() else [], out, err

    return run


def _stages(tmp: Path) -> list[str]:
    return [ln.split("\t")[0] for ln in (tmp / "demo" / "times.tsv").read_text().splitlines()]


def test_the_demo_resumes_where_it_stopped(recipe, tmp_path):
    code, first, out, err = recipe("demo", fail="pretrain")  # interrupted during pretrain
    assert code == 1 and out == ""
    assert [ln.split()[0] for ln in first] == ["data", "data", "data", "eval", "train-tokenizer", "eval",
                                               "pretokenize", "pretrain"]
    assert "overwrite=true" in first[-1]
    errors = [ln for ln in err.splitlines() if ln.startswith("arimg: error:")]
    assert len(errors) == 1 and "stage pretrain failed" in errors[0]
    assert _stages(tmp_path)[-1] == "pretokenize"  # the failed stage's time is not counted as finished work

    code, second, out, err = recipe("demo")
    assert code == 0, err
    stages = [ln.split()[0] for ln in second]
    assert stages[:2] == ["pretrain", "eval"]  # nothing before pretrain again; then its evaluation
    assert "resume=true" in second[0]  # its checkpoint is newer than its input: continued, not restarted
    assert {"sft", "make-prefs", "dpo", "sample"} <= set(stages) and stages.count("eval") == 3
    assert out.startswith("# make demo: summary") and out == (tmp_path / "demo" / "summary.md").read_text()
    assert _stages(tmp_path) == ["synth", "synth", "judge", "judge", "tokenizer", "tokenizer", "pretokenize",
                                 "pretrain", "eval-pretrain", "sft", "eval-sft", "make-prefs", "dpo", "eval-dpo",
                                 "samples", "summary"]  # each command's wall time, as its stage's

    code, third, out, err = recipe("demo")  # all done: nothing runs, the summary is shown again
    assert code == 0 and third == [] and out.startswith("# make demo: summary")
    for line in first + second:  # and every command the recipe gives arimg parses and composes today
        check_parses(shlex.split(line))

    (tmp_path / "runs" / "dpo" / "done").touch()  # an input made anew: what reads it runs again, nothing else
    code, fourth, out, err = recipe("demo")
    assert code == 0 and [ln.split()[0] for ln in fourth] == ["eval", "sample"], fourth
    assert f"--ckpt {tmp_path}/runs/dpo " in fourth[0]


def _plan(recipe, name: str) -> list[list[str]]:
    """The commands of a fresh run of recipe `name` (its dry run), as argument lists."""
    code, log, out, err = recipe(name, "--dry-run")
    assert code == 0 and log == [], err  # a dry run runs nothing
    return [shlex.split(line) for line in out.splitlines()]


def _one(plan: list[list[str]], *words: str) -> list[str]:
    found = [c for c in plan if all(w in c for w in words)]
    assert len(found) == 1, (words, found)
    return found[0]


def _tokenizer_cfg(cmd: list[str]):
    """The config a recipe's `arimg train-tokenizer ...` command composes."""
    from arlm.config import compose, to_object

    return to_object(compose("train_tokenizer", cmd[cmd.index("train-tokenizer") + 1:]))


def test_the_default_recipe_chains_its_stages(recipe, tmp_path):
    """train-default: SFT from the pretrain run; a second preference round from the DPO run; a decoder trained
    alone from the tokenizer, post-trained on the last model's draws; the last model exported with that
    decoder and the card's sampling settings; every model judged; every training stage given minutes, except
    SFT and DPO, whose lengths are steps and passes over the pairs."""
    plan = _plan(recipe, "default")
    runs, demo = tmp_path / "runs", tmp_path / "demo"
    at = {id(c): i for i, c in enumerate(plan)}

    pretrain = _one(plan, "pretrain")
    sft = _one(plan, "sft")
    assert f"init_from={runs}/pretrain" in sft and at[id(pretrain)] < at[id(sft)]

    prefs2, dpo2 = _one(plan, "make-prefs", f"out={demo}/prefs2"), _one(plan, "dpo", f"run_dir={runs}/dpo2")
    assert f"{runs}/dpo" == prefs2[prefs2.index("--ckpt") + 1] and "seed=1" in prefs2
    assert f"init_from={runs}/dpo" in dpo2 and f"data.shards={demo}/prefs2" in dpo2
    assert at[id(_one(plan, "dpo", f"run_dir={runs}/dpo"))] < at[id(prefs2)] < at[id(dpo2)]
    for c in (c for c in plan if c[1] == "make-prefs"):  # the rewards' words read by the font (training only)
        assert "judge.reader=glyphs" in c

    dec = _one(plan, "train-tokenizer", f"run_dir={runs}/tok-dec")
    assert _tokenizer_cfg(dec).decoder_only and _tokenizer_cfg(dec).init_from == f"{runs}/tok-gen"
    assert dec.index("trainer.precision=fp32") < len(dec) - 1 and dec[-1].startswith("trainer.")  # its own last
    post = _one(plan, "train-tokenizer", f"run_dir={runs}/tok-post")
    cfg = _tokenizer_cfg(post)  # the post-training draws from the last model, whole images
    assert f"init_from={runs}/tok-dec" in post and cfg.decoder_only and cfg.resample_from == f"{runs}/dpo2"
    assert cfg.data.crop_size is None and at[id(dpo2)] < at[id(post)]

    timed = [c for c in plan if c[1] in ("pretrain", "train-tokenizer")]
    assert len(timed) == 4 and all(any(a.startswith("trainer.max_minutes=") for a in c) for c in timed)
    export = _one(plan, "export", f"{runs}/final")
    assert export[export.index("--ckpt") + 1] == f"{runs}/dpo2" and at[id(post)] < at[id(export)]
    assert export[export.index("--tokenizer") + 1] == f"{runs}/tok-post" and "--sampling" in export
    final = _one(plan, "generator", f"{runs}/final")
    assert at[id(export)] < at[id(final)] and f"out={demo}/eval-final" in final and "seeds=[0,1,2]" in final
    bundled = _one(plan, "export", "arlm/default/model")  # the bundled model: the same model and settings
    assert [bundled[bundled.index(o) + 1] for o in ("--ckpt", "--tokenizer", "--sampling")] == \
        [export[export.index(o) + 1] for o in ("--ckpt", "--tokenizer", "--sampling")]
    assert bundled[-1] == f"{demo}/eval-final.json" and at[id(final)] < at[id(bundled)]

    evals = [c[c.index("--ckpt") + 1] for c in plan if c[1:3] == ["eval", "generator"]]
    assert evals == [f"{runs}/{s}" for s in ("pretrain", "sft", "dpo", "dpo2", "final")]
    assert _one(plan, "sample")[3] == f"{runs}/final"
    transformer = [c for c in plan if c[1] in ("pretokenize", "pretrain", "sft", "make-prefs", "dpo")]
    assert not any(f"{runs}/tok-dec" in " ".join(c) for c in transformer)  # the decoder never feeds them
    assert plan[-3][1:3] == ["scripts/demo_summary.py", str(demo)]
    for c in plan:
        if c[0] == "arimg":
            check_parses(c[1:c.index(">")] if ">" in c else c[1:])


def test_the_demo_is_the_default_recipe_without_its_extra_stages(recipe, tmp_path):
    """demo: one pretrain phase, SFT from it, one preference round, the tokenizer's own decoder: no
    pretrain-more, dpo2, decoder or export stage, and the grids come from the DPO run."""
    plan = _plan(recipe, "demo")
    runs = tmp_path / "runs"
    text = "\n".join(shlex.join(c) for c in plan).replace(str(tmp_path), "TMP")  # names, not the test's folder
    assert not any(s in text for s in ("pretrain-more", "dpo2", "prefs2", "tok-dec", "tok-post", "final"))
    assert f"init_from={runs}/pretrain" in _one(plan, "sft")
    assert _one(plan, "sample")[3] == f"{runs}/dpo"
    assert all("overwrite=true" in c for c in plan if any(a.startswith("run_dir=") for a in c))  # nothing to resume
    assert plan[-1][:2] == ["python", "scripts/demo_summary.py"] and plan[-1][-1].endswith("summary.md")


def test_variables_reach_every_stage(recipe, tmp_path):
    code, log, out, err = recipe("demo", "precision=bf16", "--dry-run")
    assert code == 0, err
    training = [ln for ln in out.splitlines() if "run_dir=" in ln]
    assert len(training) == 4 and all("trainer.precision=bf16" in ln for ln in training)
    assert f"{tmp_path}/synth" in out and " data/" not in out and " runs/" not in out


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "no recipe named 'nosuch'"),
    (["demo", "nosuch=1"], "unknown variable(s) nosuch"),
    (["demo", "precision"], "NAME=VALUE"),
    (["{tmp}/missing.yaml"], "no recipe file"),
    (["{tmp}/bad.yaml"], "not valid YAML"),
    (["{tmp}/shell.yaml"], "a command runs arimg or python"),
    (["{tmp}/var.yaml"], "unknown variable {nope}"),
    (["{tmp}/order.yaml"], "stage a reads b, which comes after it"),
    (["{tmp}/resume.yaml"], "{resume} needs the command's run_dir="),
])
def test_bad_recipes_and_variables_exit_2_with_one_line(run_cli, tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("stages: [name: a\n")
    (tmp_path / "shell.yaml").write_text("stages:\n  - {name: a, run: rm -rf x, done: x}\n")
    (tmp_path / "var.yaml").write_text("stages:\n  - name: a\n    run: arimg info {nope}\n    done: x\n")
    (tmp_path / "order.yaml").write_text("stages:\n  - {name: a, inputs: [b], run: arimg info, done: x}\n"
                                         "  - {name: b, run: arimg info, done: y}\n")
    (tmp_path / "resume.yaml").write_text("stages:\n  - name: a\n    run: arimg pretrain {resume}\n    done: x\n")
    code, out, err = run_cli("recipe", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("arimg: error:") and message in err
