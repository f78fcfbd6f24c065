#!/usr/bin/env bash
# The predictor's quality against its cost (issue 14, item 2): the shipped
# predictor with each cost option of `attnpred eval replay` (--pred-stride,
# --pred-per-kv) and narrower CNNs trained as the `fused` row of the recipe
# study (scripts/recipe_study.sh) with --channels, all replayed on the test
# split (held out by source) next to last_step, with the multiply-adds and
# CPU time per (step, query head) the replay measures.
#
#   bash scripts/pred_cost_study.sh [--threads N] [--no-train]
#
# Needs traces/predictor-{train,val,test}.h5 (scripts/capture_predictor_data.sh).
# Writes runs/predcost/NAME.{json,md} per variant, runs/predcost/w*/ for the
# narrow CNNs, and runs/predcost/table.md (scripts/pred_cost_table.py).
# Resumable: a variant whose JSON exists is not replayed again. ~3 min per
# replay variant and ~5 min per narrow CNN on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="$(nproc)"
train=1
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --no-train) train=0; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pred_cost_study.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
for t in traces/predictor-train.h5 traces/predictor-val.h5 traces/predictor-test.h5; do
  [ -f "$t" ] || { echo "pred_cost_study.sh: $t missing (bash scripts/capture_predictor_data.sh)" >&2; exit 1; }
done
shipped=data/predictors/smollm2-135m-instruct.safetensors
out=runs/predcost
mkdir -p "$out"

# Narrower CNNs: the recipe study's `fused` row with fewer channels.
widths=(8,16 4,8)
if [ "$train" = 1 ]; then
  for w in "${widths[@]}"; do
    run="$out/w${w/,/-}"
    [ -f "$run/predictor.safetensors" ] && continue
    resume=()
    [ -f "$run/last.safetensors" ] && resume=(--resume)
    ./build/attnpred train --traces traces/predictor-train.h5 --val-traces traces/predictor-val.h5 \
      --holdout traces/predictor-test.h5 --max-val 10000 --threads "$threads" --quiet \
      --recipe fused --channels "$w" --max-train 20000 --out "$run" "${resume[@]}"
    ./build/attnpred export --run "$run" --out "$run/predictor.safetensors" --force
  done
fi

# name|predictor|options
variants=(
  "s1|$shipped|"
  "s2|$shipped|--pred-stride 2"
  "s4|$shipped|--pred-stride 4"
  "s8|$shipped|--pred-stride 8"
  "s16|$shipped|--pred-stride 16"
  "kv|$shipped|--pred-per-kv"
  "kv-s2|$shipped|--pred-per-kv --pred-stride 2"
  "kv-s4|$shipped|--pred-per-kv --pred-stride 4"
  "kv-s8|$shipped|--pred-per-kv --pred-stride 8"
)
for w in "${widths[@]}"; do
  p="$out/w${w/,/-}/predictor.safetensors"
  [ -f "$p" ] || continue
  variants+=("w${w/,/-}|$p|" "w${w/,/-}-kv|$p|--pred-per-kv"
             "w${w/,/-}-kv-s4|$p|--pred-per-kv --pred-stride 4")
done
for v in "${variants[@]}"; do
  IFS='|' read -r name pred opts <<< "$v"
  [ -f "$out/$name.json" ] && continue
  # shellcheck disable=SC2086
  ./build/attnpred eval replay --traces traces/predictor-test.h5 --predictor "attnpred=$pred" \
    --methods last_step,attnpred --budget 256,512 --max-steps 24 --threads "$threads" --quiet \
    $opts --json "$out/$name.json.tmp" --md "$out/$name.md"
  mv "$out/$name.json.tmp" "$out/$name.json"
done
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
$py scripts/pred_cost_table.py "$out"
