#!/usr/bin/env bash
# Capture the predictor's training, validation and test traces (issue 12) from
# data/prompts/predictor-{train,val,test}.jsonl (built by
# scripts/build_train_prompts.py, split by source): 192 greedy tokens per
# prompt, decoding on past end-of-sequence so every prompt gives the same
# number of decode steps. Resumable: re-running continues an interrupted
# capture (--resume) and skips finished traces.
#
#   bash scripts/capture_predictor_data.sh [--splits train,val,test] [--threads N]
#
# Outputs: traces/predictor-<split>.h5 (+ .capture.json with the run statistics).
# Cost on 2 cores: ~1 hour for all 150 prompts (~28,800 decode steps).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
splits="train,val,test"
threads="$(nproc)"
while [ $# -gt 0 ]; do
  case "$1" in
    --splits) splits="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "capture_predictor_data.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ -x build/attnpred ] || bash scripts/build.sh
model="$(bash scripts/fetch-model.sh)"
mkdir -p traces
for s in ${splits//,/ }; do
  prompts="data/prompts/predictor-$s.jsonl"
  [ -f "$prompts" ] || { echo "capture_predictor_data.sh: no prompt set $prompts (split '$s')" >&2; exit 2; }
  out="traces/predictor-$s.h5"
  if [ -f "$out" ]; then echo "capture: $out exists (delete it to capture again)"; continue; fi
  resume=()
  [ -f "$out.partial" ] && resume=(--resume)
  ./build/attnpred capture --model "$model" --prompts "$prompts" --out "$out" --gen 192 \
    --no-stop-eos --threads "$threads" --json "traces/predictor-$s.capture.json" "${resume[@]}"
done
