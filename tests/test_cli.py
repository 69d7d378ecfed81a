"""The command line: data on stdout, one-line errors on stderr, exit codes, and real --help texts."""

import csv
import json
import subprocess
import sys
import tarfile

import pytest
from PIL import Image



def test_synth_twice_gives_identical_shards_and_prints_paths(run_cli, tmp_path):
    code, out, _ = run_cli("data", "synth", "--n", 1000, "--out", tmp_path / "a")
    assert code == 0 and out.split() == [str(tmp_path / "a" / "shard-000000.tar")]
    code, out, _ = run_cli("data", "synth", "--n", 1000, "--out", tmp_path / "b")
    assert code == 0 and (tmp_path / "a/shard-000000.tar").read_bytes() == (tmp_path / "b/shard-000000.tar").read_bytes()


def test_synth_non_square(run_cli, tmp_path):
    code, out, _ = run_cli("data", "synth", "--n", 5, "--size", "64x128", "--out", tmp_path, "--kinds", "relation")
    assert code == 0
    with tarfile.open(out.split()[0]) as tar:
        img = Image.open(tar.extractfile("00000000.png"))
        rec = json.load(tar.extractfile("00000000.json"))
    assert img.size == (128, 64) and rec["size"] == [64, 128] and rec["kind"] == "relation"


@pytest.mark.parametrize("args", [["--size", "64y"], ["--kinds", "sphere"], ["--n", "0"], ["--shard-size", "0"]])
def test_synth_bad_options_are_one_line_errors(run_cli, tmp_path, args):
    code, out, err = run_cli("data", "synth", "--out", tmp_path, *args)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith("arimg: error:")


def _images_with_captions(folder, n=4):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (24 + i, 20), (40 * i, 0, 0)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"caption {i}\n")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "broken.txt").write_text("a broken one")
    Image.new("RGB", (8, 8)).save(folder / "uncaptioned.png")
    return folder


def test_pack_folder_and_inspect(run_cli, tmp_path):
    src = _images_with_captions(tmp_path / "src")
    code, out, err = run_cli("data", "pack", src, tmp_path / "shards", "--shard-size", 3)
    assert code == 0 and len(out.split()) == 2
    assert "corrupt image" in err and "no caption" in err
    code, out, err = run_cli("data", "inspect", tmp_path / "shards", "--sheet", tmp_path / "sheet.png")
    report = json.loads(out)
    assert code == 0 and report["samples"] == 4 and report["shards"] == 2 and report["skipped"] == {}
    assert report["image_width"] == {"min": 24, "mean": 25.5, "max": 27} and report["formats"] == {"png": 4}
    assert Image.open(tmp_path / "sheet.png").size[0] > 100


def test_pack_manifests(run_cli, tmp_path):
    src = _images_with_captions(tmp_path / "src")
    (tmp_path / "m.jsonl").write_text("\n".join(
        [json.dumps({"path": f"src/img{i}.png", "caption": f"c{i}", "score": i}) for i in range(3)]
        + ["not json", json.dumps({"path": "src/missing.png", "caption": "gone"})]) + "\n")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["path", "caption"], [str(src / "img0.png"), "zero"], [str(src / "img1.png"), "one"]])
    code, out, err = run_cli("data", "pack", tmp_path / "m.jsonl", tmp_path / "j")
    assert code == 0 and "no image" in err
    code, out2, _ = run_cli("data", "inspect", tmp_path / "j", "--sheet", tmp_path / "s.png")
    assert json.loads(out2)["samples"] == 3
    with tarfile.open(out.split()[0]) as tar:
        meta = json.load(tar.extractfile("00000002.json"))
    assert meta["score"] == 2 and meta["width"] == 26
    code, out, _ = run_cli("data", "pack", tmp_path / "m.csv", tmp_path / "c")
    code, out2, _ = run_cli("data", "inspect", tmp_path / "c", "--sheet", tmp_path / "s.png")
    assert code == 0 and json.loads(out2)["samples"] == 2


def test_pack_refuses_shards_and_existing_output(run_cli, tmp_path, synth_dir):
    code, _, err = run_cli("data", "pack", synth_dir, tmp_path / "x")
    assert code == 1 and "folder of images" in err
    src = _images_with_captions(tmp_path / "src")
    assert run_cli("data", "pack", src, tmp_path / "y")[0] == 0
    code, _, err = run_cli("data", "pack", src, tmp_path / "y")
    assert code == 1 and "--overwrite" in err


def test_inspect_missing_shard(run_cli, tmp_path):
    code, out, err = run_cli("data", "inspect", tmp_path / "nope-{0..3}.tar")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no such shard" in err


@pytest.mark.parametrize("override, words", [
    ("bogus.key=1", "bogus"),
    ("model=nope", "model"),
    ("judge.workers=many", "workers"),
    ("limit=", None),
    ("===", None),
])
def test_config_errors_exit_2_with_one_line(run_cli, synth_dir, override, words):
    code, out, err = run_cli("eval", "images", synth_dir, override)
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and err.startswith("arimg: error:")
    assert words is None or words in err


