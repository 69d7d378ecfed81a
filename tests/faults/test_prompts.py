"""Row 5, fuzzed prompts and overrides: the row itself, and the fixes it led to as focused tests."""

import io

import pytest
from hypothesis import given, settings, strategies as st

from arlm.config import compose
from arlm.errors import ConfigError, UserError
from arlm.generation.prompts import argv_prompts, read_prompts
from tests.faults import row_prompts

KINDS = row_prompts.KINDS

KEYS = ["run_dir", "init_from", "data.shards", "trainer.lr", "data.kinds", "nokey", "hydra.run.dir", "+x", "~run_dir"]
PAYLOAD = st.text(alphabet="${}:'\"\\[](),=~+ ax.HOME oc.env", max_size=30)


def test_fuzzed_prompts_and_overrides(tiny_lm, tmp_path):
    row = row_prompts.run(len(KINDS), tmp_path, ckpt=tiny_lm, kinds=KINDS)
    assert row.lost == 0 and row.survived == row.trials == len(KINDS), row.notes


@pytest.mark.slow
def test_fuzzed_prompts_and_overrides_50(tiny_lm, tmp_path):
    row = row_prompts.run(50, tmp_path, ckpt=tiny_lm, kinds=KINDS)
    assert row.lost == 0 and row.survived == 50, row.notes


def test_overlong_name_is_one_line_error(tiny_lm, tmp_path):
    """Regression: a name over 255 bytes raised OSError ENAMETOOLONG, which cli/main.py printed as a traceback."""
    row = row_prompts.run(1, tmp_path, ckpt=tiny_lm, kinds=("overlong",))
    assert row.lost == 0 and row.survived == 1, row.notes


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.builds("{}={}".format, st.sampled_from(KEYS), PAYLOAD)))
def test_any_override_composes_or_is_a_config_error(override):
    try:
        compose("pretrain", [override])
    except ConfigError:
        return
    assert "${" not in override  # an interpolation never gets through


@pytest.mark.parametrize("override", ["run_dir=${oc.env:HOME}/x", "run_dir='${oc.env:HOME}'", "run_dir=\\${oc.env:HOME}",
                                      "data.kinds=[a,${oc.env:HOME}]", "trainer.lr=${trainer.seed}"])
def test_interpolations_are_refused_naming_the_key(override):
    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}: interpolations"):
        compose("pretrain", [override])


def test_interpolated_run_dir_writes_nothing(run_cli, tmp_path, monkeypatch):
    """The bug: `run_dir=${oc.env:HOME}/x` was resolved, and a run started under $HOME."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, out, err = run_cli("pretrain", "model=tiny", "trainer=tiny", "run_dir=${oc.env:HOME}/x")
    assert code == 2 and out == "" and err.count("arimg: error: run_dir: interpolations") == 1
    assert not any(home.iterdir()) and not any(work.iterdir())


@pytest.mark.parametrize("override", ["+foo=1", "++trainer.foo=1", "~run_dir", "hydra.run.dir=x", "hydra/launcher=basic",
                                      "run_dir=", "init_from=", "model=null", "trainer={a: 1}", "=null"])
def test_odd_overrides_are_config_errors(override):
    """+foo=1 used to reach the dataclass as an unknown attribute, init_from= silently meant '', and a group set
    to null (model=null, or =null) was a ValueError traceback from Hydra."""
    with pytest.raises(ConfigError):
        compose("pretrain", [override])


def test_quoted_empty_and_null_values_still_work():
    assert compose("pretrain", ["init_from=''"]).init_from == ""
    assert compose("pretrain", ["init_from=null"]).init_from is None


def test_non_utf8_argv_prompt_is_its_own_error(run_cli, tiny_lm, tmp_path):
    """The bug: bytes that are not UTF-8 in --prompt reached the tokenizer as surrogates: UnicodeEncodeError."""
    bad = b"a \xff b".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    code, out, err = run_cli("sample", "--ckpt", tiny_lm, "-p", bad, "-p", "a red circle", "--out", tmp_path)
    assert code == 1 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("arimg: error:")] == [
        "arimg: error: prompt 1: not UTF-8", "arimg: error: 1 input(s) failed (see above)"]
    assert out.count("\n") == 1 and '"a red circle"' in out


TEXT_WITH_SURROGATES = st.lists(st.one_of(st.text(max_size=5), st.sampled_from(["\udcff", "\ud800"])), max_size=4).map("".join)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(TEXT_WITH_SURROGATES, max_size=5))
def test_argv_prompts_keep_utf8_and_refuse_the_rest(prompts):
    got = list(argv_prompts(prompts))
    assert len(got) == len(prompts)
    for n, (prompt, item) in enumerate(zip(prompts, got), 1):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in prompt):
            assert isinstance(item, UserError) and str(item) == f"prompt {n}: not UTF-8"
        else:
            assert item == prompt


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=6))
def test_read_prompts_answers_every_line(lines):
    got = list(read_prompts(io.BytesIO(b"\n".join(lines) + b"\n")))
    assert len(got) == len(lines)
    for n, (raw, item) in enumerate(zip(lines, got), 1):
        try:
            assert item == raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            assert isinstance(item, UserError) and str(item) == f"stdin line {n}: not UTF-8"
