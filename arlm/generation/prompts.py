"""Where prompts come from: the synthetic grammar's held-out captions (seeded, per kind), a prompts file, the
command line or a stream; each source yields prompts, and an error of its own for a line it cannot read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from arlm.errors import ConfigError, UserError
from arlm.synth import KINDS, generate


def grammar_samples(kinds: Sequence[str], per_kind: int, seed: int, size: tuple[int, int] = (64, 64)) -> list:
    """`per_kind` samples (arlm.synth.Sample: caption and image) of each kind, those of `arimg data synth --seed
    SEED --kinds KIND`: fixed and seeded."""
    return [s for kind in kinds for s in generate(per_kind, size, seed, kinds=(kind,))]


def grammar_prompts(kinds: Sequence[str], per_kind: int, seed: int, size: tuple[int, int] = (64, 64)) -> list[str]:
    """The captions of `grammar_samples`."""
    return [s.caption for s in grammar_samples(kinds, per_kind, seed, size)]


def read_prompt_file(path: str) -> list[str]:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"prompts={path}: {e.strerror or e}") from None
    try:
        lines = [ln.strip() for ln in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"prompts={path}: not UTF-8") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ConfigError(f"prompts={path} holds no prompt")
    return lines


def choose_prompts(cfg) -> list[str]:
    """The prompts a config names: its prompts file, else `per_kind` captions of each of its `kinds` from the
    grammar (`prompt_seed`); eval generator's and make-prefs's configs share these keys."""
    if cfg.prompts is not None:
        return read_prompt_file(cfg.prompts)
    check_grammar_source(cfg)
    return grammar_prompts(cfg.kinds, cfg.per_kind, cfg.prompt_seed)


def check_grammar_source(cfg) -> None:
    """A ConfigError unless the config's `kinds` and `per_kind` name grammar prompts."""
    if cfg.per_kind < 1 or not cfg.kinds or set(cfg.kinds) - set(KINDS):
        raise ConfigError(f"kinds must be a non-empty subset of {', '.join(KINDS)} and per_kind at least 1")


def image_jobs(prompts: Sequence[str], n: int) -> list[tuple[str, int]]:
    """(prompt, image index) for n images per prompt; a prompt listed twice takes the next indices, so no
    image is drawn (and counted) twice."""
    jobs, seen = [], Counter()
    for p in prompts:
        jobs += [(p, seen[p] + i) for i in range(n)]
        seen[p] += n
    return jobs


def argv_prompts(prompts: Iterable[str]) -> Iterator[str | Exception]:
    """Prompts from the command line; one that is not UTF-8 (Python keeps such argv bytes as lone surrogates,
    which no tokenizer can encode) is an error of its own, as on stdin."""
    for n, prompt in enumerate(prompts, 1):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            yield UserError(f"prompt {n}: not UTF-8")
        else:
            yield prompt


def read_prompts(stream) -> Iterator[str | Exception]:
    """Prompts from a binary stream, one per line, as they come; a line that is not UTF-8 is an error
    of its own (the others go on). An empty line is the empty prompt: an unconditional sample."""
    for n, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield UserError(f"stdin line {n}: not UTF-8")
