"""arimg data: make, pack and inspect shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from arimg.common import emit, emit_path

app = typer.Typer(help="Make, pack and inspect image shards (webdataset tar: .png/.jpg + .txt + .json).",
                  no_args_is_help=True)


@app.command("synth")
def synth_cmd(
    n: int = typer.Option(1000, "--n", help="Number of samples."),
    size: str = typer.Option("64", help="Image size: N (square) or HxW, e.g. 64x128."),
    seed: int = typer.Option(0, help="The same seed gives the same bytes."),
    kinds: str = typer.Option("single,count,relation,text", help="Comma-separated subset of these kinds."),
    words: Optional[str] = typer.Option(None, "--words", help="The words of the text kind: a file of words or a "
                                        "comma-separated list (default: the shipped list)."),
    exclude_words: Optional[str] = typer.Option(None, "--exclude-words", help="Words (file or list) the text kind "
                                                "never draws: a held-out set."),
    shard_size: int = typer.Option(1000, help="Samples per shard."),
    out: Path = typer.Option(Path("data/synth"), help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace shards already in the output folder."),
) -> None:
    """Write the synthetic data set (shapes, counts, relations, words; SYNTH.md). Prints shard paths."""
    from arlm import synth
    from arlm.data.writers import write_synth

    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    vocabulary = synth.word_list(words, exclude_words)
    for path in write_synth(out, n, synth.parse_size(size), seed, kind_list, shard_size, overwrite,
                            vocabulary=vocabulary):
        emit_path(path)


@app.command("pack")
def pack_cmd(
    src: str = typer.Argument(..., help="Folder of images with same-name .txt captions, or a .jsonl/.csv "
                                        "manifest with path and caption ('-': JSON lines on stdin)."),
    out: Path = typer.Argument(..., help="Output folder for the shards."),
    shard_size: int = typer.Option(1000, help="Samples per shard."),
    overwrite: bool = typer.Option(False, help="Replace shards already in the output folder."),
) -> None:
    """Pack your own captioned images into shards. Prints shard paths; unusable images are skipped and counted."""
    from arlm.data.writers import pack

    for path in pack(src, out, shard_size, overwrite):
        emit_path(path)


@app.command("inspect")
def inspect_cmd(
    shards: str = typer.Argument(..., help="Shards: a brace pattern, a .tar, or a folder of .tar files."),
    sheet: Path = typer.Option(Path("contact-sheet.png"), help="Where to write the contact sheet PNG."),
    sheet_n: int = typer.Option(48, help="Samples on the contact sheet."),
    limit: int = typer.Option(None, help="Read only the first N samples."),
) -> None:
    """Counts, caption and image-size statistics as JSON on stdout, and a contact sheet of the first samples."""
    from arlm.data.inspect import inspect_shards

    emit(inspect_shards(shards, sheet, sheet_n, limit))
