"""arimg sample."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from arlm.config import SamplingConfig
from arimg.common import emit, report

DEFAULT = SamplingConfig()  # one home for the sampling defaults: arimg sample and arimg eval generator


def sample_cmd(
    prompt: List[str] = typer.Option(..., "--prompt", "-p",
                                     help="A prompt (repeatable); '' samples unconditionally; '-' reads one prompt "
                                          "per line from stdin and samples each as it arrives."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help="Transformer run, checkpoint or exported model "
                                                            "(default: the bundled model, see arimg info)."),
    n: int = typer.Option(1, "--n", help="Images per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch (twice the rows with guidance)."),
    cfg: float = typer.Option(DEFAULT.cfg, "--cfg", help="Classifier-free guidance scale; 1 = none (docs/results.md)."),
    cfg_schedule: str = typer.Option(DEFAULT.cfg_schedule, "--cfg-schedule", help="constant | linear (1 -> cfg) | interval."),
    cfg_interval: str = typer.Option(",".join(f"{v:g}" for v in DEFAULT.cfg_interval), "--cfg-interval",
                                     help="lo,hi: the grid fractions guided (interval)."),
    temperature: float = typer.Option(DEFAULT.temperature, "--temperature", help="0 = greedy."),
    top_k: int = typer.Option(DEFAULT.top_k, "--top-k", help="0 = off (docs/results.md)."),
    top_p: float = typer.Option(DEFAULT.top_p, "--top-p", help="1 = off."),
    seed: int = typer.Option(0, "--seed"),
    size: Optional[str] = typer.Option(None, "--size", help="Image size N or HxW (default: the training grid's)."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Folder for the PNG files."),
    grid: bool = typer.Option(False, "--grid", help="Also write one contact sheet per prompt."),
    prefix_image: Optional[str] = typer.Option(None, "--prefix-image", help="Complete this image: see --keep-rows."),
    keep_rows: int = typer.Option(0, "--keep-rows", help="Token rows of --prefix-image kept; the model writes the rest."),
    rerank: int = typer.Option(1, "--rerank", help="Best of N: draw N candidates per image and keep the one the judge "
                                                  "scores highest (synthetic grammar). A choice for people, not a "
                                                  "measurement: never report it as the model's accuracy."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
) -> None:
    """Sample images for prompts. One JSON line per image on stdout (prompt, index, seeds, settings, path);
    files are named by prompt and image number, never by prompt text. A bad prompt (too long, not UTF-8)
    is reported on stderr and the others go on; the exit code is 1 if any failed."""
    from arlm.errors import ConfigError
    from arlm.transformer.sample import Request, Sampler, Settings, argv_prompts, read_prompts

    try:
        lo, hi = (float(v) for v in cfg_interval.split(","))
    except ValueError:
        raise ConfigError(f"--cfg-interval must be lo,hi, got {cfg_interval!r}") from None
    if prefix_image is None and keep_rows:
        raise ConfigError("--keep-rows needs --prefix-image")
    settings = Settings(cfg=cfg, cfg_schedule=cfg_schedule, cfg_interval=(lo, hi), temperature=temperature,
                        top_k=top_k, top_p=top_p)
    request = Request(n=n, batch_size=batch_size, seed=seed, size=size, grid_sheet=grid, prefix_image=prefix_image,
                      keep_rows=keep_rows, rerank=rerank)
    if ckpt is None:
        from arlm.log import log
        from arlm.modelcard import load_default

        log.info("no --ckpt: sampling from the bundled default model (arimg info default)")
        sampler = load_default(lambda path: Sampler(str(path), settings, request, device))
    else:
        sampler = Sampler(ckpt, settings, request, device)
    stdin = prompt == ["-"]
    prompts = read_prompts(sys.stdin.buffer) if stdin else argv_prompts(prompt)
    report(sampler.run(prompts, out, eager=stdin, total=None if stdin else len(prompt)), emit)
