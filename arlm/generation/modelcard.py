"""What a model is, and a model packed to travel: `arimg info`, `arimg export` and the bundled default model.

An exported model is one checkpoint directory that needs nothing else: the transformer's weights (the EMA
folded in), its config and vocabulary, its image tokenizer in `tokenizer/` (weights only, no discriminator
and no optimizer state), and `card.json`, the model card: where it came from (each training stage with its
steps and data) and the evaluation figures recorded with it. `arlm.transformer.ckpt.read_vocab` reads the
tokenizer from `tokenizer/` when it is there, so an exported model samples wherever it is copied.

The package ships one such model in `arlm/default/model/` (read with importlib.resources), trained by
`make train-default`; `arimg sample` uses it when no --ckpt is given.

A card may also recommend how to sample the model (`sampling`, set by `arimg export --sampling KEY=VALUE`):
the settings measured best for it, as a Hugging Face generation_config does. Every command that samples a
model named by --ckpt (`sample`, `eval generator`, `make-prefs`) starts from them instead of
`SamplingConfig`'s defaults; what the command line sets still wins. Runs have no card: the defaults apply.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from arlm import checkpoint
from arlm.errors import UserError
from arlm.transformer.ckpt import TOKENIZER_DIR

CARD_FILE = "card.json"
DEFAULT = "default"  # `arimg info default`: the bundled model
REINSTALL = "reinstall arimg (pip install --force-reinstall arimg, or make install in a clone)"


def default_model() -> Path:
    """The bundled model's directory; a one-line error when this install has none or a damaged one."""
    root = resources.files("arlm.default") / "model"
    if not isinstance(root, Path):  # a zipped install: torch and safetensors need real files
        raise UserError("the bundled model needs arimg installed as files, not zipped: " + REINSTALL)
    for name in ("checkpoint.json", "config.yaml", "model.safetensors", "vocab.json", CARD_FILE,
                 f"{TOKENIZER_DIR}/checkpoint.json", f"{TOKENIZER_DIR}/config.yaml",
                 f"{TOKENIZER_DIR}/model.safetensors"):
        if not (root / name).is_file():
            raise UserError(f"the bundled default model is missing {root / name}: {REINSTALL}; or pass --ckpt RUN "
                            f"(make train-default builds it)")
    return root


def load_default(load):
    """`load(default_model())`, a damaged bundled file reported as such (with what to reinstall)."""
    path = default_model()
    try:
        return load(path)
    except checkpoint.CheckpointError as e:
        raise UserError(f"the bundled default model is damaged ({e}): {REINSTALL}") from None


