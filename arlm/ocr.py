"""A thin wrapper around the tesseract command line (tesseract-ocr; `make install` installs it).

Tesseract runs as a subprocess, one call per image, so callers may run several reads at once from threads.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from functools import lru_cache

from PIL import Image

from arlm.errors import UserError
from arlm.log import log

MISSING = "tesseract not found: install tesseract-ocr (make install does)"


@lru_cache(maxsize=8)
def find_tesseract(exe: str = "tesseract") -> str:
    """Absolute path of the tesseract executable; UserError (one line) when it is not installed."""
    path = shutil.which(exe)
    if path is None:
        raise UserError(MISSING)
    return path


def read_line(image: Image.Image, exe: str = "tesseract", psm: int = 7, whitelist: str = "",
              timeout: float = 30.0) -> str:
    """Text tesseract reads in `image` (dark text on a light ground), whitespace removed."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    cmd = [find_tesseract(exe), "stdin", "stdout", "--psm", str(psm)]
    if whitelist:
        cmd += ["-c", f"tessedit_char_whitelist={whitelist}"]
    # OMP_THREAD_LIMIT=1: tesseract's own threads only contend with ours (the callers run reads in parallel)
    try:
        out = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=timeout, check=True,
                             env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        # one image tesseract cannot read is a failed read, not the end of an evaluation
        log.warning("tesseract failed on an image (%s); counted as an empty read", type(e).__name__)
        return ""
    return "".join(out.stdout.decode("utf-8", "replace").split())
