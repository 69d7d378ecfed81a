"""arimg train-tokenizer, tokenize, detokenize, pretokenize."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from arlm.config import to_yaml
from arimg.common import OVERRIDES_HELP, PRINT_CONFIG_HELP, configured, emit, emit_path, report


def train_tokenizer(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Train an image tokenizer: tokenizer=vqvae (first stage), then tokenizer=vqgan init_from=RUN.
    Prints the run directory."""
    from arlm.training.tokenizer import train

    cfg = configured("train_tokenizer", overrides, print_config)
    from arlm.parallel import is_main

    run = train(cfg, to_yaml(cfg))
    if is_main():  # under torchrun one line, not one per process
        emit_path(run)


def _tokenizer_option():
    return typer.Option(..., "--tokenizer", "-t", help="Tokenizer run or checkpoint directory.")


def tokenize_cmd(
    images: List[str] = typer.Argument(..., help="Image files; '-' reads paths from stdin, one per line."),
    tokenizer: str = _tokenizer_option(),
    size: Optional[str] = typer.Option(None, "--size", help="Resize and centre-crop to N or HxW first."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
) -> None:
    """Print one JSON line per image: path, h, w, tokens (rows of ids). Unreadable images are reported on
    stderr and skipped; the exit code is 1 if any failed."""
    from arlm.data.sources import stdin_text
    from arlm.tokenizer.codec import load_tokenizer, tokenize

    tok = load_tokenizer(tokenizer, device)
    paths = (ln.strip() for ln in stdin_text() if ln.strip()) if images == ["-"] else images
    report(tokenize(tok, paths, size), emit)


def detokenize_cmd(
    tokenizer: str = _tokenizer_option(),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNG files."),
    caption: Optional[str] = typer.Option(None, "--caption", help="The caption every grid is drawn with by a "
                                          "caption-aware tokenizer (default: each line's 'caption' field, if any)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
) -> None:
    """Read `arimg tokenize` lines from stdin, write one PNG per line, print the paths. A bad line (not JSON,
    ids out of range, a caption that is not text or too long) is reported on stderr and skipped; the exit code
    is 1 if any failed."""
    from arlm.tokenizer.codec import detokenize, load_tokenizer

    tok = load_tokenizer(tokenizer, device)
    report(detokenize(tok, sys.stdin, out, caption), emit_path)


def pretokenize_cmd(
    shards: str = typer.Argument(..., help="Image shards: brace pattern, '::' list or folder of .tar files."),
    tokenizer: str = _tokenizer_option(),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the token shards."),
    size: str = typer.Option("64", "--size", help="Images are resized and centre-cropped to N or HxW."),
    batch_size: int = typer.Option(64, "--batch-size"),
    shard_size: int = typer.Option(1000, "--shard-size"),
    num_workers: int = typer.Option(0, "--num-workers"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace token shards already in --out."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
) -> None:
    """Encode image shards into token shards (.npy grid + caption + record) for transformer training.
    Prints the token shard paths."""
    from arlm.config import DataConfig
    from arlm.tokenizer.codec import load_tokenizer, pretokenize

    tok = load_tokenizer(tokenizer, device)
    data = DataConfig(shards=shards, size=size, crop="center", batch_size=batch_size, num_workers=num_workers,
                      shuffle_buffer=0)
    from arlm.parallel import is_main

    info = pretokenize(tok, data, out, shard_size, overwrite)
    if is_main():  # under torchrun one list, not one per process
        for path in info["shards"]:
            emit_path(path)
