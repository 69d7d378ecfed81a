"""Row 7, untrusted files: a checkpoint whose state.pt holds a malicious pickle (zip or legacy format), a
config.yaml with a Python YAML tag, shard members that are pickles (token codes, preference pairs, an image
shard's `.pyd`/`.pickle` beside its picture): each is refused with a one-line error or skipped as a bad
sample, and nothing is executed. Every payload would create a file; the trial survives when none exists."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from tests.faults import build
from tests.faults.common import Row


class Payload:
    """Unpickling this runs `touch PATH`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def run_arimg(*args) -> tuple[int, str]:
    """`arimg ARGS` in this process: (exit code, stderr)."""
    from arimg.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def one_line(code: int, err: str) -> bool:
    return code != 0 and len([ln for ln in err.splitlines() if ln.startswith("arimg: error:")]) == 1 \
        and "Traceback" not in err


def copy_run(src: Path, dst: Path) -> Path:
    from arlm import checkpoint

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return checkpoint.latest(dst)


def evil_state(work: Path, marker: Path, legacy: bool) -> bool:
    import torch

    ckpt = copy_run(build.lm(work), work / "evil-state")
    with open(ckpt / "state.pt", "wb") as f:
        if legacy:
            pickle.dump(Payload(marker), f)
        else:
            torch.save(Payload(marker), f)
    args = build.stage_args("pretrain", work, work / "evil-state")
    return one_line(*run_arimg(*args, "trainer.max_steps=8", "resume=true"))


def evil_config(work: Path, marker: Path) -> bool:
    ckpt = copy_run(build.lm(work), work / "evil-config")
    (ckpt / "config.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    return one_line(*run_arimg("sample", "--ckpt", ckpt, "--prompt", "a red circle", "--out", work / "evil-out")) \
        and one_line(*run_arimg("info", ckpt))


def add_members(shards: Path, out: Path, members: dict[str, bytes]) -> Path:
    """A copy of a shard set with `members` appended to its first shard."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(shards, out)
    first = sorted(out.glob("*.tar"))[0]
    with tarfile.open(first, "a") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def pickled_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def evil_tokens(work: Path, marker: Path) -> bool:
    shards = add_members(build.tokens(work), work / "evil-tokens",
                         {"zz-evil.npy": pickled_npy(marker), "zz-evil.txt": b"a red circle"})
    args = [a for a in build.stage_args("pretrain", work, work / "evil-tokens-run") if not a.startswith("data.shards")]
    code, err = run_arimg(*args, f"data.shards={shards}", "trainer.max_steps=2", "overwrite=true")
    return code == 0 and "corrupt tokens" in err


def evil_pairs(work: Path, marker: Path) -> bool:
    members = {f"zz-evil.{side}.npy": pickled_npy(marker) for side in ("chosen", "rejected")}
    members["zz-evil.json"] = b'{"prompt": "a red circle", "ref_chosen": 0.0, "ref_rejected": 0.0}'
    shards = add_members(build.prefs(work), work / "evil-prefs", members)
    args = [a for a in build.stage_args("dpo", work, work / "evil-prefs-run") if not a.startswith("data.shards")]
    code, err = run_arimg(*args, f"data.shards={shards}", "trainer.max_steps=2", "overwrite=true")
    return code == 0 or one_line(code, err)


def evil_image_members(work: Path, marker: Path) -> bool:
    evil = pickle.dumps(Payload(marker))
    shards = add_members(build.synth(work), work / "evil-images",
                         {"00000000.pyd": evil, "00000000.pickle": evil, "00000000.pth": evil})
    code, _ = run_arimg("data", "inspect", shards)
    args = [a for a in build.stage_args("tokenizer", work, work / "evil-images-run") if not a.startswith("data.shards")]
    code2, _ = run_arimg(*args, f"data.shards={shards}", "trainer.max_steps=2", "overwrite=true")
    return code == 0 and code2 == 0


CASES = {
    "state.pt: a malicious pickle (zip)": lambda w, m: evil_state(w, m, legacy=False),
    "state.pt: a malicious pickle (legacy)": lambda w, m: evil_state(w, m, legacy=True),
    "config.yaml: a Python tag": evil_config,
    "token shard: a pickled .npy": evil_tokens,
    "preference shard: pickled .npy pairs": evil_pairs,
    "image shard: .pyd/.pickle/.pth members": evil_image_members,
}


def run(trials: int, workdir: Path) -> Row:
    """Every case `trials` times (each with a fresh marker path)."""
    row = Row("untrusted files", test="tests/faults/test_untrusted.py::test_untrusted_files_execute_nothing")
    start = time.perf_counter()
    for t in range(trials):
        for name, case in CASES.items():
            row.trials += 1
            marker = workdir / f"pwned-{t}-{len(row.notes)}-{row.trials}"
            handled = case(workdir, marker)
            if marker.exists():
                row.fail(f"{name}: the payload ran")
            elif not handled:
                row.fail(f"{name}: not refused with one line (or not skipped as a bad sample)")
            else:
                row.survived += 1
    row.seconds = time.perf_counter() - start
    return row
