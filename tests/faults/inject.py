"""`arimg` in a child process with a fault planted: `python -m tests.faults.inject ARGS`.

ARIMG_FAULT=kill-in-save:N:K  SIGKILL itself at the K-th file a checkpoint save writes, in its N-th save
ARIMG_FAULT=enospc-in-save:N:K  the same file write fails with ENOSPC instead (a full disk)
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def plant(spec: str) -> None:
    from arlm import checkpoint

    what, n, k = spec.split(":")
    n, k = int(n), int(k)
    saves, files = [0], [0]
    save, write, fsync = checkpoint.save, checkpoint._write_synced, checkpoint._fsync_file

    def counting_save(*args, **kwargs):
        saves[0] += 1
        files[0] = 0
        return save(*args, **kwargs)

    def fault(path) -> None:
        files[0] += 1
        if saves[0] == n and files[0] == k:
            if what == "kill-in-save":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def faulty_write(path, fn):
        fault(path)
        return write(path, fn)

    def faulty_fsync(path):
        fault(path)
        return fsync(path)

    # the trainers call `checkpoint.save`, and save calls the two writers through the module: all three patched
    checkpoint.save, checkpoint._write_synced, checkpoint._fsync_file = counting_save, faulty_write, faulty_fsync


def main() -> None:
    if os.environ.get("ARIMG_FAULT"):
        plant(os.environ["ARIMG_FAULT"])
    from arimg.main import main as arimg

    sys.exit(arimg(sys.argv[1:]))


if __name__ == "__main__":
    main()
