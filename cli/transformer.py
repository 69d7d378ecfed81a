"""arimg pretrain, sft, make-prefs, dpo, grpo."""

from __future__ import annotations

from typing import List, Optional

import typer

from arlm.config import to_yaml
from arimg.common import OVERRIDES_HELP, PRINT_CONFIG_HELP, configured, emit, emit_path


def _run(stage: str, overrides: list[str] | None, print_config: bool) -> None:
    from arlm.parallel import is_main
    from arlm.training.transformer import train

    cfg = configured(stage, overrides, print_config)
    run = train(cfg, to_yaml(cfg))
    if is_main():  # under torchrun one line, not one per process
        emit_path(run)


def pretrain(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Pretrain the transformer on token shards (next-token loss on the whole sequence). Prints the run
    directory. Several processes: torchrun --nproc-per-node=N -m arimg pretrain ..."""
    _run("pretrain", overrides, print_config)


def sft(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Fine-tune a pretrain run (init_from=RUN) on a curated set or a filter (data.kinds=\\[single]), loss on
    the visual tokens only. Prints the run directory."""
    _run("sft", overrides, print_config)


def make_prefs(
    ckpt: str = typer.Option(..., "--ckpt", help="Transformer run or checkpoint directory (the model dpo starts from)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Preference pairs from the model's own samples: k images per prompt, each scored by a reward (the
    judge's graded score, reward=module:function, or labels=FILE), best against worst where they differ by
    the margin; token shards with reference log-probs in out=DIR. A JSON report on stdout. The draw: sampling.*
    (default: the settings the model card recommends, else SamplingConfig's)."""
    from arlm.generation.modelcard import sampling_overrides
    from arlm.parallel import is_main
    from arlm.generation.prefs import make_prefs as run

    cfg = configured("make_prefs", sampling_overrides(ckpt) + (overrides or []), print_config)
    report = run(ckpt, cfg)
    if is_main():  # under torchrun one report, not one per process
        emit(report)


def dpo(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Direct preference optimisation of a run (init_from=RUN) on make-prefs pairs (data.shards=DIR);
    dpo.loss_type=sigmoid|ipo|robust, dpo.beta, dpo.ntp_weight. Prints the run directory."""
    _run("dpo", overrides, print_config)


def grpo(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
) -> None:
    """Online preference optimisation of a run (init_from=RUN): each step samples grpo.group images of each of
    its prompts, scores them (the judge's graded score, or grpo.reward=module:function) and raises what
    scored above its group. Prints the run directory."""
    _run("grpo", overrides, print_config)
