#!/usr/bin/env bash
# Configure and build attnpred into build/ (or $ATTNPRED_BUILD_DIR).
# Extra arguments go to cmake's configure step (e.g. -DATTNPRED_CUDA=OFF).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ATTNPRED_BUILD_DIR:-$root/build}"
jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$jobs"
