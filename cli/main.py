"""The `arimg` command. Parsing only: every command calls into arlm.

Errors reach the user as one line on stderr: exit 2 for bad usage or config, 1 for bad input.
"""

from __future__ import annotations

import errno
import sys

import typer

from arlm.errors import UserError
from arlm.log import setup_logging
from arimg import data, eval as eval_cmds, models, recipe, sample, tokenizer, transformer

app = typer.Typer(
    help="arimg: autoregressive text-to-image models, from data shards to sampling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(eval_cmds.app, name="eval")
app.command("train-tokenizer")(tokenizer.train_tokenizer)
app.command("tokenize")(tokenizer.tokenize_cmd)
app.command("detokenize")(tokenizer.detokenize_cmd)
app.command("pretokenize")(tokenizer.pretokenize_cmd)
app.command("pretrain")(transformer.pretrain)
app.command("sft")(transformer.sft)
app.command("make-prefs")(transformer.make_prefs)
app.command("dpo")(transformer.dpo)
app.command("grpo")(transformer.grpo)
app.command("sample")(sample.sample_cmd)
app.command("info")(models.info_cmd)
app.command("export")(models.export_cmd)
app.command("recipe")(recipe.recipe_cmd)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"arimg: error: {' '.join(str(message).split())}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        rc = app(args=argv, prog_name="arimg", standalone_mode=False)
    except typer.TyperException as e:  # typer's (vendored click) usage errors
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: typer has shown its help already
            return 2
        return _fail(e.format_message() + (" (see --help)" if e.exit_code == 2 else ""), e.exit_code)
    except UserError as e:
        return _fail(str(e), e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0  # the reader went away (`| head`): not an error of ours
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT,
                       errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR):
            return _fail(f"{e.strerror}: {e.filename or ''}", 1)
        raise
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
