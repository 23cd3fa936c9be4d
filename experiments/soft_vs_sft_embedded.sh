#!/usr/bin/env bash
# SoFT vs SFT on the embedded default: same data, model, seed and budget; only the objective differs.
# Usage (from the repo root, after `make install`): bash experiments/soft_vs_sft_embedded.sh
# Runs go to outputs/soft_vs_sft_embedded/; the two per-exit tables to experiments/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=outputs/soft_vs_sft_embedded
declare -A seconds
for objective in soft sft; do
  start=$SECONDS
  .venv/bin/python -m sortednet.train objective="$objective" logger=csv hydra.run.dir="$runs/$objective"
  seconds[$objective]=$((SECONDS - start))
done
mkdir -p experiments/results
{
  echo "# $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD): bash experiments/soft_vs_sft_embedded.sh"
  for objective in soft sft; do
    cat "$runs/$objective/exit_report.txt"
    echo "(wall time of the whole command: ${seconds[$objective]} s on $(nproc) cores)"
    echo
  done
} | tee experiments/results/soft_vs_sft_embedded.txt
