#!/usr/bin/env bash
# Live decoding speed of the predictor variants against last_step and full KV
# (issue 14): for each variant, the quick task suite at budgets 256 and 512
# (`attnpred eval tasks`: tok/s, agreement and KL with intervals) and
# build/bench-live at 2K, 4K and the model's maximum context, budget 512
# (tok/s against full KV in the same process, agreement, predictor and step
# ms per token). Run it on an otherwise idle machine: these are speed numbers.
#
#   bash scripts/speed_study.sh [--threads N] [--only NAME,...]
#
# Variants (NAME: predictor and options): exact (the shipped predictor, the
# method as published), kv (the same, --pred-per-kv), c8-kv (the 8/16-channel
# CNN of scripts/pred_cost_study.sh, --pred-per-kv), c8-kv-s4 (and
# --pred-stride 4), c4-kv (the shipped 4/8-channel predictor, --pred-per-kv),
# c4-kv-s2 (and --pred-stride 2); exact-f16 and c4-kv-f16: exact and c4-kv with
# the f16 KV cache (--kv-type f16, for every method: full KV and last_step too);
# c4, c4-s2, c4-s4: the 4/8-channel predictor per query head (the published
# layout), every step / every 2nd / every 4th step;
# exact-pf and c4-kv-pf: exact and c4-kv with --prefetch (the predictor's work on
# a worker thread; the default runs it on the engine's threads where they fill the
# machine, e.g. 2 threads on 2 cores: docs/eval-tasks.md, "Cross-token prefetch").
# Writes runs/speed/{tasks,live}-NAME.{json,md,txt} and runs/speed/table.md
# (scripts/speed_table.py); a variant whose outputs exist is skipped. ~6 min
# per variant on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="$(nproc)"
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "speed_study.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
model="$(bash scripts/fetch-model.sh)"
shipped=data/predictors/smollm2-135m-instruct.safetensors
c8=runs/predcost/w8-16/predictor.safetensors
c4=data/predictors/smollm2-135m-instruct-c4.safetensors
[ -f build/bench-live ] || { echo "speed_study.sh: build/bench-live missing (bash scripts/build.sh)" >&2; exit 1; }
out=runs/speed
mkdir -p "$out"
variants=(
  "exact|$shipped|"
  "kv|$shipped|--pred-per-kv"
  "c8-kv|$c8|--pred-per-kv"
  "c8-kv-s4|$c8|--pred-per-kv --pred-stride 4"
  "c4-kv|$c4|--pred-per-kv"
  "c4-kv-s2|$c4|--pred-per-kv --pred-stride 2"
  "exact-f16|$shipped|--kv-type f16"
  "c4-kv-f16|$c4|--pred-per-kv --kv-type f16"
  "c4|$c4|"
  "c4-s2|$c4|--pred-stride 2"
  "c4-s4|$c4|--pred-stride 4"
  "exact-pf|$shipped|--prefetch"
  "c4-kv-pf|$c4|--pred-per-kv --prefetch"
)
for v in "${variants[@]}"; do
  IFS='|' read -r name pred opts <<< "$v"
  [ -z "$only" ] || [[ "$only" == *",$name,"* ]] || continue
  [ -f "$pred" ] || { echo "speed_study.sh: $name: $pred missing (scripts/pred_cost_study.sh trains it)" >&2; continue; }
  if [ ! -f "$out/tasks-$name.json" ]; then
    # shellcheck disable=SC2086
    ./build/attnpred eval tasks --model "$model" --quick --predictor "attnpred=$pred" \
      --methods last_step,attnpred --budget 256,512 --threads "$threads" --quiet $opts \
      --json "$out/tasks-$name.json" --md "$out/tasks-$name.md"
  fi
  if [ ! -f "$out/live-$name.json" ]; then
    # shellcheck disable=SC2086
    ./build/bench-live --model "$model" --predictor "$pred" --contexts 2048,4096,max \
      --budget 512 --methods last_step,attnpred --threads "$threads" $opts \
      --json "$out/live-$name.json" | tee "$out/live-$name.txt"
  fi
done
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
$py scripts/speed_table.py "$out"
