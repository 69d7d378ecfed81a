"""arimg eval: measure images (and, later, tokenizers and models)."""

from __future__ import annotations

from typing import List, Optional

import typer

from arimg.common import OVERRIDES_HELP, PRINT_CONFIG_HELP, configured, emit

app = typer.Typer(help="Measure images against their captions, tokenizers and generators.", no_args_is_help=True)


@app.command("images")
def images_cmd(
    src: str = typer.Argument(..., help="Shards, a folder of images with .txt captions, or a JSONL/CSV manifest "
                                        "of {path, prompt|caption} ('-': JSON lines on stdin)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Judge whether each image shows its caption (synthetic grammar); per-kind accuracy as JSON on stdout."""
    from arlm.evaluation import eval_images

    cfg = configured("eval_images", overrides, print_config)
    emit(eval_images(src, cfg))


@app.command("generator")
def generator_cmd(
    ckpt: str = typer.Option(..., "--ckpt", help="Transformer run, checkpoint or exported model directory."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Sample held-out prompts of every kind (or prompts=FILE), judge every image: accuracy per kind,
    word exact-match rate and diversity as JSON on stdout; images, verdicts.jsonl and a contact sheet per
    kind in out=DIR. seeds=[0,1,2] averages over sampling seeds; sampling.cfg=... and friends set the draw
    (default: the settings the model card recommends, else SamplingConfig's)."""
    from arlm.generation.modelcard import sampling_overrides
    from arlm.parallel import is_main
    from arlm.generation.evaluate import eval_generator

    cfg = configured("eval_generator", sampling_overrides(ckpt) + (overrides or []), print_config)
    report = eval_generator(ckpt, cfg)
    if is_main():  # under torchrun one report, not one per process
        emit(report)


@app.command("tokenizer")
def tokenizer_cmd(
    shards: str = typer.Argument(..., help="Held-out image shards (brace pattern, '::' list or folder)."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help="Tokenizer run or checkpoint directory."),
    size: str = typer.Option("64", "--size", help="Images are resized and centre-cropped to N or HxW."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N images only."),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="Judge the reconstructions against the captions."),
    jpeg: bool = typer.Option(True, "--jpeg/--no-jpeg", help="Measure the JPEG baseline at the same rate."),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="A caption-aware tokenizer decodes with "
                                  "each image's caption, or (--no-captions) with the null caption."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
) -> None:
    """Reconstruction quality (PSNR, SSIM, judge), codebook usage and perplexity, bits per pixel, and JPEG
    at the closest rate, as JSON on stdout."""
    from arlm.tokenizer.codec import load_tokenizer
    from arlm.tokenizer.evaluate import eval_tokenizer

    emit(eval_tokenizer(load_tokenizer(tokenizer, device), shards, size, limit, judge=judge, jpeg=jpeg,
                        captions=captions))
