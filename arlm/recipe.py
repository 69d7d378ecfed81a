"""Recipes: a list of stages in a YAML file (conf/recipe/NAME.yaml), run in order by one runner.

A recipe file holds

    vars:    {data: data/demo, runs: runs, ...}   # {name} in what follows; NAME=VALUE on the command line
    times:   "{data}/times.tsv"                    # each command's wall time is appended here on success
    report:  "{data}/summary.md"                   # printed to stdout at the end
    stages:
      - name: pretrain
        inputs: [pretokenize]                      # stages (or paths) it reads
        run: arimg pretrain run_dir={runs}/pretrain data.shards={synth}-tok {resume} ...
        done: "{runs}/pretrain/done"               # written when every command of the stage has succeeded

`run` is one command or a list of them, each `arimg ...` or `python ...` (this interpreter), optionally
ending in `> FILE` for its stdout (else /dev/null; the file appears only once the stage has succeeded).

The runner keeps make's rules: a stage is skipped when its `done` file exists and is newer than those of its
inputs (and none of its inputs ran now); `{resume}` is `resume=true` when the command's `run_dir` holds a
checkpoint newer than its first input's `done` (an interrupted run continues), else `overwrite=true`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arlm.errors import ConfigError, UserError
from arlm.log import log

RESUME = "{resume}"  # the one word the runner fills in per run, not a variable
EXECUTABLES = ("arimg", "python")


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]  # args[0] is one of EXECUTABLES; variables filled in, RESUME kept
    stdout: str | None  # a file, or None for /dev/null

    def line(self, resume: str | None = None) -> str:
        """The command as a shell line, RESUME replaced by `resume` where given."""
        args = [resume if a == RESUME and resume else a for a in self.args]
        return shlex.join(args) + (f" > {shlex.quote(self.stdout)}" if self.stdout else "")


@dataclass(frozen=True)
class Stage:
    name: str
    commands: tuple[Command, ...]
    inputs: tuple[str, ...]  # stage names or paths
    done: str


@dataclass(frozen=True)
class Recipe:
    name: str
    variables: dict[str, str]
    stages: tuple[Stage, ...]
    times: str | None
    report: str | None


def find(name: str) -> Path:
    """conf/recipe/NAME.yaml (installed as arlm.conf.recipe), or NAME itself when it is a YAML file."""
    from importlib.resources import files

    path = Path(name)
    if path.suffix in (".yaml", ".yml") or os.sep in name:
        if path.is_file():
            return path
        raise ConfigError(f"no recipe file {name}")
    shipped = files("arlm.conf") / "recipe" / f"{name}.yaml"
    if re.fullmatch(r"[\w-]+", name) and shipped.is_file():
        return Path(str(shipped))
    known = sorted(p.name[:-5] for p in (files("arlm.conf") / "recipe").iterdir() if p.name.endswith(".yaml"))
    raise ConfigError(f"no recipe named {name!r} (known: {', '.join(known)}; or a path to a YAML file)")


def parse_vars(words: list[str] | tuple[str, ...]) -> dict[str, str]:
    """NAME=VALUE words from the command line."""
    out = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not re.fullmatch(r"\w+", key):
            raise ConfigError(f"a recipe variable is NAME=VALUE, got {w!r}")
        out[key] = value
    return out


def load(name: str, overrides: dict[str, str] | None = None) -> Recipe:
    """The recipe `name` (see find) with its variables set, `overrides` last; a ConfigError (exit 2) for a
    malformed file or an unknown variable."""
    import yaml

    path = find(name)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ConfigError(f"{path}: a recipe is a mapping with a non-empty list of stages")
    unknown_keys = set(doc) - {"vars", "times", "report", "stages"}
    if unknown_keys:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown_keys))}")
    variables = {str(k): str(v) for k, v in (doc.get("vars") or {}).items()}
    unknown = sorted(set(overrides or {}) - set(variables))
    if unknown:
        raise ConfigError(f"recipe {path.stem}: unknown variable(s) {', '.join(unknown)} "
                          f"(it has: {', '.join(variables) or 'none'})")
    variables.update(overrides or {})
    fill = _filler(variables, path)
    stages = tuple(_stage(s, fill, path) for s in doc["stages"])
    names = [s.name for s in stages]
    for s in stages:
        if names.count(s.name) > 1:
            raise ConfigError(f"{path}: two stages named {s.name}")
        later = [i for i in s.inputs if i in names[names.index(s.name):]]
        if later:
            raise ConfigError(f"{path}: stage {s.name} reads {later[0]}, which comes after it")
    times, report = (fill(doc[k]) if doc.get(k) else None for k in ("times", "report"))
    return Recipe(path.stem, variables, stages, times, report)


def _filler(variables: dict[str, str], path: Path):
    def fill(text) -> str:
        def sub(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ConfigError(f"{path}: unknown variable {m.group(0)} in {text!r}")
            return variables[m.group(1)]

        return re.sub(r"\{(\w+)\}", sub, str(text))

    return fill


def _stage(raw, fill, path: Path) -> Stage:
    if not isinstance(raw, dict) or not raw.get("name") or not raw.get("run") or not raw.get("done"):
        raise ConfigError(f"{path}: each stage has a name, run (its commands) and done (its stamp): {raw!r}")
    unknown = set(raw) - {"name", "inputs", "run", "done"}
    if unknown:
        raise ConfigError(f"{path}: stage {raw['name']}: unknown key(s) {', '.join(sorted(unknown))}")
    lines = raw["run"] if isinstance(raw["run"], list) else [raw["run"]]
    commands = []
    for line in lines:
        try:
            words = shlex.split(str(line))
        except ValueError as e:
            raise ConfigError(f"{path}: stage {raw['name']}: {e}: {line}") from None
        stdout = None
        if ">" in words:
            i = words.index(">")
            if i != len(words) - 2:
                raise ConfigError(f"{path}: stage {raw['name']}: '> FILE' ends a command: {line}")
            words, stdout = words[:i], fill(words[i + 1])
        if not words or words[0] not in EXECUTABLES:
            raise ConfigError(f"{path}: stage {raw['name']}: a command runs {' or '.join(EXECUTABLES)}: {line}")
        if RESUME in words and not any(w.startswith("run_dir=") for w in words):
            raise ConfigError(f"{path}: stage {raw['name']}: {RESUME} needs the command's run_dir=: {line}")
        commands.append(Command(tuple(w if w == RESUME else fill(w) for w in words), stdout))
    inputs = tuple(fill(i) for i in raw.get("inputs") or ())
    return Stage(str(raw["name"]), tuple(commands), inputs, fill(raw["done"]))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _stamp(recipe: Recipe, name: str) -> str:
    """The file whose time stands for input `name`: a stage's done, else the path itself."""
    return next((s.done for s in recipe.stages if s.name == name), name)