def test_print_config(run_cli, synth_dir):
    code, out, err = run_cli("eval", "images", synth_dir, "judge.workers=1", "limit=3", "--print-config")
    assert code == 0 and "workers: 1" in out and "limit: 3" in out


def _commands(group=None):
    from arimg.main import app
    import typer.main
    cmd = typer.main.get_command(app)
    names = []
    for name, sub in cmd.commands.items():
        if hasattr(sub, "commands"):
            names += [(name, n) for n in sub.commands]
        else:
            names.append((name,))
    return names


def test_every_command_has_real_help(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "data" in out and "eval" in out
    cmds = _commands()
    assert ("data", "synth") in cmds and ("eval", "images") in cmds
    for cmd in cmds:
        code, out, _ = run_cli(*cmd, "--help")
        assert code == 0 and len(out) > 200
        assert not any(w in out.lower() for w in ("todo", "not implemented", "placeholder", "coming soon"))


def test_help_imports_no_heavy_library():
    """`arimg --help` and each command's help parse without torch, scipy, numpy, Hydra or webdataset
    (scripts/bench_cli.py times it)."""
    code = ("import sys; from arimg.main import main\n"
            "for argv in (['--help'], ['sample', '--help'], ['pretrain', '--help'], ['data', 'synth', '--help']):\n"
            "    main(argv)\n"
            "heavy = sorted(m for m in ('torch', 'scipy', 'numpy', 'hydra', 'webdataset', 'omegaconf') if m in sys.modules)\n"
            "print(heavy, file=sys.stderr)\nsys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]


def test_console_script_and_module_entry(tmp_path):
    exe = [sys.executable, "-m", "arimg"]
    r = subprocess.run(exe + ["data", "synth", "--n", "3", "--out", str(tmp_path), "--size", "32"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("shard-000000.tar")
    r = subprocess.run(exe + ["eval", "images", str(tmp_path), "bogus.key=1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_eval_images_on_shards_folder_and_stdin_manifest(run_cli, tmp_path, monkeypatch):
    import io
    code, _, _ = run_cli("data", "synth", "--n", 12, "--kinds", "single,count,relation", "--out", tmp_path / "s")
    report = json.loads(run_cli("eval", "images", tmp_path / "s", f"details={tmp_path / 'd.jsonl'}")[1])
    assert report["n"] == 12 and report["accuracy"] == 1.0 and report["unparsed"] == 0
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["ok"] for r in rows)
    # the same images as files, with captions that lie about half of them, through stdin
    lines = []
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        for i in range(12):
            (tmp_path / f"{i}.png").write_bytes(tar.extractfile(f"{i:08d}.png").read())
            caption = tar.extractfile(f"{i:08d}.txt").read().decode()
            lines.append({"path": str(tmp_path / f"{i}.png"), "prompt": caption if i % 2 else "a red circle left of a red square"})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines.append({"path": str(tmp_path / "broken.png"), "prompt": "a red circle"})
    lines.append({"path": str(tmp_path / "0.png"), "prompt": "a cat on a mat"})
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(x) for x in lines) + "\n"))
    code, out, err = run_cli("eval", "images", "-")
    report = json.loads(out)
    assert code == 0 and report["n"] == 13 and report["correct"] == 6 and report["unparsed"] == 1
    assert report["skipped"] == {"corrupt image": 1}


def test_eval_images_missing_source(run_cli, tmp_path):
    code, out, err = run_cli("eval", "images", tmp_path / "nothing.jsonl")
    assert code == 1 and out == "" and "no such manifest" in err and err.count("\n") == 1


def test_eval_images_without_tesseract_is_one_line(run_cli, tmp_path):
    run_cli("data", "synth", "--n", 4, "--kinds", "text", "--out", tmp_path)
    code, out, err = run_cli("eval", "images", tmp_path, "judge.tesseract=/nonexistent/tesseract")
    assert code == 1 and out == "" and err.strip().splitlines()[-1].startswith("arimg: error: tesseract not found")


def test_sigkill_while_writing_leaves_only_complete_shards(tmp_path):
    import os
    import signal
    import time

    from arlm.data.shards import SkipCounter, read_shards

    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "arimg", "data", "synth", "--n", "100000", "--shard-size", "200",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = proc.stdout.readline()  # a path is printed once its shard is complete
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.strip().endswith(b"shard-000000.tar")
    shards = sorted(out.glob("*.tar"))
    skips = SkipCounter()
    assert sum(1 for _ in read_shards([str(p) for p in shards], skips)) == 200 * len(shards)
    assert skips.total == 0
    # a rerun clears the dead writer's temp file
    r = subprocess.run([sys.executable, "-m", "arimg", "data", "synth", "--n", "10", "--out", str(out), "--overwrite"],
                       capture_output=True)
    assert r.returncode == 0 and [p.name for p in out.iterdir()] == ["shard-000000.tar"]
