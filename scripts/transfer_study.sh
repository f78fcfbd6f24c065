#!/usr/bin/env bash
# Transfer of predictors across models (issue 13 item 7): each model's trace
# replayed with its own predictor, the other model's, and last_step, with the
# paired-by-sequence difference from last_step (95% intervals).
#
#   bash scripts/transfer_study.sh [--out DIR] [--budgets LIST] [--max-steps N]
#
# Needs the two main jobs' outputs (bash scripts/main.sh; bash scripts/main.sh
# --model gemma3-270m): traces/quick.h5, traces/gemma3-270m-quick.h5 and the
# predictors they trained, runs/quick/predictor.safetensors (SmolLM2) and
# runs/gemma3-270m-quick/predictor.safetensors (Gemma 3); the committed
# SmolLM2 predictor (data/predictors/smollm2-135m-instruct.safetensors,
# trained on far more data) is scored too. Writes DIR/smollm2.json,
# DIR/gemma3.json (eval replay reports) and DIR/table.md
# (scripts/transfer_table.py). Default DIR: runs/transfer.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

out=runs/transfer
budgets=256,512,1024,2048
max_steps=24
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift ;;
    --budgets) budgets="${2:?--budgets needs a list}"; shift ;;
    --max-steps) max_steps="${2:?--max-steps needs a number}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "transfer_study.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

smol_trace=traces/quick.h5
gem_trace=traces/gemma3-270m-quick.h5
smol_pred=runs/quick/predictor.safetensors
gem_pred=runs/gemma3-270m-quick/predictor.safetensors
shipped=data/predictors/smollm2-135m-instruct.safetensors
for f in "$smol_trace" "$gem_trace" "$smol_pred" "$gem_pred" "$shipped"; do
  [ -f "$f" ] || { echo "transfer_study.sh: $f is missing (run bash scripts/main.sh and bash scripts/main.sh --model gemma3-270m first)" >&2; exit 1; }
done
[ -x build/attnpred ] || { echo "transfer_study.sh: build/attnpred is missing (bash scripts/build.sh)" >&2; exit 1; }
mkdir -p "$out"
preds="smollm2=$smol_pred,gemma3=$gem_pred,smollm2_shipped=$shipped"
methods="oracle,last_step,quest,smollm2,gemma3,smollm2_shipped"
for pair in "smollm2:$smol_trace" "gemma3:$gem_trace"; do
  name="${pair%%:*}"
  trace="${pair#*:}"
  echo "transfer_study: replay $trace" >&2
  ./build/attnpred eval replay --traces "$trace" --predictor "$preds" --methods "$methods" \
    --budget "$budgets" --max-steps "$max_steps" --threads "$(nproc)" \
    --json "$out/$name.json" --md "$out/$name.md" --quiet
done
python3 scripts/transfer_table.py "$out"
echo "transfer_study: wrote $out/table.md" >&2
