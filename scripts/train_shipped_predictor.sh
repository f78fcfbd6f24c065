#!/usr/bin/env bash
# Reproduce the shipped predictor for the default model
# (data/predictors/smollm2-135m-instruct.safetensors, docs/predictor.md):
#   1. prompts   data/prompts/predictor-{train,val,test}.jsonl, checked byte for
#                byte against their manifest (scripts/build_train_prompts.py)
#   2. capture   traces/predictor-{train,val,test}.h5 (scripts/capture_predictor_data.sh)
#   3. train     runs/shipped: the query-fusion predictor, rank loss, sparse
#                rows at budgets 256/512, from the last+0.5*mean init,
#                validated on the val split; the test split and traces/quick.h5
#                are only checked to share no source with it
#   4. export    --out (default: a copy under runs/shipped/, so the committed
#                file is only replaced on purpose with --out data/predictors/...)
#   5. evaluate  the test split: the trainer's windows (runs/shipped/test.json,
#                as scripts/recipe_study.sh scores its rows) and the replay against
#                last_step with the paired bootstrap interval of the difference
#                (runs/shipped/test-replay.*)
# Every step resumes: finished outputs are kept, an interrupted capture or
# training run continues where it stopped. Progress with ETAs on stderr.
#
#   bash scripts/train_shipped_predictor.sh [--out P.safetensors] [--threads N]
#                                            [--max-train N] [--epochs N] [--lr X]
#
# Cost on 2 cores: capture ~1 h, training ~1 h (--max-train 250000 x 2 epochs
# at ~150 windows/s), test replay ~5 min. A CUDA device (--device auto) trains faster.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="runs/shipped/predictor.safetensors"
threads="$(nproc)"
max_train=250000
epochs=2
lr=5e-4
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --max-train) max_train="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "train_shipped_predictor.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ -x build/attnpred ] || bash scripts/build.sh
run=runs/shipped
echo "== 1/5 prompts" >&2
python3 scripts/build_train_prompts.py --check
echo "== 2/5 capture" >&2
bash scripts/capture_predictor_data.sh --threads "$threads"
[ -f traces/quick.h5 ] || { echo "train_shipped_predictor.sh: traces/quick.h5 is missing: run 'bash scripts/main.sh' first (its capture step writes it)" >&2; exit 2; }
echo "== 3/5 train" >&2
args=(--traces traces/predictor-train.h5 --val-traces traces/predictor-val.h5
      --holdout traces/predictor-test.h5,traces/quick.h5 --out "$run"
      --loss rank --query-fusion --init last-mean:0.5 --rows sparse:256,512
      --budgets 256,512 --input-scale 256 --target-scale 64 --batch 256
      --lr "$lr" --epochs "$epochs" --max-train "$max_train" --max-val 20000
      --threads "$threads" --json "$run/train.json")
if [ -f "$run/train.json" ]; then
  echo "train: $run is finished (delete it to train again)" >&2
elif [ -f "$run/last.safetensors" ]; then
  ./build/attnpred train "${args[@]}" --resume
else
  ./build/attnpred train "${args[@]}" --force
fi
echo "== 4/5 export" >&2
./build/attnpred export --run "$run" --out "$out" --force
echo "== 5/5 evaluate (test split, held out by source)" >&2
# The trainer's windows of the test split, as the recipe study scores its rows
# (scripts/recipe_study.sh), then the replay with paired intervals.
./build/attnpred train --traces traces/predictor-train.h5 --val-traces traces/predictor-test.h5 \
  --rows sparse:256,512 --max-val 20000 --budgets 256,512,1024 --threads "$threads" \
  --out "$run" --eval-only --quiet --json "$run/test.json"
./build/attnpred eval replay --traces traces/predictor-test.h5 \
  --predictor "attnpred=$out" --methods last_step,quest,oracle,attnpred \
  --budget 256,512,1024 --max-steps 24 --threads "$threads" \
  --json "$run/test-replay.json" --md "$run/test-replay.md"
echo "done: $out; test-split report $run/test-replay.md" >&2