def _finished(recipe: Recipe, stage: Stage, ran: set[str]) -> bool:
    """make's rule: the stamp exists, no input ran now, and none is newer (or missing: then it is to be made)."""
    done = _mtime(stage.done)
    if done is None or ran.intersection(stage.inputs):
        return False
    stamps = [_mtime(_stamp(recipe, name)) for name in stage.inputs]
    return all(t is not None and t <= done for t in stamps)


def _resume(recipe: Recipe, stage: Stage, cmd: Command) -> str:
    """make's `test RUN/checkpoints/latest -nt INPUT`: continue a run interrupted since its input was made."""
    run_dir = next(a.split("=", 1)[1] for a in cmd.args if a.startswith("run_dir="))
    latest = _mtime(os.path.join(run_dir, "checkpoints", "latest"))
    base = _mtime(_stamp(recipe, stage.inputs[0])) if stage.inputs else None
    return "resume=true" if latest is not None and (base is None or latest > base) else "overwrite=true"


def _argv(cmd: Command, resume: str | None, arimg: list[str]) -> list[str]:
    head = arimg if cmd.args[0] == "arimg" else [sys.executable]
    return head + [resume if a == RESUME else a for a in cmd.args[1:]]


def _run_stage(recipe: Recipe, stage: Stage, arimg: list[str]) -> None:
    """Every command of `stage`, each timed; stdout files and the done stamp appear only if all succeed."""
    for cmd in stage.commands:
        resume = _resume(recipe, stage, cmd) if RESUME in cmd.args else None
        log.info(f"[{stage.name}] {cmd.line(resume)}")
        if cmd.stdout:
            Path(cmd.stdout).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(f"{cmd.stdout}.tmp" if cmd.stdout else os.devnull, "w") as out:
            rc = subprocess.call(_argv(cmd, resume, arimg), stdout=out)
        if rc != 0:
            if cmd.stdout:
                os.unlink(f"{cmd.stdout}.tmp")
            raise UserError(f"recipe {recipe.name}: stage {stage.name} failed (exit {rc}): {cmd.line(resume)}")
        if recipe.times:
            with open(recipe.times, "a") as f:
                f.write(f"{stage.name}\t{time.perf_counter() - t0:.1f}\n")
    for cmd in stage.commands:
        if cmd.stdout:
            os.replace(f"{cmd.stdout}.tmp", cmd.stdout)
    Path(stage.done).parent.mkdir(parents=True, exist_ok=True)
    Path(stage.done).touch()


def run(recipe: Recipe, arimg: list[str] | None = None, dry_run: bool = False) -> None:
    """Run the stages of `recipe` that are not finished, in order; `arimg` is the command that runs arimg
    (default: this interpreter's). A dry run prints the commands it would run to stdout instead."""
    arimg = arimg or [sys.executable, "-m", "arimg"]
    if recipe.times and not dry_run:
        Path(recipe.times).parent.mkdir(parents=True, exist_ok=True)
    ran: set[str] = set()
    for stage in recipe.stages:
        if _finished(recipe, stage, ran):
            continue
        ran.add(stage.name)
        if dry_run:
            for cmd in stage.commands:
                sys.stdout.write(cmd.line(_resume(recipe, stage, cmd) if RESUME in cmd.args else None) + "\n")
                sys.stdout.flush()
        else:
            _run_stage(recipe, stage, arimg)
    if not ran:
        log.info(f"recipe {recipe.name}: every stage has finished already")
    if not dry_run and recipe.report:
        sys.stdout.write(Path(recipe.report).read_text())
        sys.stdout.flush()
