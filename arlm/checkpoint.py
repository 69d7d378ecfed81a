"""Checkpoints: written atomically, read back with a one-line error when anything is wrong.

Layout (DESIGN.md): `RUN/checkpoints/step-NNNNNNN/` holds `checkpoint.json` (kind, step), `config.yaml`
(the run's resolved config), one `NAME.safetensors` per set of weights (`model`, and `ema`, `disc` where a
stage has them) and `state.pt`, the training state (optimizer, step, RNG, data position) as plain data
that loads with `torch.load(weights_only=True)`. `RUN/checkpoints/latest` names the newest one.

A checkpoint is written into a temporary folder, each file flushed to disk, and renamed into place; only
then does `latest` move (itself by temp + rename). A kill at any moment leaves the previous checkpoint
and pointer intact; a leftover temporary folder is ignored and cleared by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from arlm.errors import UserError

FORMAT = 1
POINTER = "latest"


class CheckpointError(UserError):
    """Missing, corrupt or wrong-kind checkpoint."""


class WrongKind(CheckpointError):
    exit_code = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class _Writes:
    """A file for torch.save that keeps the OSError of a failed write: torch's zip writer reports a full disk
    as a RuntimeError about file positions, and the real cause must reach the user."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj: Any, f) -> None:
    writes = _Writes(f)
    try:
        torch.save(obj, writes)
    except RuntimeError:
        if writes.error is not None:
            raise writes.error from None
        raise


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def save(run_dir: str | os.PathLike, step: int, kind: str, weights: dict[str, dict[str, torch.Tensor]],
         state: dict[str, Any], config_yaml: str, keep: int = 2, files: dict[str, bytes] | None = None) -> Path:
    """Write checkpoint `step` of `run_dir` atomically and point `latest` at it; keep the newest `keep`.
    `files` are written beside the weights as they are (e.g. the transformer's vocab.json)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    tmp.mkdir()
    try:
        for name, tensors in weights.items():
            # safetensors wants contiguous tensors that share no memory
            save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
            _fsync_file(tmp / f"{name}.safetensors")
        _write_synced(tmp / "state.pt", lambda f: _torch_save(state, f))
        _write_synced(tmp / "config.yaml", lambda f: f.write(config_yaml.encode()))
        for name, data in (files or {}).items():
            _write_synced(tmp / name, lambda f: f.write(data))
        meta = {"format": FORMAT, "kind": kind, "step": step, "weights": sorted(weights)}
        _write_synced(tmp / "checkpoint.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
        _fsync_dir(tmp)
    except BaseException:  # a full disk, an interrupt: no partial checkpoint stays behind, the previous one rules
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / step_name(step)
    if final.exists():  # the same step written again (a resumed run): the new one replaces it
        old = root / f".tmp-old-{step_name(step)}-{os.getpid()}"
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    pointer = root / f".tmp-{POINTER}-{os.getpid()}"
    try:
        _write_synced(pointer, lambda f: f.write(final.name.encode()))
        pointer.replace(root / POINTER)
    except BaseException:  # `latest` still names the previous checkpoint, which is whole
        pointer.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / POINTER
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "checkpoint.json").is_file():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / "checkpoint.json").is_file())
    return done[-1] if done else None


def run_of(ckpt: Path) -> Path:
    """The run directory a checkpoint directory belongs to (itself when it stands alone: an exported model)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt


def record_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """`path` as a file in folder `base` records it: relative to `base`, so that the two may move together and
    be used from any working folder (`resolve_recorded` reads it back)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base))


def resolve_recorded(recorded: str, base: str | os.PathLike) -> Path | None:
    """A path recorded in a file of folder `base` (`record_path`), or None when it is not there. Relative paths
    are taken against `base`; those that older runs recorded against their working folder are found there
    too."""
    p = Path(recorded)
    for cand in ((p,) if p.is_absolute() else (Path(os.path.normpath(Path(base) / p)), p)):
        if cand.exists():
            return cand
    return None


def resolve(path: str | os.PathLike, kind: str | None = None) -> Path:
    """A checkpoint directory from a run directory or a checkpoint directory; checks its kind."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such run or checkpoint: {p}")
    ckpt = p if (p / "checkpoint.json").is_file() else latest(p)
    if ckpt is None:
        raise CheckpointError(f"{p} is neither a checkpoint nor a run directory with checkpoints")
    meta = read_meta(ckpt)
    if kind is not None and meta.get("kind") != kind:
        raise WrongKind(f"{ckpt} is a {meta.get('kind', 'unknown')!r} checkpoint, not a {kind!r} one")
    return ckpt


def read_meta(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / "checkpoint.json").read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("unknown format")
        return meta
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {ckpt}: checkpoint.json: {e}") from None


def load_weights(ckpt: Path, name: str = "model", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = ckpt / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no {name}.safetensors")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {' '.join(str(e).split())[:200]}") from None


def load_reader_weights(ckpt: Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights a reader uses: the EMA's entries (floating point only) over the model's when the run kept an
    EMA and `ema` is true; the model's integer buffers always come from the model file."""
    weights = load_weights(ckpt, "model")
    if ema and (ckpt / "ema.safetensors").is_file():
        weights.update(load_weights(ckpt, "ema"))
    return weights


def load_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt} has no state.pt") from None
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"corrupt checkpoint file {path}: {' '.join(str(e).split())[:200]}") from None


def load_config_yaml(ckpt: Path) -> str:
    try:
        return (ckpt / "config.yaml").read_text()
    except OSError as e:
        raise CheckpointError(f"checkpoint {ckpt} has no readable config.yaml: {e.strerror}") from None


def load_config(ckpt: Path, schema: type) -> Any:
    """The typed config (an instance of dataclass `schema`) stored in a checkpoint."""
    from omegaconf import OmegaConf

    try:
        stored = OmegaConf.create(load_config_yaml(ckpt))
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), stored))
    except CheckpointError:
        raise
    except Exception as e:  # YAML or schema errors: the checkpoint's config is not one we wrote
        raise CheckpointError(f"corrupt checkpoint {ckpt}: config.yaml: {' '.join(str(e).split())[:200]}") from None


def load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Strict load with a one-line error when the architecture differs."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise CheckpointError(f"{where} does not fit this model ({first[0].strip()[:200]})") from None
