"""The commands shown in README.md, docs/*.md and docs/journal/*.md stay true: every `arimg` line of a bash
block parses with today's command line (options, arguments) and its overrides compose against today's config
schemas, and every `make` target shown exists. What each command does is covered by the named end-to-end tests
(test_cli, test_tokenizer, test_transformer, test_sample, test_dpo, test_modelcard)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "journal").glob("*.md"))]
# command path -> the config root its overrides compose against
ROOTS = {("train-tokenizer",): "train_tokenizer", ("pretrain",): "pretrain", ("sft",): "sft", ("dpo",): "dpo",
         ("make-prefs",): "make_prefs", ("eval", "images"): "eval_images", ("eval", "generator"): "eval_generator"}


def _lines(text: str):
    """Shell lines of the ```bash blocks: continuations joined, comments and redirections dropped, the
    block's own variables (`K=...` lines) expanded."""
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        env: dict[str, str] = {}
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                name, _, value = words[0].partition("=")
                env[name] = value
                continue
            kept, skip = [], False
            for w in words:
                if skip:
                    skip = False
                elif w in (">", ">>", "2>", "2>>", "<", "&>"):
                    skip = True
                elif not w.startswith((">", "2>", "<")):
                    kept.append(w)
            if kept:
                yield line.strip(), kept


def _commands():
    for doc in DOCS:
        for line, words in _lines(doc.read_text()):
            for i, w in enumerate(words):  # `arimg ...`, `.venv/bin/arimg ...`, `... | arimg ...`, `-m arimg ...`
                if Path(w).name == "arimg" and (i == 0 or words[i - 1] in ("|", "-m") or "|" in words[:i]):
                    args = words[i + 1:]
                    if "|" in args:
                        args = args[:args.index("|")]
                    yield pytest.param(args, id=f"{doc.name}: {line[:70]}")
                    break


def _targets():
    for doc in DOCS:
        for line, words in _lines(doc.read_text()):
            if words[0] == "make":
                for w in words[1:]:
                    if not w.startswith("-") and "=" not in w:
                        yield pytest.param(w, id=f"{doc.name}: {line[:60]}")


def check_parses(args: list[str]) -> None:
    """`arimg ARGS` parses with today's command line, and its overrides compose against today's config."""
    import typer.main

    from arimg.main import app
    from arlm.config import compose

    args = list(args)
    cmd, path = typer.main.get_command(app), []
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    assert not hasattr(cmd, "commands"), f"no such command: arimg {' '.join(path + args[:1])}"
    ctx = cmd.make_context("arimg " + " ".join(path), list(args))  # raises on an unknown option or argument
    root = ROOTS.get(tuple(path))
    if root is not None:
        overrides = ctx.params.get("overrides") or []
        compose(root, list(overrides))  # raises ConfigError on an unknown key or a bad value


@pytest.mark.parametrize("args", list(_commands()))
def test_every_documented_arimg_command_parses(args):
    check_parses(args)


@pytest.mark.parametrize("target", list(_targets()))
def test_every_documented_make_target_exists(target):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target}: no such target"


def test_the_docs_show_commands():
    assert len(list(_commands())) >= 30 and len(list(_targets())) >= 2
