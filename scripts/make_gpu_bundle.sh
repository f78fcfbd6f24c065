#!/usr/bin/env bash
# Make the offline bundle of Debian packages that scripts/gpu_check.sh needs on
# a GPU node without network access (docs/gpu.md). Run on a connected Debian 12
# machine (the one with the package mirror); writes .gpu-bundle/*.deb
# (git-ignored). The GPU node brings its own compiler, CMake and CUDA toolkit;
# the bundle holds the libraries attnpred links (HDF5, OpenBLAS, cJSON, libpng,
# Criterion) and what they need beyond a base system.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/.gpu-bundle}"
mkdir -p "$out"

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
du -sh "$out"
printf '%s\n' "${pkgs[@]}" > "$out/PACKAGES"
echo "make_gpu_bundle: done; on the GPU node run: bash scripts/gpu_check.sh $out"
