"""Row 5, fuzzed prompts and overrides: odd text into `arimg sample` and the config-driven commands.

Each trial is one seeded-random case of a kind:
- argv: `arimg sample --prompt=P ...` with prompts of control characters, shell payloads, odd Unicode, bytes
  that are not UTF-8, or 100 kB of text;
- stdin: `arimg sample --prompt -` with lines like those, NUL bytes, invalid UTF-8 and 1 MB lines;
- override: one fuzzed `key=value` to pretrain, train-tokenizer, eval generator or make-prefs: unbalanced
  quotes, interpolations (`${oc.env:HOME}`, `${oc.decode:...}`), shell payloads, `key=`, unknown keys, +/~;
- overlong: a path of 300 characters (one file name past the file system's 255).
A trial survives when every good prompt has its image (in input order) and every bad one its own one-line
error (documented: the others go on, exit 1), a refused command line is one `arimg: error:` line, nothing
prints a traceback, an interpolation is never accepted, and no file appears outside the folder the command
was pointed at (its working folder; for sample, --out). The child's HOME is a folder of the trial, so that
`${oc.env:HOME}` resolving would show as a write outside; shell payloads name a canary file (never created)
and a victim file (never removed).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.common import Row, env, files_under
from tests.faults import build

KINDS = ("argv", "stdin", "override", "overlong")

# pieces of fuzzed text; {canary} and {victim} become paths of the trial
SHELL = ["$(touch {canary})", "`touch {canary}`", "; rm -rf {victim}", "&& touch {canary}", "| tee {canary}",
         "> {canary}", "$HOME", "~/x", "%s%n%x", "*", "!!"]
ODD = ["\x1b[31m", "\x07", "\r", "\t", "\x7f", "\x0b\x0c", "\u202e", "\ufeff", "\u2028", "\U0001f600", "e\u0301",
       "ｆｕｌｌ", "'", '"', "\\", "{}", "${oc.env:HOME}", "--help", "-"]
WORDS = ["a red circle", "two blue squares", "", "green", "triangle on a black background"]

# override keys per command (valid ones first) and values; a command with --print-config stops after composing
COMMANDS = {
    "pretrain": (["pretrain", "model=tiny", "trainer=tiny"], ["run_dir", "data.shards", "trainer.lr", "init_from"]),
    "train-tokenizer": (["train-tokenizer"], ["run_dir", "data.size", "trainer.max_steps", "tokenizer.quantizer"]),
    "eval generator": (["eval", "generator", "--ckpt", "{ckpt}", "--print-config"], ["out", "seeds", "sampling.cfg"]),
    "make-prefs": (["make-prefs", "--ckpt", "{ckpt}", "--print-config"], ["out", "k", "labels", "reward"]),
}
ODD_KEYS = ["nokey", "trainer.nope", "+extra", "++run_dir", "~run_dir", "hydra.run.dir", "hydra/launcher", "a b", ""]
INTERPOLATIONS = ["${oc.env:HOME}/x", "'${oc.env:HOME}'", "\\${oc.env:HOME}", "${oc.decode:'{a: 1}'}", "${oc.env:HOME,/tmp}",
                  "[a,${oc.env:HOME}]", "{a: ${oc.env:HOME}}", "${run_dir}", "${}", '"${oc.env:HOME}/x"']
VALUES = ["'unbalanced", '"unbalanced', "a'b", "", "[1,2", "{a:", "choice(a,b)", "null", "x y", "0.5", "1e999", "nan",
          "relative/dir"] + SHELL


def fill(text: str, trial: Path) -> str:
    return text.replace("{canary}", str(trial / "canary")).replace("{victim}", str(trial / "victim"))


def fuzz_text(rng: random.Random, trial: Path, stdin: bool) -> str:
    """A prompt of 1-5 pieces, now and then 100 kB (argv's limit is 128 kB a string) or 1 MB (stdin)."""
    if rng.random() < 0.1:
        word = rng.choice(WORDS[:2]) + " "
        return word * ((1_000_000 if stdin else 100_000) // len(word))
    pieces = []
    for _ in range(rng.randint(1, 5)):
        pool = rng.choice([SHELL, ODD, WORDS, "ctrl", "unicode"])
        if pool == "ctrl":
            pieces.append(chr(rng.randrange(0 if stdin else 1, 32)).replace("\n", ""))
        elif pool == "unicode":
            pieces.append("".join(chr(rng.randrange(0x80, 0x2FFF)) for _ in range(rng.randint(1, 8))))
        else:
            pieces.append(fill(rng.choice(pool), trial))
    return rng.choice([" ", ""]).join(pieces)


class Oracle:
    """Which prompts the tiny model takes: UTF-8, and short enough for its context at its training grid."""

    def __init__(self, ckpt: Path) -> None:
        from arlm.transformer.ckpt import load_model

        model, self.vocab, _ = load_model(str(ckpt), "cpu")
        self.max_seq_len, self.grid = model.cfg.max_seq_len, tuple(self.vocab.grid)

    def fits(self, prompt: str) -> bool:
        from arlm.errors import UserError
        from arlm.transformer.sample import check_prompt

        try:
            prompt.encode("utf-8")
            check_prompt(self.vocab, prompt, *self.grid, self.max_seq_len)
        except (UnicodeEncodeError, UserError):
            return False
        return True


def child(args: list, cwd: Path, home: Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arimg", *args], input=input or b"", capture_output=True, timeout=600,
                          cwd=cwd, env={**env(), "HOME": str(home)})


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.startswith("arimg: error:")]


def check_sample(proc, prompts: list[str | None], oracle: Oracle, out: Path, where: str) -> str | None:
    """`prompts`: what each input should be read as (None: not UTF-8). Good ones answered in order, bad ones
    one line each naming them, exit 1 if any was bad."""
    good = [p for p in prompts if p is not None and oracle.fits(p)]
    bad = [n for n, p in enumerate(prompts, 1) if p is None or not oracle.fits(p)]
    try:
        records = [json.loads(ln) for ln in proc.stdout.decode().splitlines()]
    except ValueError:
        return "stdout is not JSON lines"
    lines = errors(proc)
    if "Traceback" in proc.stderr.decode(errors="replace"):
        return f"traceback: {proc.stderr.decode(errors='replace').strip().splitlines()[-1][:200]}"
    if [r["prompt"] for r in records] != good:
        return f"{len(records)} answers for {len(good)} good prompts, or not in input order"
    if not all(Path(r["path"]).is_file() and Path(r["path"]).resolve().is_relative_to(out.resolve()) for r in records):
        return "an answer's image is missing or outside --out"
    if proc.returncode != (1 if bad else 0):
        return f"exit {proc.returncode} with {len(bad)} bad prompt(s)"
    named = [f"{where} {n}:" if where == "stdin line" and prompts[n - 1] is None else f"prompt {n}:" for n in bad]
    if len(lines) != len(bad) + bool(bad) or not all(w in ln for w, ln in zip(named, lines)):
        return f"errors {[ln[:80] for ln in lines]} for bad prompts {bad}"
    return None


def check_refusal(proc, override: str, print_config: bool) -> str | None:
    """A composed config (with --print-config, exit 0) or one `arimg: error:` line; never an interpolation."""
    err = proc.stderr.decode(errors="replace")
    if "Traceback" in err:
        return f"traceback: {err.strip().splitlines()[-1][:200]}"
    if proc.returncode == 0:
        if not print_config:
            return "a training command with no data succeeded"
        if "${" in override:
            return f"interpolation accepted: {override[:60]!r}"
        return None
    if len(errors(proc)) != 1:
        return f"{len(errors(proc))} error lines (exit {proc.returncode}) for {override[:60]!r}"
    refused = any(w in errors(proc)[0] for w in ("interpolations", "override_grammar"))  # or a syntax error
    if "${" in override and (proc.returncode != 2 or not refused):
        return f"interpolation {override[:60]!r} not refused: exit {proc.returncode}, {errors(proc)[0][:120]}"
    return None


def trial_case(kind: str, rng: random.Random, trial: Path, ckpt: Path, oracle: Oracle) -> tuple[str | None, Path]:
    """Run one case; (why it did not survive or None, the folder it may write in)."""
    work, home = trial / "work", trial / "home"
    out = work / "out"
    sample = ["sample", "--ckpt", str(ckpt), "--out", str(out)]
    if kind == "argv":
        prompts = [fuzz_text(rng, trial, stdin=False) for _ in range(rng.randint(1, 4))]
        if prompts == ["-"]:  # alone, '-' means stdin
            prompts.append(WORDS[0])
        if rng.random() < 0.3:  # bytes that are not UTF-8: Python hands them over as lone surrogates
            prompts[rng.randrange(len(prompts))] += b"\xff\xc3(".decode("utf-8", "surrogateescape")
        proc = child([*sample, *(f"--prompt={p}" for p in prompts)], work, home)
        return check_sample(proc, prompts, oracle, out, "prompt"), out
    if kind == "stdin":
        raw = [fuzz_text(rng, trial, stdin=True).encode() for _ in range(rng.randint(1, 6))]
        for _ in range(rng.randint(0, 2)):
            raw[rng.randrange(len(raw))] += rng.choice([b"\xff\xfe", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80"])
        ends = rng.choice([b"\n", b""]) if raw[-1] else b"\n"  # the last line may lack its newline, unless empty
        data = b"\n".join(raw) + ends
        prompts = []
        for line in raw:
            try:
                prompts.append(line.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                prompts.append(None)
        proc = child([*sample, "--prompt", "-"], work, home, input=data)
        return check_sample(proc, prompts, oracle, out, "stdin line"), out
    if kind == "override":
        name = rng.choice(list(COMMANDS))
        args, keys = COMMANDS[name]
        key = rng.choice(keys if rng.random() < 0.6 else ODD_KEYS)
        pieces = [rng.choice(INTERPOLATIONS if rng.random() < 0.4 else VALUES) for _ in range(rng.choice([1, 1, 2]))]
        value = fill("".join(pieces), trial)
        override = f"{key}={value}" if rng.random() < 0.9 else value  # now and then no key at all
        proc = child([a.format(ckpt=ckpt) for a in args] + [override], work, home)
        return check_refusal(proc, override, "--print-config" in args), work
    if kind == "overlong":
        name = "x" * 300
        if rng.random() < 0.5:
            proc = child([*sample, "--prompt", "a red circle", "--out", str(work / name)], work, home)
        else:
            proc = child([*COMMANDS["pretrain"][0], f"run_dir={name}"], work, home)
        return check_refusal(proc, name, print_config=False), work
    raise ValueError(f"no fault kind {kind!r}")


def run(trials: int, workdir: Path, ckpt: Path | None = None, kinds: tuple[str, ...] = KINDS) -> Row:
    """`trials` cases, cycling through `kinds`, each seeded by its number. `ckpt`: a tiny transformer run to use
    (default: built here)."""
    row = Row("fuzzed prompts and overrides", test="tests/faults/test_prompts.py::test_fuzzed_prompts_and_overrides")
    workdir = Path(workdir)
    ckpt = ckpt or build.lm(workdir)
    oracle = Oracle(ckpt)
    t0 = time.perf_counter()
    for t in range(trials):
        row.trials += 1
        kind, trial = kinds[t % len(kinds)], workdir / f"prompts-{t}"
        for folder in ("work", "home"):
            (trial / folder).mkdir(parents=True, exist_ok=True)
        (trial / "victim").write_text("still here")
        before = files_under(trial)
        try:
            why, allowed = trial_case(kind, random.Random(t), trial, ckpt, oracle)
        except (OSError, subprocess.TimeoutExpired) as e:
            why, allowed = f"{type(e).__name__}: {e}", trial / "work"
        outside = [p for p in files_under(trial) - before if not p.is_relative_to(allowed) and p != allowed]
        if why is None and outside:
            why = f"wrote outside its folder: {sorted(str(p.relative_to(trial)) for p in outside)[:3]}"
        if why is None and (not (trial / "victim").exists() or (trial / "canary").exists()):
            why = "a shell payload ran"
        if why:
            row.fail(f"trial {t} ({kind}): {why}")
        else:
            row.survived += 1
    row.seconds = time.perf_counter() - t0
    return row
