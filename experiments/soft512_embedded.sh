#!/usr/bin/env bash
# The embedded SoFT recipe scaled to width 512 (8 layers, 24M parameters, random init): a model large enough
# that compute, not Python overhead, dominates decoding on a CPU — the model of `bench generate` (issue #4).
# Usage: bash experiments/soft512_embedded.sh [OUTDIR] [train overrides...]
#   on a GPU: bash experiments/soft512_embedded.sh outputs/soft512_embedded trainer=gpu trainer.devices=1 \
#             trainer.max_epochs=6 trainer.accumulate_grad_batches=1 trainer.val_check_interval=0.5
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/soft512_embedded}
shift || true
py=${PYTHON:-.venv/bin/python}
[ -d "$out/init" ] || $py experiments/make_llama.py model "$out/init" --hidden 512 --layers 8 --heads 8 \
  --kv-heads 4 --intermediate 1408 --vocab embedded --context 256 --dtype float32
$py -m sortednet.train model.name_or_path="$out/init" model.tokenizer=embedded optimizer.lr=1e-3 logger=csv \
  hydra.run.dir="$out/soft" "$@"
