"""What `pip install arimg` puts into site-packages: our own names only, and every file of the tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> the name it installs under
INSTALLED_AS = {"arlm": "arlm", "cli": "arimg", "conf": "arlm/conf"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True)
    (whl,) = out.glob("arimg-*.whl")
    return zipfile.ZipFile(whl)


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    return wheel.namelist()


def test_the_wheel_adds_no_top_level_module_but_ours(wheel, wheel_names):
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"arimg", "arlm"}  # no `cli`, no `conf`
    entry = wheel.read(next(n for n in wheel_names if n.endswith("dist-info/entry_points.txt"))).decode()
    assert "arimg = arimg.main:entry" in entry


def test_the_wheel_holds_every_module_config_and_asset_of_the_tree(wheel_names):
    have = set(wheel_names)
    for folder, name in INSTALLED_AS.items():
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and f.suffix in {".py", ".yaml", ".ttf", ".txt", ".LICENSE", ".safetensors", ".json"} \
                    and "__pycache__" not in f.parts:
                assert f"{name}/{f.relative_to(ROOT / folder)}" in have, f"{f} is not in the wheel"
