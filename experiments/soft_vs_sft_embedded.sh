#!/usr/bin/env bash
# SoFT vs SFT on the embedded default: same data, model, seed and budget; only the objective differs.
# Usage (from the repo root, after `make install`): bash experiments/soft_vs_sft_embedded.sh
# Runs go to outputs/soft_vs_sft_embedded/; the two per-exit tables to experiments/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=outputs/soft_vs_sft_embedded
for objective in soft sft; do
  .venv/bin/python -m sortednet.train objective="$objective" logger=csv hydra.run.dir="$runs/$objective"
done
mkdir -p experiments/results
{
  echo "# $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD): bash experiments/soft_vs_sft_embedded.sh"
  cat "$runs/soft/exit_report.txt"
  echo
  cat "$runs/sft/exit_report.txt"
} | tee experiments/results/soft_vs_sft_embedded.txt
