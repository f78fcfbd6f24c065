#!/usr/bin/env bash
# The training-recipe comparison of docs/predictor.md: each row one
# `attnpred train` run on traces/predictor-train.h5 with the same compute
# (~40,000 training windows), validated on the val split (sparse rows at
# budgets 256/512, the rows the replay feeds), then scored once, after all
# selection, on the test split (held out by source) with `train --eval-only`.
# Rows that finished are kept (delete runs/recipe/NAME to redo one).
#
#   bash scripts/recipe_study.sh [--threads N] [--only NAME,...]
#
# Needs the traces of scripts/capture_predictor_data.sh and traces/quick.h5
# (only to prove it shares no source). Writes runs/recipe/NAME/{log.json,
# result.json, test.json} and, through scripts/recipe_table.py,
# runs/recipe/table.md and runs/recipe/curves.png.
# Cost on 2 cores: ~4-6 minutes per row, ~1 hour in all.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="$(nproc)"
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "recipe_study.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ -x build/attnpred ] || bash scripts/build.sh
for t in traces/predictor-train.h5 traces/predictor-val.h5 traces/predictor-test.h5 traces/quick.h5; do
  [ -f "$t" ] || { echo "recipe_study.sh: $t is missing (scripts/capture_predictor_data.sh, scripts/main.sh)" >&2; exit 2; }
done
data=(--traces traces/predictor-train.h5 --val-traces traces/predictor-val.h5
      --holdout traces/predictor-test.h5,traces/quick.h5 --max-val 10000
      --budgets 256,512,1024 --threads "$threads")
# name | options (each row changes one thing against its neighbour)
rows=(
  "paper|--recipe paper --epochs 5 --max-train 8000 --val-rows sparse:256,512"
  "cnn-rank|--recipe cnn --max-train 20000"
  "fused|--recipe fused --max-train 20000"
  "cnn-mse|--recipe cnn --loss mse --max-train 20000"
  "cnn-ce|--recipe cnn --loss ce --max-train 20000"
  "cnn-rank-dense|--recipe cnn --rows dense --val-rows sparse:256,512 --max-train 20000"
  "fused-per-layer|--recipe fused --per-layer --max-train 20000"
  "paper-scaled|--recipe paper --input-scale 256 --target-scale 64 --epochs 5 --max-train 8000 --val-rows sparse:256,512"
  "fused-groups5|--recipe fused --groups 5 --max-train 20000"
  "fused-lr2e-3|--recipe fused --lr 2e-3 --max-train 20000"
)
mkdir -p runs/recipe
for row in "${rows[@]}"; do
  name="${row%%|*}"
  opts="${row#*|}"
  [ -z "$only" ] || [[ "$only" == *",$name,"* ]] || continue
  run="runs/recipe/$name"
  echo "== $name: attnpred train $opts" >&2
  if [ ! -f "$run/result.json" ]; then
    resume=(--force)
    [ -f "$run/last.safetensors" ] && resume=(--resume)
    # shellcheck disable=SC2086 # opts is a list of options
    ./build/attnpred train "${data[@]}" $opts --out "$run" --json "$run/result.json" "${resume[@]}"
  fi
  if [ ! -f "$run/test.json" ]; then
    # The test split, scored once: the same windows for every row.
    ./build/attnpred train --traces traces/predictor-train.h5 --val-traces traces/predictor-test.h5 \
      --rows sparse:256,512 --max-val 20000 --budgets 256,512,1024 --threads "$threads" \
      --out "$run" --eval-only --quiet --json "$run/test.json"
  fi
  printf '%s\n' "$opts" > "$run/options.txt"
done
# The replay of the test split, the measure the claims use: every finished row
# and the shipped predictor, four predictors per run (runs/recipe/replay-N.*).
preds=()
for row in "${rows[@]}"; do
  name="${row%%|*}"
  [ -f "runs/recipe/$name/result.json" ] || continue
  ./build/attnpred export --run "runs/recipe/$name" --out "runs/recipe/$name/predictor.safetensors" --force
  preds+=("$name=runs/recipe/$name/predictor.safetensors")
done
[ -f runs/shipped/predictor.safetensors ] && preds+=("shipped=runs/shipped/predictor.safetensors")
g=0
for ((i = 0; i < ${#preds[@]}; i += 4)); do
  g=$((g + 1))
  list=$(IFS=,; echo "${preds[*]:i:4}")
  out="runs/recipe/replay-$g"
  if [ -f "$out.json" ] && [ "$(cat "$out.list" 2>/dev/null)" = "$list" ]; then continue; fi
  ./build/attnpred eval replay --traces traces/predictor-test.h5 --predictor "$list" \
    --methods "last_step,$(echo "$list" | sed -E 's/=[^,]*//g')" --budget 256,512 --max-steps 24 \
    --threads "$threads" --json "$out.json" --md "$out.md"
  printf '%s\n' "$list" > "$out.list"
done
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
$py scripts/recipe_table.py runs/recipe runs/shipped