def _parameters(ckpt: Path, name: str = "model") -> int:
    from safetensors import safe_open

    path = ckpt / f"{name}.safetensors"
    try:
        with safe_open(str(path), "pt") as f:
            total = 0
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
            return total
    except Exception as e:  # safetensors raises its own error types on a damaged header
        raise checkpoint.CheckpointError(f"corrupt checkpoint file {path}: {' '.join(str(e).split())[:200]}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise checkpoint.CheckpointError(f"corrupt file {path}: {e}") from None


def _stage(ckpt: Path) -> dict:
    """One checkpoint's own facts: kind, step, parameters, the config that matters."""
    import yaml

    meta = checkpoint.read_meta(ckpt)
    try:
        cfg = yaml.safe_load(checkpoint.load_config_yaml(ckpt)) or {}
    except yaml.YAMLError as e:
        raise checkpoint.CheckpointError(f"corrupt checkpoint {ckpt}: config.yaml: {' '.join(str(e).split())[:200]}") from None
    out: dict[str, Any] = {"kind": meta.get("kind"), "step": meta.get("step"), "path": str(ckpt),
                           "parameters": _parameters(ckpt)}
    trainer = cfg.get("trainer") or {}
    # a run given minutes (trainer.max_minutes) ends on the clock: its max_steps was never the length
    minutes = trainer.get("max_minutes")
    out["max_steps"] = None if minutes else trainer.get("max_steps")
    if minutes:
        out["max_minutes"] = minutes
    out["data"] = (cfg.get("data") or {}).get("shards")
    if meta.get("kind") == "transformer":
        out["stage"] = cfg.get("stage")
        out["model"] = cfg.get("model")
        out["init_from"] = cfg.get("init_from")
    else:
        out["tokenizer"] = cfg.get("tokenizer")
        out["init_from"] = cfg.get("init_from")
        out["decoder_only"] = cfg.get("decoder_only", False)
        if cfg.get("resample_from"):  # a decoder post-trained on a transformer's draws
            out["resample_from"] = cfg.get("resample_from")
            out["resample_share"] = cfg.get("resample_share")
    return out


def info(path: str | None) -> dict:
    """What a run, checkpoint or exported model is (`arimg info`): its kind, step, parameters, config, the
    stages it was trained in (following init_from), its tokenizer, and the figures of its model card."""
    from arlm.transformer.ckpt import read_vocab

    ckpt = default_model() if path in (None, DEFAULT) else checkpoint.resolve(path)
    report = _stage(ckpt)
    card = ckpt / CARD_FILE
    if card.is_file():
        report["card"] = _read_json(card)
    if report["kind"] == "transformer":
        vocab = read_vocab(ckpt)
        report["vocab"] = {"codebook_size": vocab.codebook_size, "grid": vocab.grid, "words": len(vocab.words),
                           "size": vocab.size}
        try:
            report["image_tokenizer"] = _stage(checkpoint.resolve(vocab.tokenizer, "tokenizer"))
        except checkpoint.CheckpointError as e:
            report["image_tokenizer"] = {"error": str(e)}
        if "card" not in report:
            report["lineage"] = lineage(ckpt)
    return report


def describe(report: dict) -> str:
    """`arimg info` for a person at a terminal: what the model is in a few lines (the JSON has everything)."""
    def params(n):
        return f"{n / 1e6:.2f}M parameters" if isinstance(n, (int, float)) else "parameters unknown"

    card = report.get("card") or {}
    lines = [f"{card.get('name') or report.get('path')}: {report.get('kind')} ({report.get('stage') or 'tokenizer'}), "
             f"{params(report.get('parameters'))}, step {report.get('step')}"]
    model, vocab = report.get("model") or {}, report.get("vocab") or {}
    if model:
        lines.append(f"  model      {model.get('n_layers')} layers x {model.get('dim')} wide, {model.get('n_heads')} "
                     f"heads, context {model.get('max_seq_len')}")
    if vocab:
        grid = "x".join(map(str, vocab.get("grid") or [])) or "?"
        lines.append(f"  vocabulary {vocab.get('size')} ids: {vocab.get('codebook_size')} codes, {grid} grid, "
                     f"{vocab.get('words')} whole words")
    tok = report.get("image_tokenizer") or {}
    if "error" in tok:
        lines.append(f"  tokenizer  {tok['error']}")
    elif tok:
        t = tok.get("tokenizer") or {}
        reads = ", its decoder reads the caption" if t.get("caption", "none") != "none" else ""
        lines.append(f"  tokenizer  {t.get('quantizer')}, {t.get('codebook_size')} codes, /{t.get('downsample')}, "
                     f"{params(tok.get('parameters'))}{reads} ({tok.get('path')})")
    stages = card.get("stages") or report.get("lineage") or []
    if stages:
        lines.append("  stages     " + " -> ".join(f"{s.get('stage')} {s.get('step')}" for s in stages))
    for name, figures in (card.get("evals") or {}).items():
        kinds = figures.get("per_kind") or {}
        shown = "  ".join(f"{k} {v['accuracy']:.1%}" for k, v in kinds.items() if v.get("accuracy") is not None)
        n = figures.get("n")
        lines.append(f"  {name:<10} {shown}" + (f"  ({n} images)" if n else ""))
    if card.get("sampling"):
        lines.append("  sampling   " + " ".join(f"{k}={v}" for k, v in card["sampling"].items()))
    lines.append("  (arimg info --json: everything, as JSON)")
    return "\n".join(lines) + "\n"

def _init_of(ckpt: Path, init_from: str) -> str:
    """The checkpoint a run started from: as its run.json records it (relative to the run), where that is
    there, else `init_from` as its config gives it (relative to the folder it was trained from)."""
    try:
        recorded = json.loads((checkpoint.run_of(ckpt) / "run.json").read_text()).get("init_from")
    except (OSError, ValueError, AttributeError):
        recorded = None
    found = checkpoint.resolve_recorded(recorded, checkpoint.run_of(ckpt)) if recorded else None
    return str(found) if found is not None else init_from


def lineage(ckpt: Path) -> list[dict]:
    """The training stages behind a transformer checkpoint, first stage first (init_from followed back while
    the runs are still there)."""
    stages, seen = [], set()
    while ckpt is not None and ckpt.resolve() not in seen:
        seen.add(ckpt.resolve())
        stage = _stage(ckpt)
        stages.append({k: stage[k] for k in ("stage", "step", "max_steps", "max_minutes", "data", "path")
                       if k in stage})
        try:
            ckpt = checkpoint.resolve(_init_of(ckpt, stage["init_from"]), "transformer") if stage.get("init_from") \
                else None
        except checkpoint.CheckpointError:
            stages.append({"stage": "?", "path": stage["init_from"], "missing": True})
            ckpt = None
    return stages[::-1]


def check_sampling(raw: Any, where: str) -> dict:
    """`raw` as sampling settings a card may recommend (keys and types of arlm.config.SamplingConfig, values the
    sampler accepts); a one-line UserError naming `where` otherwise."""
    from dataclasses import fields

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from arlm.config import SamplingConfig
    from arlm.transformer.sample import Settings

    names = [f.name for f in fields(SamplingConfig)]
    if not isinstance(raw, dict) or any(k not in names for k in raw):
        raise UserError(f"{where}: sampling settings are a mapping of {', '.join(names)}, got {raw!r}"[:300])
    try:
        merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SamplingConfig), raw))
        Settings.from_config(merged).check()
    except (OmegaConfBaseException, ValueError) as e:
        raise UserError(f"{where}: bad sampling settings {raw!r}: {' '.join(str(e).split())[:200]}") from None
    return {k: getattr(merged, k) for k in raw}


