"""arimg recipe: the stages of a recipe (conf/recipe/NAME.yaml) in order, as `make demo` runs them."""

from __future__ import annotations

from typing import List, Optional

import typer


def recipe_cmd(
    name: str = typer.Argument(..., help="A recipe in conf/recipe/ (demo, default) or a path to a YAML file."),
    variables: Optional[List[str]] = typer.Argument(None, help="NAME=VALUE: a variable of the recipe (its vars:, "
                                                               "e.g. data=, runs=, synth=, precision=)."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print the commands that would run, one per line, "
                                                                "and run nothing."),
    arimg: Optional[str] = typer.Option(None, "--arimg", help="The executable that runs the stages' arimg "
                                                              "commands (default: this arimg)."),
) -> None:
    """Run a recipe: its stages in order, each an arimg command. A stage that has finished since its inputs
    were made is skipped, an interrupted training stage resumes from its last checkpoint, each stage's wall
    time is appended to the recipe's times.tsv, and its report (the summary) is printed at the end."""
    from arlm.recipe import load, parse_vars, run

    run(load(name, parse_vars(variables or [])), [arimg] if arimg else None, dry_run)
