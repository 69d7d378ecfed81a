"""arimg sample."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from arlm.config import SamplingConfig
from arimg.common import emit, report

DEFAULT = SamplingConfig()  # one home for the sampling defaults: arimg sample and arimg eval generator
MODEL = ": the model card's recommendation, else"


def sample_cmd(
    prompt: List[str] = typer.Option(..., "--prompt", "-p",
                                     help="A prompt (repeatable); '' samples unconditionally; '-' reads one prompt "
                                          "per line from stdin and samples each as it arrives."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help="Transformer run, checkpoint or exported model "
                                                            "(default: the bundled model, see arimg info)."),
    n: int = typer.Option(1, "--n", help="Images per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch (twice the rows with guidance)."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help=f"Classifier-free guidance scale; 1 = none "
                                                             f"(default{MODEL} {DEFAULT.cfg:g})."),
    cfg_schedule: Optional[str] = typer.Option(None, "--cfg-schedule", help="constant | linear (1 -> cfg) | interval "
                                                                           f"(default{MODEL} {DEFAULT.cfg_schedule})."),
    cfg_interval: Optional[str] = typer.Option(None, "--cfg-interval", help="lo,hi: the grid fractions guided "
                                               f"(interval; default{MODEL} {','.join(f'{v:g}' for v in DEFAULT.cfg_interval)})."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=f"0 = greedy (default{MODEL} "
                                                                           f"{DEFAULT.temperature:g})."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help=f"0 = off (default{MODEL} {DEFAULT.top_k}; "
                                                             "docs/sampling.md)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help=f"1 = off (default{MODEL} {DEFAULT.top_p:g})."),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Keep the codes at least this times as likely as the "
                                                               f"likeliest; 0 = off (default{MODEL} {DEFAULT.min_p:g})."),
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
    from arlm.generation.modelcard import load_default, sampling_for
    from arlm.generation.prompts import argv_prompts, read_prompts
    from arlm.generation.sampler import Request, Sampler
    from arlm.transformer.sample import Settings

    try:
        interval = None if cfg_interval is None else [float(v) for v in cfg_interval.split(",")]
    except ValueError:
        interval = []
    if interval is not None and len(interval) != 2:
        raise ConfigError(f"--cfg-interval must be lo,hi, got {cfg_interval!r}")
    if prefix_image is None and keep_rows:
        raise ConfigError("--keep-rows needs --prefix-image")
    given = {"cfg": cfg, "cfg_schedule": cfg_schedule, "cfg_interval": interval, "temperature": temperature,
             "top_k": top_k, "top_p": top_p, "min_p": min_p}
    request = Request(n=n, batch_size=batch_size, seed=seed, size=size, grid_sheet=grid, prefix_image=prefix_image,
                      keep_rows=keep_rows, rerank=rerank)

    def load(path) -> Sampler:
        return Sampler(str(path), Settings.from_config(sampling_for(str(path), given)), request, device)

    if ckpt is None:
        from arlm.log import log

        log.info("no --ckpt: sampling from the bundled default model (arimg info default)")
        sampler = load_default(load)
    else:
        sampler = load(ckpt)
    stdin = prompt == ["-"]
    prompts = read_prompts(sys.stdin.buffer) if stdin else argv_prompts(prompt)
    report(sampler.run(prompts, out, eager=stdin, total=None if stdin else len(prompt)), emit)
