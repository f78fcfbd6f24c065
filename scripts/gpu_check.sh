#!/usr/bin/env bash
# The GPU check (issue 6; docs/gpu.md): build attnpred with CUDA, run every test
# (the GPU ones run instead of skipping), run the GPU benchmarks, and write a log
# and a summary table. Needs no network: the libraries come from the offline
# bundle made by scripts/make_gpu_bundle.sh on a connected machine, unpacked
# here with dpkg -x into .gpu-prefix/. The node brings gcc, CMake, the CUDA
# toolkit, and cuDNN (system or the nvidia-cudnn Python wheel).
#
#   bash scripts/gpu_check.sh [BUNDLE_DIR]        (default .gpu-bundle)
#
# Output: $OUT (or out/gpu-check) holds log.txt, ctest.txt, bench-*.txt and
# summary.md. ATTNPRED_USE_BUNDLE=1 uses the bundle even where the system has
# the libraries (to test the bundle). Exit status: 0 when every test passed and no GPU test skipped.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="${1:-$root/.gpu-bundle}"
out="${OUT:-$root/out/gpu-check}"
mkdir -p "$out"
log="$out/log.txt"
: > "$log"
say() { echo "gpu_check: $*" | tee -a "$log"; }
first() { for f in "$@"; do [ -e "$f" ] && { echo "$f"; return; }; done; }
jobs="$(nproc 2>/dev/null || echo 4)"

# ---- libraries: system ones if present, else the bundle ----
prefix="$root/.gpu-prefix"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DATTNPRED_CUDA=ON)
if [ -z "${ATTNPRED_USE_BUNDLE:-}" ] && [ -f /usr/include/hdf5/serial/hdf5.h ] && [ -f /usr/include/criterion/criterion.h ]; then
  say "using the system's libraries"
