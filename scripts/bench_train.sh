#!/usr/bin/env bash
# Predictor training speed: attnpred (bench-train: CPU 1 and 2 threads, and
# the cuDNN path where a GPU is usable) against the same model, batch and step
# in PyTorch on the CPU with the same number of threads, as one ratio.
#
#   scripts/bench_train.sh [BUILD_DIR] [--H 64] [--W 256] [--batch 64]
#                          [--steps 20] [--threads 2] [--json OUT.json]
#
# BUILD_DIR defaults to build. PyTorch comes from .venv (skipped with a
# message when missing). Both runs go one after the other on an otherwise
# idle machine; nothing else should be running for the ratio to mean much.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build"
if [[ $# -gt 0 && "$1" != --* ]]; then build="$1"; shift; fi
H=64 W=256 N=64 steps=20 threads=2 json=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --H) H="$2"; shift 2 ;;
    --W) W="$2"; shift 2 ;;
    --batch) N="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench_train.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
bench="$build/bench-train"
[[ -x "$bench" ]] || { echo "bench_train.sh: $bench not built (cmake --build $build --target bench-train)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== attnpred (bench-train)"
thr_list="1"
[[ "$threads" != 1 ]] && thr_list="1,$threads"
"$bench" --H "$H" --W "$W" --batch "$N" --steps "$steps" --threads "$thr_list" \
  --json "$tmp/ap.json"

echo "== PyTorch (CPU, $threads threads)"
py="$root/.venv/bin/python"
[[ -x "$py" ]] || py="$(command -v python3)"
torch_rc=0
"$py" "$root/scripts/bench_train_torch.py" --H "$H" --W "$W" --batch "$N" --steps "$steps" \
  --threads "$threads" --json "$tmp/torch.json" || torch_rc=$?
if [[ $torch_rc -eq 77 ]]; then echo "PyTorch: skipped (not installed)"; fi
if [[ $torch_rc -ne 0 && $torch_rc -ne 77 ]]; then exit "$torch_rc"; fi

python3 - "$tmp/ap.json" "$tmp/torch.json" "$threads" "$json" <<'EOF'
import json, os, sys
ap = json.load(open(sys.argv[1]))
torch = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else None
threads = int(sys.argv[3])
out = {"attnpred": ap, "pytorch_cpu": torch, "ratios": {}}
cpu = {r["threads"]: r for r in ap["runs"] if r["device"] == "cpu"}
gpu = [r for r in ap["runs"] if r["device"] == "cuda"]
if torch and threads in cpu:
    r = cpu[threads]["samples_per_s"] / torch["samples_per_s"]
    out["ratios"]["attnpred_cpu_over_pytorch_cpu"] = r
    print(f"ratio attnpred CPU / PyTorch CPU ({threads} threads): {r:.2f}")
if gpu and "skipped" not in gpu[0]:
    for t, row in cpu.items():
        out["ratios"][f"cuda_over_cpu_{t}_threads"] = gpu[0]["samples_per_s"] / row["samples_per_s"]
    if torch:
        out["ratios"]["cuda_over_pytorch_cpu"] = gpu[0]["samples_per_s"] / torch["samples_per_s"]
    print(f"cuda: {gpu[0]['samples_per_s']:.1f} samples/s")
elif gpu:
    print(f"cuda: skipped ({gpu[0]['skipped']})")
if sys.argv[4]:
    tmp = f"{sys.argv[4]}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    os.replace(tmp, sys.argv[4])
EOF
