#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's test command):
#   1. install the Debian dependencies and fetch the default model and Gemma 3
#      270M (so the real-model comparisons against committed reference
#      fixtures run);
#   2. Release build (CUDA parts compiled when a toolkit is present) + ctest;
#   3. AddressSanitizer/UBSan build + ctest (real-model tests skipped there:
#      they ran in step 2 and take minutes under ASan), with the CUDA host
#      code's tests on a CPU mock of the device layer (*_mockcuda);
#   4. libFuzzer targets, each for a bounded time from its seed corpus.
# Set ATTNPRED_TEST_QUICK=1 to stop after step 2.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="$(nproc 2>/dev/null || echo 2)"
fuzz_seconds="${ATTNPRED_FUZZ_SECONDS:-60}"

bash scripts/install-deps.sh
bash scripts/fetch-model.sh
# The second real model (Gemma 3 270M): its transformers parity, tokenizer and
# dequantization checks run against committed fixtures.
bash scripts/fetch-model.sh gemma3-270m

echo "== release build + tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
mkdir -p build
ctest --test-dir build --output-on-failure -j 1 2>&1 | tee build/ctest.log
ctest_rc=${PIPESTATUS[0]}
[ "$ctest_rc" = 0 ] || { echo "release tests failed"; exit 1; }

# One closing line over every stage: ctest executables + fuzz targets.
summary() {
  local passed=0 failed=0 f line total bad
  for f in "$@"; do
    line="$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$f" | tail -n 1)" || continue
    total="$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")"
    bad="$(sed -E 's/.*passed, ([0-9]+) tests failed.*/\1/' <<<"$line")"
    passed=$((passed + total - bad))
    failed=$((failed + bad))
  done
  echo "$passed $failed"
}

if [ "${ATTNPRED_TEST_QUICK:-0}" = 1 ]; then
  read -r p f < <(summary build/ctest.log)
  echo "tests: $p passed, $f failed"
  exit 0
fi

echo "== sanitizer build (ASan + UBSan) + tests"
# ATTNPRED_MOCK_CUDA: the CUDA engine's host code (GPU capture, device KV
# pool, prefetch bookkeeping) also runs here, on a CPU mock of the device
# layer (cmake/mock_cuda.cmake): tests named *_mockcuda.
CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DATTNPRED_SANITIZE=ON \
  -DATTNPRED_CUDA=OFF -DATTNPRED_MOCK_CUDA=ON >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  AP_SKIP_REAL_MODEL=1 ctest --test-dir build-asan --output-on-failure -j 1 2>&1 \
  | tee build-asan/ctest.log
[ "${PIPESTATUS[0]}" = 0 ] || { echo "sanitizer tests failed"; exit 1; }

echo "== fuzzers (${fuzz_seconds}s each)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DATTNPRED_FUZZ=ON -DATTNPRED_CUDA=OFF \
  -DCMAKE_C_FLAGS='-fsanitize=fuzzer-no-link,address,undefined -g' >/dev/null
cmake --build build-fuzz -j "$jobs"
fail=0
pass=0
for f in build-fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name="$(basename "$f")"
  corpus="tests/fuzz/corpus/${name#fuzz_}"
  work="$(mktemp -d)"
  [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
  echo "-- $name"
  if ! "$f" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="build-fuzz/${name}-" "$work" 2>"build-fuzz/${name}.log"; then
    echo "$name: crash; see build-fuzz/${name}.log and the artifact beside it"
    tail -n 30 "build-fuzz/${name}.log"
    fail=$((fail + 1))
  else
    grep -E '^(#[0-9]+|Done)' "build-fuzz/${name}.log" | tail -n 1
    pass=$((pass + 1))
  fi
  rm -rf "$work"
done
echo "fuzz: $pass passed, $fail failed"
read -r p f < <(summary build/ctest.log build-asan/ctest.log)
echo "tests: $((p + pass)) passed, $((f + fail)) failed"
[ $fail = 0 ]
