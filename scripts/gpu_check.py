"""The figures of scripts/gpu_check.sh: one markdown table from the run directories and logs it left in OUT.

    python scripts/gpu_check.py table OUT --device cuda --nproc 8     # after gpu_check.sh ran its steps

`table` reads OUT/steps.tsv (one line per step: name, exit code or `skip`, start, end, note), each run's
config.yaml, run.json and metrics.jsonl, and the sampling benchmark's JSON line. It measures the matmul peak
of the precision used itself (`arlm.perf.matmul_flops`, large matrices: the trainer's start-up probe uses
1024 x 1024, far from a GPU's peak), so MFU is against a peak measured in the same run. The table goes to
stdout and OUT/table.md, the figures as JSON to OUT/report.json; the exit code is 1 when a step failed.

Training throughput is the steady state: tokens between the first and the last logged row over the time
between them, so compilation and the first steps do not count. MFU = FLOPs per token
(`Transformer.flops_per_token`: 6 per matmul weight + attention's 12 x layers x width x T) x tokens/s per
process / peak. Peak memory is what the trainer logs for rank 0 (`torch.cuda.max_memory_allocated` on a GPU,
the process's peak RSS on a CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

NONE = "–"


# --- reading what the steps left -------------------------------------------------------------------------

def read_steps(out: Path) -> dict[str, dict]:
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, start, end, *note = line.split("\t")
        steps[name] = {"rc": rc, "wall": float(end) - float(start), "note": note[0] if note else ""}
    return steps


def failure(out: Path, name: str, rc: str) -> str:
    """The line of a failed step's log that says why: arimg's one-line error, else the last exception."""
    try:
        lines = [ln.strip() for ln in (out / "logs" / f"{name}.log").read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    pick = [ln for ln in lines if "arimg: error:" in ln] or [ln for ln in lines if re.match(r"\w*(Error|Exception)\b", ln)]
    why = re.sub(r"\s+", " ", (pick or [ln for ln in lines if ln] or [f"exit code {rc}"])[-1])
    why = why[why.index("arimg: error:") + 7:] if "arimg: error:" in why else why
    return f"FAILED (exit {rc}): {why[:160]}".replace("|", "/")


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def steady_rate(rows: list[dict], key: str) -> float:
    """Items per second between the first and the last logged row (the trainer logs a running average)."""
    first, last = rows[0], rows[-1]
    if len(rows) < 2 or last["elapsed_s"] <= first["elapsed_s"]:
        return last[key]
    done = last[key] * last["elapsed_s"] - first[key] * first["elapsed_s"]
    return done / (last["elapsed_s"] - first["elapsed_s"])


def count_samples(folder: Path) -> int:
    """Samples (captions) in the webdataset shards of a folder."""
    import tarfile

    n = 0
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            n += sum(name.endswith(".txt") for name in tar.getnames())
    return n


def fmt_mib(x: float) -> str:
    return f"{x:,.0f} MiB" if x < 10240 else f"{x / 1024:,.1f} GiB"


# --- the rows --------------------------------------------------------------------------------------------

def pretrain_row(run: Path, peak: float) -> tuple[dict, dict]:
    import torch

    from arlm import checkpoint
    from arlm.config import TrainTransformerConfig
    from arlm.transformer.ckpt import read_vocab
    from arlm.transformer.model import Transformer

    cfg = checkpoint.load_config(run, TrainTransformerConfig)
    info = json.loads((run / "run.json").read_text())
    rows = metrics(run)
    world, batch = info["world_size"], cfg.data.batch_size
    seq_len = round(rows[-1]["tok_s"] * rows[-1]["elapsed_s"] / (rows[-1]["step"] * batch))
    with torch.device("meta"):
        flops_tok = Transformer(cfg.model, read_vocab(run).padded_size).flops_per_token(seq_len)
    tok_s = steady_rate(rows, "tok_s")
    mfu = flops_tok * tok_s / world / peak
    m = cfg.model
    setting = (f"{m.dim}×{m.n_layers}, {m.n_heads} heads, {info['params'] / 1e6:.1f}M params; {batch} × {seq_len} "
               f"tokens per step, steps {rows[0]['step']}–{rows[-1]['step']} timed; {info['precision']}"
               + (", compiled" if cfg.trainer.compile else ""))
    per = f" ({tok_s / world:,.0f} per process)" if world > 1 else ""
    cells = {"setting": setting, "throughput": f"{tok_s:,.0f} tok/s{per}", "mfu": f"{100 * mfu:.1f}%",
             "memory": fmt_mib(rows[-1]["mem_mib"])}
    return cells, {"tokens_per_s": tok_s, "tokens_per_s_per_process": tok_s / world, "mfu": mfu,
                   "flops_per_token": flops_tok, "peak_mem_mib": rows[-1]["mem_mib"], "world_size": world,
                   "batch": batch, "seq_len": seq_len, "loss": rows[-1].get("loss")}


def tokenizer_row(run: Path) -> tuple[dict, dict]:
    from arlm import checkpoint
    from arlm.config import TrainTokenizerConfig

    cfg = checkpoint.load_config(run, TrainTokenizerConfig)
    info = json.loads((run / "run.json").read_text())
    rows = metrics(run)
    world = info.get("world_size", 1)
    t = cfg.tokenizer
    setting = (f"{t.quantizer}, {t.codebook_size} codes, f={t.downsample}; batch {cfg.data.batch_size} of "
               f"{cfg.data.crop_size or cfg.data.size} px, {rows[-1]['step']} steps; {cfg.trainer.precision}"
               + (f"; {world} processes" if world > 1 else ""))
    img_s = rows[-1]["img_s"]
    cells = {"setting": setting, "throughput": f"{img_s:,.1f} img/s (run average)"}
    return cells, {"images_per_s": img_s, "world_size": world, "psnr": rows[-1].get("psnr")}


def sampling_rows(out: Path) -> dict[int, dict[str, dict]]:
    """batch -> run name -> bench_sampling.py's row, from the JSON line it printed last."""
    lines = [ln for ln in (out / "logs" / "sampling.out").read_text().splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1])
    found: dict[int, dict[str, dict]] = {}
    for r in report["rows"]:
        found.setdefault(r["batch"], {})[r["run"]] = {**r, "precision": report["precision"], "grid": report["grid"]}
    return found


