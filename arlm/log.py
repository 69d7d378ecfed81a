"""stderr is for people: logs and progress bars go there through one rich console; stdout carries data."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# piped stderr (CI logs, `2> file`) gets long lines rather than rich's 80-column wrapping
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
log = logging.getLogger("arimg")


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


def progress() -> Progress:
    """A progress bar on stderr; each task carries an `info` field for live figures (loss, samples/s)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
