"""One writer per folder: an advisory lock that a second run, pretokenize or data set pointed at a folder in
use is refused by, instead of interleaving its files with the first one's.

The lock is `fcntl.flock` on `FOLDER/.arimg.lock`. The kernel drops a flock when its process dies, however it
dies, so a lock left by a killed process never blocks anyone: the next writer takes it over, and says so,
because the file is still there and names the dead holder (a clean exit removes it). A writer that locked
the file just as its holder removed it finds the name gone or pointing elsewhere, and tries again: two
writers never hold two files of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from arlm.errors import UserError

LOCK_FILE = ".arimg.lock"


class FolderBusy(UserError):
    """Another live process writes into this folder."""


def _holder_text(info: dict) -> str:
    cmd = " ".join(info.get("argv", []))[:120]
    return f"pid {info.get('pid')} on {info.get('host')} ({cmd})" if cmd else f"pid {info.get('pid')}"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        info = json.loads(raw) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`'s lock for the block (the folder is created); FolderBusy if a live process holds it."""
    from arlm.log import log

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(_read(fd))
            os.close(fd)
            raise FolderBusy(f"{folder} is in use by {holder}: wait for it to end, or point this command at "
                             f"another folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released (removed) this file between our open and our lock: again
    try:
        stale = _read(fd)
        if stale:  # the holder died without releasing (a kill, a crash): the kernel freed its lock
            log.warning("took over the lock of %s left by %s, which is no longer running", folder, _holder_text(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv, "since": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # released by a live process: the next holder has nothing to take over
        os.close(fd)  # closing drops the flock; a killed process skips the line above, not this
