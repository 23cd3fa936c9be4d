#!/usr/bin/env bash
# The evaluate suites on the embedded default: SoFT vs SFT vs SFT+ICT, judged by a small local PandaLM-style judge.
# Usage (from the repo root, after `make install`): bash experiments/evaluate_embedded.sh
# Steps whose output exists are skipped (delete the directory to redo one):
#   1. SoFT and SFT checkpoints (experiments/soft_vs_sft_embedded.sh) and SFT+ICT from the SFT checkpoint;
#   2. the judge: PandaLM-format judge rows from embedded task rows the evaluation never asks
#      (experiments/make_judge_data.py), the SFT model trained on them with objective=sft (20 epochs),
#      exported as a plain HF directory, and its accuracy on held-out judge rows;
#   3. the suites loss, generate, pandalm, analysis, pareto into outputs/evaluate_embedded/eval.
# Tables go to outputs/evaluate_embedded/eval/*.txt and experiments/results/evaluate_embedded.md; PNGs are copied
# to experiments/results/evaluate_embedded_*.png. The real judge is used the same way: judge=/path/to/PandaLM-7B-v1.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
root=outputs/evaluate_embedded
sft=outputs/soft_vs_sft_embedded/sft/checkpoints/last.ckpt
soft=outputs/soft_vs_sft_embedded/soft/checkpoints/last.ckpt
ict=$root/ict/checkpoints/last.ckpt
judge=$root/judge
eval=$root/eval
mkdir -p "$root/times"

timed() {  # timed NAME COMMAND...: run it, record its wall time in $root/times/NAME
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo $((SECONDS - start)) >"$root/times/$name"
}

[[ -f $soft && -f $sft ]] || timed soft_sft bash experiments/soft_vs_sft_embedded.sh
[[ -f $ict ]] || timed ict $py -m sortednet.train objective=ict objective.init_from="$sft" trainer.max_epochs=1 \
  logger=csv hydra.run.dir="$root/ict"

if [[ ! -f $judge/model/config.json ]]; then
  # The judge starts from the SFT model (it knows the tasks; from a random init it never left the class prior in
  # 3 epochs) and trains 20 epochs. JUDGE_TRAINER="trainer=gpu trainer.devices=1 trainer.accumulate_grad_batches=1"
  # runs it on a GPU (165 s on an H100); on 2 CPU cores expect about 35 minutes.
  rm -rf "$judge"
  timed judge_data $py experiments/make_judge_data.py data "$judge/data"
  $py -m sortednet.export ckpt="$sft" exit=8 out="$judge/init"
  # shellcheck disable=SC2086
  timed judge_train $py -m sortednet.train objective=sft model.name_or_path="$judge/init" \
    data.path="$judge/data/train.jsonl" data.prompt_style=plain data.max_length=256 data.batch_size=64 \
    trainer.max_epochs=20 trainer.val_check_interval=1.0 optimizer.lr=2e-3 logger=csv eval.num_generate=0 \
    ${JUDGE_TRAINER:-} hydra.run.dir="$judge/train"
  echo "${JUDGE_TRAINER:-trainer=cpu}" >"$root/judge_trainer.txt"
  $py -m sortednet.export ckpt="$judge/train/checkpoints/last.ckpt" exit=8 out="$judge/model"
fi
[[ -f $judge/accuracy.txt ]] ||
  $py experiments/make_judge_data.py accuracy "$judge/model" "$judge/data/heldout.jsonl" | tee "$judge/accuracy.txt"

mkdir -p "$eval"
evaluate() {  # evaluate NAME SUITE key=value...: one suite, its table kept in $eval/NAME.txt
  local name=$1 suite=$2
  shift 2
  [[ -f $eval/$name.txt ]] && return
  timed "suite_$name" $py -m sortednet.evaluate suite="$suite" out="$eval" "$@" | tee "$eval/$name.txt"
}
# One instruction set (the first 100 embedded validation rows) for every suite, so the answer files are shared.
evaluate loss loss ckpt="[$soft,$sft,$ict]" names=[soft,sft,ict]
evaluate generate generate ckpt="[$soft,$sft,$ict]" names=[soft,sft,ict] instructions=embedded limit=100 \
  batch_size=25
evaluate pandalm pandalm ckpt="[$soft,$sft]" names=[soft,sft] instructions=embedded limit=100 judge="$judge/model" \
  pairs=all batch_size=100 judge_max_new_tokens=4
evaluate analysis analysis ckpt="[$soft,$sft]" names=[soft,sft] instructions=embedded limit=100
evaluate analysis_sft analysis ckpt="[$sft,$soft]" names=[sft,soft] instructions=embedded limit=100
evaluate pareto pareto ckpt="[$soft,$sft,$ict]" names=[soft,sft,ict] metric=exact_match instructions=embedded \
  limit=100 batch_size=25
$py experiments/make_judge_data.py agreement "$eval" | tee "$eval/agreement.txt"

for png in "$eval"/*.png; do  # analysis-2.png is the second analysis run: SFT's exits
  name=$(basename "$png")
  cp "$png" "experiments/results/evaluate_embedded_${name/analysis-2/analysis_sft}"
done
{
  echo "# $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD): bash experiments/evaluate_embedded.sh"
  echo
  echo "Wall times (s, on $(nproc) cores; steps skipped in the last run keep the time of the run that made them):"
  for file in "$root"/times/*; do echo "- $(basename "$file"): $(cat "$file")"; done
  [[ -f $root/judge_trainer.txt ]] && echo "(the judge was trained with: $(cat "$root/judge_trainer.txt"))"
  for part in "$judge/accuracy.txt" "$eval"/{loss,generate,pandalm,agreement,analysis,analysis_sft,pareto}.txt; do
    echo
    echo "## $(basename "$part" .txt)"
    echo
    echo '```'
    grep -v '^results in ' "$part"
    echo '```'
  done
} >experiments/results/evaluate_embedded.md
echo "wrote experiments/results/evaluate_embedded.md and experiments/results/evaluate_embedded_*.png"
