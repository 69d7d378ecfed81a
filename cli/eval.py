"""arimg eval: measure images (and, later, tokenizers and models)."""

from __future__ import annotations

from typing import List, Optional

import typer

from arlm.evaluation import eval_images
from cli.common import OVERRIDES_HELP, PRINT_CONFIG_HELP, configured, emit

app = typer.Typer(help="Measure images against their captions.", no_args_is_help=True)


@app.command("images")
def images_cmd(
    src: str = typer.Argument(..., help="Shards, a folder of images with .txt captions, or a JSONL/CSV manifest "
                                        "of {path, prompt|caption} ('-': JSON lines on stdin)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Judge whether each image shows its caption (synthetic grammar); per-kind accuracy as JSON on stdout."""
    cfg = configured("eval_images", overrides, print_config)
    emit(eval_images(src, cfg))
