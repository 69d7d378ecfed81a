#!/usr/bin/env bash
# One pass over every CUDA path of arimg, printed as one markdown table:
#   data synth, a short train-tokenizer run and pretokenize (its own data, in OUT); bf16 pretrain of model=b
#   with trainer.compile=true (tokens/s, MFU against the bf16 matmul peak measured in this run, peak memory);
#   the same under torchrun with DDP and with FSDP2 over every GPU here; train-tokenizer under torchrun; and
#   sampling against transformers' generate at batch 1 and 16 (scripts/bench_sampling.py).
# Sized for 8 minutes on one GPU machine (not measured yet: no GPU was lent). --dry runs the same steps on
# the CPU with tiny shapes (model=tiny, tokenizer=tiny, fp32, no compile, 2 gloo processes for the torchrun
# rows) in about a minute: CI runs it (tests/test_gpu_check.py), so that this script cannot rot.
#
#   bash scripts/gpu_check.sh [--dry] [--out DIR] [--steps N]
#
# --out: where everything goes (default: a new temporary folder); --steps: pretrain steps (default 300, dry 8).
# The table goes to stdout and OUT/table.md, the figures to OUT/report.json, every command's output to
# stderr and OUT/logs/. Exit 1 when any check failed. This file runs the commands; scripts/gpu_check.py
# reads what they wrote and makes the table. $PYTHON: the interpreter (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 OUT="" STEPS=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry) DRY=1 ;;
    --out) OUT=${2:?--out needs a folder}; shift ;;
    --steps) STEPS=${2:?--steps needs a number}; shift ;;
    -h|--help) sed -n '2,16p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$OUT/logs" && OUT=$(cd "$OUT" && pwd) || exit 2
: > "$OUT/steps.tsv"
ARIMG=("$PY" -m arimg)
TORCHRUN=("$PY" -m torch.distributed.run --standalone)  # = torchrun --standalone

if [ "$DRY" = 1 ]; then
  DEVICE=cpu PRECISION=fp32 NPROC=2 BATCH=8 STEPS=${STEPS:-8}
  SYNTH=(--n 64 --size 32 --shard-size 32)
  TOK=(tokenizer=tiny data=tiny trainer=tiny trainer.device=cpu trainer.precision=fp32)
  PRETOK=(--size 32 --device cpu)
  LM=(model=tiny trainer=tiny trainer.device=cpu trainer.precision=fp32 trainer.compile=false trainer.log_every=2)
  SAMPLING=(--grid 8 --models tiny --batches 1,16 --rounds 1 --nocache-steps 8 --device cpu --precision fp32)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 2 processes on a 2-core CI machine
else
  NPROC=$("$PY" -c 'import torch; print(torch.cuda.device_count())') || exit 2
  if [ "$NPROC" -lt 1 ]; then
    echo "gpu_check.sh: no CUDA device here; --dry runs the CPU version" >&2
    exit 2
  fi
  DEVICE=cuda PRECISION=bf16 BATCH=128 STEPS=${STEPS:-300}
  SYNTH=(--n 4096 --size 64)
  TOK=(trainer.max_steps=200 data.batch_size=64 trainer.device=cuda trainer.precision=bf16)
  PRETOK=(--size 64 --device cuda)
  # lr 3e-4: the pretrain preset's 3e-3 is the 2M-parameter CPU demo's, and a diverging run would stop the check
  LM=(model=b trainer=pretrain trainer.lr=3e-4 trainer.device=cuda trainer.precision=bf16 trainer.compile=true
      trainer.log_every=50)
  SAMPLING=(--models b --batches 1,16 --rounds 3 --device cuda --precision bf16)
fi
# every run: no sample grids, checkpoints or plots before the end (they would sit inside the timed steps)
TOK+=(data.shards="$OUT/synth" trainer.image_every=100000 trainer.ckpt_every=100000 overwrite=true)
LM+=(data.shards="$OUT/tokens" trainer.max_steps="$STEPS" trainer.image_every=100000 trainer.ckpt_every=100000
     sample.n=0 overwrite=true)

step() {  # step NAME NOTE COMMAND...: run it; stdout to OUT/logs/NAME.out, stderr to ours and OUT/logs/NAME.log
  local name=$1 note=$2 start rc
  shift 2
  echo "== gpu_check: $name: $*" >&2
  start=$(date +%s.%N)
  "$@" 2>&1 >"$OUT/logs/$name.out" | tee "$OUT/logs/$name.log" >&2
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$start" "$(date +%s.%N)" "$note" >> "$OUT/steps.tsv"
}
skip() {  # skip NAME REASON
  echo "== gpu_check: $1: skipped: $2" >&2
  printf '%s\tskip\t0\t0\t%s\n' "$1" "$2" >> "$OUT/steps.tsv"
}

step synth "${SYNTH[*]}" "${ARIMG[@]}" data synth "${SYNTH[@]}" --out "$OUT/synth" --overwrite
step tokenizer "" "${ARIMG[@]}" train-tokenizer "${TOK[@]}" run_dir="$OUT/tok"
step pretokenize "${PRETOK[*]}" "${ARIMG[@]}" pretokenize "$OUT/synth" --tokenizer "$OUT/tok" --out "$OUT/tokens" \
  "${PRETOK[@]}" --overwrite
step pretrain "" "${ARIMG[@]}" pretrain "${LM[@]}" data.batch_size=$BATCH run_dir="$OUT/pretrain"
if [ "$NPROC" -ge 2 ]; then
  # the same per-process batch as the one-process run: data.batch_size is the global batch
  for how in ddp fsdp; do
    step $how "" "${TORCHRUN[@]}" --nproc-per-node="$NPROC" -m arimg pretrain "${LM[@]}" trainer.parallel=$how \
      data.batch_size=$((BATCH * NPROC)) run_dir="$OUT/$how"
  done
  step tokenizer-torchrun "" "${TORCHRUN[@]}" --nproc-per-node="$NPROC" -m arimg train-tokenizer "${TOK[@]}" \
    run_dir="$OUT/tok-torchrun"
else
  for name in ddp fsdp tokenizer-torchrun; do skip $name "one GPU here: torchrun needs 2 or more"; done
fi
step sampling "" "$PY" scripts/bench_sampling.py "${SAMPLING[@]}"

"$PY" scripts/gpu_check.py table "$OUT" --device $DEVICE --nproc "$NPROC" --precision $PRECISION \
  --mode "$([ "$DRY" = 1 ] && echo dry || echo gpu)"