else
  if ! ls "$bundle"/*.deb >/dev/null 2>&1; then
    say "no libraries: neither system packages nor a bundle in $bundle (make one with scripts/make_gpu_bundle.sh)"
    exit 2
  fi
  rm -rf "$prefix" && mkdir -p "$prefix"
  for f in "$bundle"/*.deb; do dpkg -x "$f" "$prefix"; done
  multi="$prefix/usr/lib/x86_64-linux-gnu"
  # update-alternatives links are not in the packages: point at the pthread
  # OpenBLAS explicitly.
  blas="$multi/openblas-pthread/libopenblas.so"
  [ -e "$blas" ] || blas="$(ls "$multi"/openblas-pthread/libopenblas*.so* | head -1)"
  export PKG_CONFIG_SYSROOT_DIR="$prefix"
  export PKG_CONFIG_LIBDIR="$multi/pkgconfig:$prefix/usr/share/pkgconfig"
  export CPATH="$prefix/usr/include:$prefix/usr/include/x86_64-linux-gnu/openblas-pthread:$prefix/usr/include/hdf5/serial${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$multi:$multi/openblas-pthread:$multi/hdf5/serial${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$multi:$multi/openblas-pthread:$multi/hdf5/serial${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix/usr" -DBLAS_LIBRARIES="$blas"
    -DHDF5_C_INCLUDE_DIR="$prefix/usr/include/hdf5/serial"
    -DHDF5_C_LIBRARY_hdf5="$multi/hdf5/serial/libhdf5.so"
    -DHDF5_C_LIBRARY_m="$(first /usr/lib/x86_64-linux-gnu/libm.so /lib/x86_64-linux-gnu/libm.so.6)"
    -DHDF5_C_LIBRARY_z="$(first "$multi"/libz.so /usr/lib/x86_64-linux-gnu/libz.so /lib/x86_64-linux-gnu/libz.so.1)"
    -DHDF5_C_LIBRARY_sz="$multi/libsz.so" -DHDF5_C_LIBRARY_crypto="$(ls "$multi"/libcrypto.so* | head -1)"
    -DHDF5_C_LIBRARY_curl="$(ls "$multi"/libcurl.so* | head -1)")
  say "libraries from the bundle ($(ls "$bundle"/*.deb | wc -l) packages) in $prefix"
fi

# ---- cuDNN: the toolkit's, else the Python wheel's ----
if [ -z "$(first /usr/local/cuda/lib64/libcudnn.so /usr/local/cuda/lib/libcudnn.so /usr/lib/x86_64-linux-gnu/libcudnn.so)" ]; then
  wheel="$(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null || true)"
  if [ -n "$wheel" ] && [ -f "$wheel/include/cudnn.h" ]; then
    lib="$(ls "$wheel"/lib/libcudnn.so* | head -1)"
    mkdir -p "$prefix/cudnn" && ln -sf "$lib" "$prefix/cudnn/libcudnn.so"
    cmake_args+=(-DCUDNN_INCLUDE_DIR="$wheel/include" -DCUDNN_LIBRARY="$prefix/cudnn/libcudnn.so")
    export LD_LIBRARY_PATH="$wheel/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "cuDNN from the Python wheel in $wheel"
  else
    say "no cuDNN found: the cuDNN trainer will not be built"
  fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"

# ---- build ----
build="$root/build-gpu"
say "configure: cmake ${cmake_args[*]}"
if ! cmake -S . -B "$build" "${cmake_args[@]}" >>"$log" 2>&1; then say "configure FAILED (see log.txt)"; exit 1; fi
grep -E "attnpred: CUDA|cuDNN" "$log" | tail -2
[ -n "${ATTNPRED_CONFIGURE_ONLY:-}" ] && { say "configure ok (ATTNPRED_CONFIGURE_ONLY)"; exit 0; }
if ! cmake --build "$build" -j "$jobs" >>"$log" 2>&1; then say "build FAILED (see log.txt)"; tail -30 "$log"; exit 1; fi
say "build ok"

# ---- tests: all of them; GPU tests must run, not skip ----
AP_SKIP_REAL_MODEL="${AP_SKIP_REAL_MODEL:-}" ctest --test-dir "$build" -j 4 --output-on-failure \
  --timeout 900 > "$out/ctest.txt" 2>&1
ctest_rc=$?
# Criterion prints skipped tests with their reason; collect the GPU ones.
gpu_skips="$(grep -iE "skip.*(gpu|cuda)|(gpu|cuda).*skip" "$out/ctest.txt" | sort -u || true)"
summary_line="$(grep -E "tests passed|tests failed" "$out/ctest.txt" | tail -1)"
say "ctest: $summary_line (rc $ctest_rc)"

# ---- GPU benchmarks (each optional: run what this checkout has) ----
bench_rows=()
run_bench() { # name, args...
  local name="$1"; shift
  local exe="$build/$name"
  if [ -x "$exe" ]; then
    say "bench: $name $*"
    timeout 300 "$exe" "$@" > "$out/$name.txt" 2>&1 && bench_rows+=("| $name $* | ok |") \
      || bench_rows+=("| $name $* | FAILED (rc $?) |")
    tail -n 12 "$out/$name.txt" | tee -a "$log"
  fi
}
run_bench bench-train --device cuda --json "$out/bench-train.json"
run_bench bench-predictor --json "$out/bench-predictor.json"
run_bench bench-gpu --json "$out/bench-gpu.json"
run_bench bench-engine-gpu --json "$out/bench-engine-gpu.json"

# ---- summary ----
{
  echo "# attnpred GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "- ctest: $summary_line"
  echo
  echo "| test | result |"
  echo "|---|---|"
  grep -E "^ *[0-9]+/[0-9]+ Test" "$out/ctest.txt" | sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) .*\.\.\.+ *([A-Za-z*]+.*)$/| \1 | \2 |/'
  echo
  if [ -n "$gpu_skips" ]; then echo "GPU tests that SKIPPED (a failure of this check):"; echo '```'; echo "$gpu_skips"; echo '```'; fi
  echo "| benchmark | status |"
  echo "|---|---|"
  printf '%s\n' "${bench_rows[@]}"
} > "$out/summary.md"
cat "$out/summary.md"
[ "$ctest_rc" -eq 0 ] && [ -z "$gpu_skips" ]
