#!/usr/bin/env bash
# Make the offline bundle of Debian packages that scripts/gpu_check.sh needs on
# a GPU node without network access (docs/gpu.md). Run on a connected Debian 12
# machine (the one with the package mirror); writes .gpu-bundle/*.deb
# (git-ignored). The GPU node brings its own compiler, CMake and CUDA toolkit;
# the bundle holds the libraries attnpred links (HDF5, OpenBLAS, cJSON, libpng,
# Criterion) and what they need beyond a base system, plus the trained
# predictor (runs/quick/predictor.safetensors, when present) for the offload
# experiment of bench-engine-gpu.
#
#   bash scripts/make_gpu_bundle.sh [OUT_DIR] [--model-parts[=DIR]] [--part-size 48M]
#                                   [--no-debs]
#
# --model-parts: also split the real model (models/SmolLM2-135M-Instruct.Q4_1.gguf,
# 98 MB, more than one transfer of the device tool carries: 64 MiB per call,
# the checkout included) into parts of --part-size bytes (split(1) sizes;
# default 48M) in DIR (default models/parts, git-ignored through /models/),
# with a SHA256 file of the whole model. The parts travel in consecutive calls
# (see the printed plan); gpu_check.sh joins them when the model is missing.
# --no-debs: skip the package download (only the predictor copy and the parts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/.gpu-bundle"
parts_dir=""
part_size="48M"
debs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --model-parts) parts_dir="$root/models/parts"; shift ;;
    --model-parts=*) parts_dir="${1#--model-parts=}"; shift ;;
    --part-size) part_size="$2"; shift 2 ;;
    --part-size=*) part_size="${1#--part-size=}"; shift ;;
    --no-debs) debs=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "make_gpu_bundle: unknown option $1" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
mkdir -p "$out"

if [ "$debs" = 1 ]; then
  want=(libhdf5-dev libhdf5-103-1 libsz2 libaec0 libaec-dev
        libopenblas-dev libopenblas0 libopenblas0-pthread libopenblas-pthread-dev libgfortran5
        libcjson1 libcjson-dev libpng16-16 libpng-dev
        libcriterion3 libcriterion-dev libboxfort-dev libnanomsg5 libgit2-1.5 libffi8)
  # The dependency closure, minus what any glibc system with a C compiler already
  # has (libc, the GCC runtime) and the BLAS variants we do not use. Debian's
  # libc must never be unpacked into a library path on another distribution.
  skip='^(libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libgcc-s1|libstdc\+\+6|gcc-[0-9]+-base|libcrypt1|libcrypt-dev|libopenblas0-serial|libopenblas0-openmp|libopenblas-serial-dev|libopenblas-openmp-dev|libgomp1|libnss3|libnspr4|libcurl3-nss|libcurl4-nss-dev|libcurl4-gnutls-dev|libcurl3-gnutls|debconf|perl-base|dpkg|tar|install-info|libselinux1|libpcre2-8-0|libzstd1|liblzma5|libbz2-1.0|zlib1g|libtinfo6|libacl1|libattr1|libmd0|libaudit1|libaudit-common|libcap-ng0|libpam0g|libdb5.3|libgmp10|libsqlite3-0|libsystemd0|libudev1|libuuid1|libblkid1|libmount1|libsmartcols1|libdebconfclient0|base-files|libpcre2-dev|libpcre2-.*|libselinux1-dev|libsepol-dev|libsepol2|pkg-config|pkgconf|pkgconf-bin|libpkgconf3|.*-doc|sensible-utils)$'
  mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${want[@]}" | grep -E '^[a-z0-9]' | sort -u | grep -Ev "$skip")
  echo "make_gpu_bundle: ${#pkgs[@]} packages -> $out"
  (cd "$out" && apt-get download "${pkgs[@]}" >/dev/null)
  printf '%s\n' "${pkgs[@]}" > "$out/PACKAGES"
fi

# The trained predictor (20 KB): bench-engine-gpu's offload_prefetch rows use
# it (without one they run last_step selection).
pred="$root/runs/quick/predictor.safetensors"
if [ -f "$pred" ]; then
  cp "$pred" "$out/predictor.safetensors"
  echo "make_gpu_bundle: predictor copied ($pred)"
else
  echo "make_gpu_bundle: no $pred (run scripts/main.sh first for the attnpred rows); the GPU check will use last_step selection"
fi
du -sh "$out"

if [ -n "$parts_dir" ]; then
  name="SmolLM2-135M-Instruct.Q4_1.gguf"
  model="$root/models/$name"
  [ -f "$model" ] || { echo "make_gpu_bundle: $model missing (bash scripts/fetch-model.sh)" >&2; exit 1; }
  case "$parts_dir" in /*) ;; *) parts_dir="$root/$parts_dir" ;; esac
  if (cd "$root" && git check-ignore -q "$parts_dir/x" 2>/dev/null); then :; else
    echo "make_gpu_bundle: warning: $parts_dir is not git-ignored: the parts would travel with every call" >&2
  fi
  rm -rf "$parts_dir" && mkdir -p "$parts_dir"
  split -b "$part_size" "$model" "$parts_dir/$name.part-"
  (cd "$root/models" && sha256sum "$name") > "$parts_dir/SHA256"
  rel="${parts_dir#"$root"/}"
  echo "make_gpu_bundle: model split into $parts_dir:"
  ls -l "$parts_dir"
  echo "make_gpu_bundle: with the device tool, one part per call, calls back to back (a machine"
  echo "  stays warm about 30 s and keeps what earlier calls carried; a fresh one starts bare):"
  for p in "$parts_dir/$name".part-*; do
    echo "  run(command=\"ls -l $rel\", carry=[\"$rel/$(basename "$p")\", \"$rel/SHA256\"], timeout_s=60)"
  done
  echo "  run(command=\"bash scripts/gpu_check.sh .gpu-bundle\", carry=[\".gpu-bundle\"], timeout_s=540)"
  echo "  (each call carries at most 64 MiB with the checkout: keep a part and the bundle apart)"
fi
echo "make_gpu_bundle: done; on the GPU node run: bash scripts/gpu_check.sh $out"
