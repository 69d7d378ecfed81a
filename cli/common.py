"""What every command shares: configured commands (Hydra overrides, --print-config) and output."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from arlm.errors import UserError

OVERRIDES_HELP = "Hydra overrides, key=value (see --print-config for the keys)."
PRINT_CONFIG_HELP = "Print the resolved config as YAML to stdout and exit."


def configured(name: str, overrides: list[str] | None, print_config: bool) -> Any:
    """The typed config of command `name`; with --print-config, print it and stop."""
    from arlm.config import compose, to_object, to_yaml

    cfg = compose(name, overrides or [])
    if print_config:
        sys.stdout.write(to_yaml(cfg))
        raise typer.Exit(0)
    return to_object(cfg)


def emit(obj: Any) -> None:
    """One JSON object on stdout: data only."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def emit_path(path: Any) -> None:
    sys.stdout.write(f"{path}\n")
    sys.stdout.flush()


def report(results, out) -> None:
    """Emit each result with `out`; an exception in the stream is one line on stderr. Raises at the end
    (exit 1) if any failed, so that the good inputs of a run are all processed first."""
    failed = 0
    for result in results:
        if isinstance(result, Exception):
            failed += 1
            sys.stderr.write(f"arimg: error: {' '.join(str(result).split())}\n")
        else:
            out(result)
    if failed:
        raise UserError(f"{failed} input(s) failed (see above)")
