#!/usr/bin/env bash
# CUDA training throughput of the real CLI: SFT vs SoFT, single device vs FSDP2 (one rank), bf16-mixed, on a
# random-weight LLaMA of ~1.3B parameters (24 layers, width 2048, vocab 32000), 1024-token rows.
# Usage (one GPU): bash experiments/gpu_throughput.sh [OUTDIR]  -> a markdown table on stdout and OUTDIR/table.md
# (RUNS="soft single,soft qlora" runs a subset; rows are "objective strategy", strategy single|fsdp|qlora|compiled)
# Each row: the mean of the logged sliding-window figures (window 20 steps) over steps 20..39.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_throughput}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
[ -d "$out/llama-1.3b" ] || $py experiments/make_llama.py model "$out/llama-1.3b" \
  --hidden 2048 --layers 24 --heads 16 --intermediate 5504 --vocab 32000
[ -f "$out/long.jsonl" ] || $py experiments/make_llama.py data "$out/long.jsonl" --rows 720 --words 330
common=(
  model.name_or_path="$out/llama-1.3b" model.tokenizer=embedded data.path="$out/long.jsonl" data.max_length=1024
  data.batch_size=8 data.val_size=16 exits=every_4 trainer=gpu trainer.devices=1 trainer.max_steps=40
  trainer.max_epochs=1 trainer.accumulate_grad_batches=1 trainer.val_check_interval=1.0 logger=csv
  eval.num_generate=0 throughput.window=20
)
# RUNS="soft qlora" picks rows; qlora = NF4 base weights + rank-16 adapters on every projection.
IFS=, read -r -a runs <<<"${RUNS:-sft single,soft single,soft fsdp,soft qlora,sft compiled,soft compiled}"
for run in "${runs[@]}"; do
  read -r objective strategy <<<"$run"
  extra=()
  [ "$strategy" = fsdp ] && extra=(strategy=fsdp strategy.allow_single_device=true)
  [ "$strategy" = qlora ] && extra=(model.quantization=nf4 model.lora.rank=16 model.lora.alpha=32 model.dtype=bfloat16)
  # compiled: every decoder layer through torch.compile, fused AdamW, FSDP2's bf16 policy in place of autocast
  [ "$strategy" = compiled ] && extra=(trainer.compile=true optimizer.fused=true strategy=fsdp
    strategy.allow_single_device=true)
  $py -m sortednet.train "${common[@]}" objective="$objective" "${extra[@]}" hydra.run.dir="$out/$objective-$strategy"
  rm -rf "$out/$objective-$strategy/checkpoints"  # 16 GB each with the optimizer state; only the figures matter
done
$py - "$out" "${runs[@]}" <<'PY' | tee "$out/table.md"
import csv, glob, statistics, sys
import torch
out, runs = sys.argv[1], sys.argv[2:]
keys = ["train/tokens_per_s", "train/tflops_per_s", "train/mfu", "train/max_memory_gib"]
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16-mixed, batch 8 x 1024 tokens, exits every_4 of 24")
print("| objective | strategy | tokens/s | TFLOP/s | MFU | peak memory GiB |")
print("|---|---|---|---|---|---|")
for run in runs:
    objective, strategy = run.split()
    (path,) = glob.glob(f"{out}/{objective}-{strategy}/csv/**/metrics.csv", recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("train/mfu") and int(r["step"]) >= 20]
    mean = {k: statistics.mean(float(r[k]) for r in rows) for k in keys}
    print(f"| {objective} | {strategy} | {mean[keys[0]]:,.0f} | {mean[keys[1]]:.0f} | {mean[keys[2]]:.3f} | {mean[keys[3]]:.1f} |")
PY
