"""arimg info, export: what a model is, and a model packed to travel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from arimg.common import emit, emit_path


def info_cmd(
    run: Optional[str] = typer.Argument(None, help="Run, checkpoint or exported model; 'default' or nothing: "
                                                   "the bundled default model."),
    as_json: bool = typer.Option(False, "--json", help="JSON even on a terminal (it is JSON whenever stdout is "
                                                       "not one)."),
) -> None:
    """What a model is: kind, step, parameters, its training stages and data, its image tokenizer, and the
    evaluation figures recorded in its model card. A short summary on a terminal; JSON with --json or in a pipe."""
    from arlm.generation.modelcard import describe, info

    report = info(run)
    if as_json or not sys.stdout.isatty():
        emit(report)
    else:
        sys.stdout.write(describe(report))


def export_cmd(
    ckpt: str = typer.Option(..., "--ckpt", help="Transformer run or checkpoint directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the exported model."),
    eval_: Optional[List[Path]] = typer.Option(None, "--eval", help="A JSON report to record in the model card "
                                                                   "(arimg eval generator's stdout); repeatable."),
    name: str = typer.Option("", "--name", help="The model's name in its card (default: the folder's name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what --out holds."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Pack this image tokenizer instead of "
                                            "the transformer's own: one with the same encoder and codebook, such as "
                                            "a decoder trained alone on its tokens (train-tokenizer decoder_only=true)."),
    sampling: Optional[List[str]] = typer.Option(None, "--sampling", help="KEY=VALUE (repeatable): a sampling "
                                                 "setting the card recommends, e.g. top_k=3; commands that sample "
                                                 "the model start from it (default: those of the card exported "
                                                 "before, if any)."),
) -> None:
    """Pack a transformer and its image tokenizer into one folder that samples anywhere: weights (EMA folded
    in, no optimizer state), config, vocabulary and a model card (card.json: stages, data, eval figures).
    Prints the folder."""
    from arlm.generation.modelcard import export, parse_sampling

    settings = parse_sampling(sampling) if sampling else None
    emit_path(export(ckpt, str(out), [str(e) for e in eval_ or []], name, overwrite, tokenizer, settings))