def parse_sampling(items: list[str] | tuple[str, ...]) -> dict:
    """`arimg export --sampling KEY=VALUE` items (VALUE read as YAML: 3, 0.9, linear, [0.2,0.8]) as checked settings."""
    import yaml

    raw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--sampling takes KEY=VALUE (e.g. top_k=3), got {item!r}")
        try:
            raw[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--sampling {item!r}: the value is not readable") from None
    return check_sampling(raw, "--sampling")


def recommended_sampling(path: str | None) -> dict:
    """The sampling settings the model card of `path` (None: the bundled model) recommends; {} for a run or a
    model whose card has none."""
    ckpt = default_model() if path in (None, DEFAULT) else checkpoint.resolve(path)
    card = ckpt / CARD_FILE
    if not card.is_file():
        return {}
    raw = _read_json(card)
    return check_sampling(raw.get("sampling", {}) if isinstance(raw, dict) else raw, str(card))


def sampling_for(path: str | None, given: dict) -> Any:
    """The arlm.config.SamplingConfig a command samples `path` with: SamplingConfig's defaults, then what its
    card recommends, then the settings in `given` that are not None (the command line's)."""
    from dataclasses import asdict

    from arlm.config import SamplingConfig

    chosen = {**asdict(SamplingConfig()), **recommended_sampling(path)}
    chosen.update({k: v for k, v in given.items() if v is not None})
    return SamplingConfig(**chosen)


def sampling_overrides(path: str | None) -> list[str]:
    """The card's recommended settings as config overrides (`sampling.KEY=VALUE`), to go before the command
    line's own, which then win."""
    return [f"sampling.{k}={json.dumps(v)}" for k, v in recommended_sampling(path).items()]


def same_codes(tok: Path, other: Path) -> None:
    """UserError unless tokenizer checkpoint `other` turns images into the tokens `tok` does and decodes the same
    ids: the same encoder and codebook (a decoder trained alone on `tok`'s codes, decoder_only=true)."""
    mine, theirs = checkpoint.load_reader_weights(tok), checkpoint.load_reader_weights(other)
    keys = {k for k in mine if not k.startswith("decoder.")}
    if keys != {k for k in theirs if not k.startswith("decoder.")} or not all(
            mine[k].shape == theirs[k].shape and bool((mine[k] == theirs[k]).all()) for k in keys):
        raise UserError(f"tokenizer {other} does not give the tokens of {tok}, which the transformer was trained on: "
                        f"its encoder or codebook differs (train one with decoder_only=true init_from={tok})")


def export(path: str, out: str, evals: list[str] | tuple[str, ...] = (), name: str = "", overwrite: bool = False,
           tokenizer: str | None = None, sampling: dict | None = None) -> Path:
    """Pack transformer run or checkpoint `path` and its tokenizer into `out` (see the module docstring),
    with a model card holding its lineage and the JSON reports in `evals` (e.g. `arimg eval generator`'s).
    `tokenizer`: pack this tokenizer instead, one with the same encoder and codebook (a decoder trained alone
    on the transformer's tokens). `sampling`: the settings the card recommends (checked, see
    `parse_sampling`); None keeps those of a card exported before, {} records none. Written into a
    temporary folder and renamed into place: a kill leaves `out` as it was."""
    from dataclasses import replace

    from safetensors.torch import save_file

    from arlm.transformer.ckpt import KIND, VOCAB_FILE, read_vocab

    ckpt = checkpoint.resolve(path, KIND)
    vocab = read_vocab(ckpt)
    tok = checkpoint.resolve(vocab.tokenizer, "tokenizer")
    if tokenizer is not None:
        other = checkpoint.resolve(tokenizer, "tokenizer")
        same_codes(tok, other)
        tok = other
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise UserError(f"{dest} is not empty: pass --overwrite to replace it")
    figures = {}
    for e in evals:
        report = _read_json(Path(e))
        figures[Path(e).stem] = {k: report[k] for k in ("accuracy", "per_kind", "words_exact", "diversity", "n",
                                                       "seeds", "settings") if k in report}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for src, where, extra in ((ckpt, tmp, {VOCAB_FILE: replace(vocab, tokenizer=TOKENIZER_DIR).to_json()}),
                                  (tok, tmp / TOKENIZER_DIR, {})):
            where.mkdir(parents=True)
            weights = checkpoint.load_reader_weights(src)
            save_file({k: v.contiguous() for k, v in weights.items()}, str(where / "model.safetensors"))
            meta = checkpoint.read_meta(src)
            meta["weights"] = ["model"]
            (where / "checkpoint.json").write_text(json.dumps(meta, indent=1))
            (where / "config.yaml").write_text(checkpoint.load_config_yaml(src))
            for fname, text in extra.items():
                (where / fname).write_text(text)
        # an exported model exported again (with another decoder, say) keeps the lineage its card recorded:
        # the runs behind it are not there any more
        before = _read_json(ckpt / CARD_FILE) if (ckpt / CARD_FILE).is_file() else {}
        card = {"name": name or dest.name, "exported": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "from": before.get("from", str(ckpt)), "parameters": _parameters(tmp),
                "tokenizer_parameters": _parameters(tmp / TOKENIZER_DIR),
                "stages": before.get("stages") or lineage(ckpt), "image_tokenizer": _stage(tok), "evals": figures}
        kept = before.get("sampling") if sampling is None else sampling
        if kept:
            card["sampling"] = check_sampling(kept, str(ckpt / CARD_FILE))
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
        if dest.exists():
            old = dest.parent / f".tmp-old-{dest.name}-{os.getpid()}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