ARIMG_RUN, HF_RUN = "arimg, KV cache", "transformers generate, KV cache"


def table(args: argparse.Namespace) -> int:
    import torch

    from arlm.perf import DTYPES, fmt_flops, matmul_flops

    out = args.out.resolve()
    steps = read_steps(out)
    device = torch.device(args.device)
    # on a CPU the precision used only: emulated bf16 (AVX2) takes seconds per 1024 x 1024 matmul
    n, budget = (8192, 1.0) if device.type == "cuda" else (1024, 0.5)
    peaks = {p: matmul_flops(DTYPES[p], device, n=n, budget_s=budget)
             for p in (("bf16", "fp32") if device.type == "cuda" else (args.precision,))}
    peak = peaks[args.precision]
    where = (f"{args.nproc} × {torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"CPU, {args.nproc} processes for torchrun, {torch.get_num_threads()} threads")
    rows: list[tuple[str, dict]] = []
    report: dict = {"device": where, "torch": torch.__version__, "precision": args.precision,
                    "matmul_peak_flops": {k: round(v) for k, v in peaks.items()}, "rows": {}}

    def add(check: str, cells: dict, figures: dict | None = None, step: str | None = None) -> None:
        if step is not None and step in steps:
            cells.setdefault("wall", f"{steps[step]['wall']:.0f} s")
        rows.append((check, cells))
        report["rows"][check] = {**cells, **(figures or {})}

    def from_step(check: str, step: str, make) -> None:
        """The row of one step: its figures, or why there are none."""
        s = steps.get(step)
        if s is None:
            add(check, {"throughput": "FAILED: the step did not run"})
        elif s["rc"] == "skip":
            add(check, {"throughput": f"skipped: {s['note']}"})
        elif s["rc"] != "0":
            add(check, {"throughput": failure(out, step, s["rc"])}, step=step)
        else:
            try:
                cells, figures = make()
            except Exception as e:  # a step that exited 0 without its outputs is a failure too
                cells, figures = {"throughput": f"FAILED: no figures ({type(e).__name__}: {e})"[:200]}, {}
            add(check, cells, figures, step)

    others = ", ".join(f"{p} {fmt_flops(v)}" for p, v in peaks.items() if p != args.precision)
    add(f"matmul peak, {args.precision}", {"setting": f"{n} × {n} matmul, the best of {budget:g} s",
                                            "throughput": fmt_flops(peak) + (f" ({others})" if others else "")})
    from_step("data synth", "synth", lambda: ({"setting": steps["synth"]["note"],
                                               "throughput": f"{count_samples(out / 'synth'):,} images"}, {}))
    from_step("train-tokenizer, 1 process", "tokenizer", lambda: tokenizer_row(out / "tok"))
    from_step("pretokenize", "pretokenize", lambda: (
        {"setting": steps["pretokenize"]["note"],
         "throughput": f"{json.loads((out / 'tokens' / 'tokens.json').read_text())['samples']:,} images"}, {}))
    from_step("pretrain, 1 process", "pretrain", lambda: pretrain_row(out / "pretrain", peak))
    from_step(f"pretrain, DDP × {args.nproc}", "ddp", lambda: pretrain_row(out / "ddp", peak))
    from_step(f"pretrain, FSDP2 × {args.nproc}", "fsdp", lambda: pretrain_row(out / "fsdp", peak))
    from_step(f"train-tokenizer, torchrun × {args.nproc}", "tokenizer-torchrun",
              lambda: tokenizer_row(out / "tok-torchrun"))

    has_hf = importlib.util.find_spec("transformers") is not None
    found: dict = {}
    if steps.get("sampling", {}).get("rc") == "0":
        try:
            found = sampling_rows(out)
        except (OSError, ValueError, KeyError) as e:
            steps["sampling"] = {**steps["sampling"], "rc": "0 but no JSON line"}
            (out / "logs" / "sampling.log").open("a").write(f"Error: {e}\n")
    for batch in (1, 16):
        def ours(batch=batch):
            r = found[batch][ARIMG_RUN]
            return ({"setting": f"{r['model']} ({r['params'] / 1e6:.1f}M), {r['grid'][0]}×{r['grid'][1]} grid, "
                                f"{r['precision']}", "throughput": f"{r['tokens_per_s']:,.1f} tok/s"},
                    {"tokens_per_s": r["tokens_per_s"]})

        def theirs(batch=batch):
            r, a = found[batch][HF_RUN], found[batch][ARIMG_RUN]
            return ({"setting": f"LlamaForCausalLM of the same shape, {r['precision']}",
                     "throughput": f"{r['tokens_per_s']:,.1f} tok/s; arimg {a['tokens_per_s'] / r['tokens_per_s']:.2f}×"},
                    {"tokens_per_s": r["tokens_per_s"], "arimg_vs_transformers": a["tokens_per_s"] / r["tokens_per_s"]})

        from_step(f"sample, batch {batch}: arimg", "sampling", ours)
        if has_hf:
            from_step(f"sample, batch {batch}: transformers generate", "sampling", theirs)
        else:
            add(f"sample, batch {batch}: transformers generate",
                {"throughput": "skipped: transformers not installed (pip install -e '.[bench]')"})

    failed = [c for c, cells in rows if cells["throughput"].startswith("FAILED")]
    mfu_head = f"MFU vs {args.precision} peak"
    lines = [f"gpu_check ({args.mode}): {where}; torch {torch.__version__}; {args.precision}; OUT {out}", "",
             f"| check | setting | throughput | {mfu_head} | peak memory (rank 0) | wall |", "|---|---|---|---|---|---|"]
    for check, c in rows:
        lines.append(f"| {check} | {c.get('setting', NONE)} | {c['throughput']} | {c.get('mfu', NONE)} | "
                     f"{c.get('memory', NONE)} | {c.get('wall', NONE)} |")
    lines += ["", f"{len(rows) - len(failed)} of {len(rows)} rows without failure"
              + (f"; failed: {', '.join(failed)} (logs in {out / 'logs'})" if failed else "")]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    report["failed"] = failed
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="the table of a gpu_check.sh run")
    t.add_argument("out", type=Path)
    t.add_argument("--device", choices=["cpu", "cuda"], required=True)
    t.add_argument("--nproc", type=int, required=True, help="processes of the torchrun rows")
    t.add_argument("--precision", choices=["bf16", "fp32"], required=True, help="the precision the runs used")
    t.add_argument("--mode", default="gpu", help="a label for the header line")
    args = ap.parse_args()
    from arlm.log import setup_logging

    setup_logging()
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
