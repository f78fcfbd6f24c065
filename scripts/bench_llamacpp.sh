#!/usr/bin/env bash
# CPU engine speed against llama.cpp on the same GGUF file, machine and
# thread count, back to back: prefill tok/s of a 1K-token prompt and decode
# tok/s at depths 1K and 8K, attnpred (build/bench-engine, quantized engine,
# exact decode) next to llama.cpp (llama-bench, CPU build), with the ratio.
#
#   scripts/bench_llamacpp.sh [--model M.gguf]... [--threads 2] [--prefill 1024]
#       [--depths 1024,8192] [--gen 64] [--reps 3] [--json OUT.json]
#       [--bench-engine PATH] [--variant quant|quant_q8act] [--isa native|avx2]
#       [--llama-args "ARGS"] [--build-only]
#
# --model (repeatable) defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf and
# models/gemma-3-270m-q4_k_m.gguf, whichever are present
# (scripts/fetch-model.sh [KEY] fetches them). --depths: decode depths, e.g.
# 1024,8192,32768 for Gemma 3's longer context. --gen: decode tokens timed per
# depth and repetition; --reps: repetitions, best kept on both sides.
# --bench-engine defaults to build/bench-engine (cmake --build build --target
# bench-engine). --variant quant_q8act decodes with attnpred's opt-in int8
# activations (as llama.cpp's quantized dot products do; not exact); the
# default is its exact decode. --isa avx2 builds llama.cpp without AVX-512
# (attnpred's kernels are AVX2); native (default) is llama.cpp's default
# -march=native build.
# --llama-args is appended to every llama-bench call (e.g. "-fa off" or
# "--poll 0"). llama.cpp's KV cache is F16, attnpred's float32: this
# llama-bench offers no f32 cache type (-ctk/-ctv: f16, bf16, q8_0, q4_*, ...).
#
# llama.cpp is built once from the pinned llama-cpp-python sdist (its
# vendor/llama.cpp) into .deps/llama.cpp-build/ (CPU only, Release, static,
# no CUDA/Metal/Vulkan/BLAS/OpenSSL) and reused while the sdist digest, the
# flags and the compiler are unchanged (stamp file). The sdist is fetched with
# pip when missing and checked against the pinned sha256.
#
# Speed is only meaningful on an otherwise idle machine: run it with nothing
# else running and read the ratios (docs/engine.md, "Against llama.cpp").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
me="bench_llamacpp.sh"

LCP_VERSION="0.3.36"
LCP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
sdist_dir="$root/.deps/llama-cpp-python"
sdist="$sdist_dir/llama_cpp_python-$LCP_VERSION.tar.gz"
work="$root/.deps/llama.cpp-build"

die() { echo "$me: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

models=() threads=2 prefill=1024 depths="1024,8192" gen=64 reps=3 json=""
bench_engine="$root/build/bench-engine" variant=quant isa=native llama_args="" build_only=0
need_arg() { [[ $# -ge 2 && -n "$2" ]] || { echo "$me: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) need_arg "$@"; models+=("$2"); shift 2 ;;
    --threads) need_arg "$@"; threads="$2"; shift 2 ;;
    --prefill) need_arg "$@"; prefill="$2"; shift 2 ;;
    --depths) need_arg "$@"; depths="$2"; shift 2 ;;
    --gen) need_arg "$@"; gen="$2"; shift 2 ;;
    --reps) need_arg "$@"; reps="$2"; shift 2 ;;
    --json) need_arg "$@"; json="$2"; shift 2 ;;
    --bench-engine) need_arg "$@"; bench_engine="$2"; shift 2 ;;
    --isa) need_arg "$@"; isa="$2"; shift 2 ;;
    --variant) need_arg "$@"; variant="$2"; shift 2 ;;
    --llama-args) [[ $# -ge 2 ]] || { echo "$me: --llama-args needs a value" >&2; exit 2; }
                  llama_args="$2"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$me: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 >= $2 )); }
is_uint "$threads" 1 || die "--threads must be a positive integer, got '$threads'"
is_uint "$prefill" 16 || die "--prefill must be an integer >= 16, got '$prefill'"
is_uint "$gen" 1 || die "--gen must be a positive integer, got '$gen'"
is_uint "$reps" 1 || die "--reps must be a positive integer, got '$reps'"
[[ "$depths" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--depths takes ascending integers like 1024,8192, got '$depths'"
prev=0
for d in ${depths//,/ }; do
  (( 10#$d >= 16 && 10#$d > prev )) || die "--depths must be ascending and >= 16, got '$depths'"
  prev=$((10#$d))
done
case "$isa" in native|avx2) ;; *) die "--isa takes native or avx2, got '$isa'" ;; esac
case "$variant" in quant|quant_q8act) ;; *) die "--variant takes quant or quant_q8act, got '$variant'" ;; esac
if [[ -n "$json" ]]; then
  jdir="$(dirname -- "$json")"
  [[ -d "$jdir" && -w "$jdir" ]] || die "--json $json: folder $jdir does not exist or is not writable"
fi

# ------------------------------------------------------------ llama.cpp build
cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF
  -DGGML_OPENCL=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
)
if [[ "$isa" == native ]]; then
  cmake_flags+=(-DGGML_NATIVE=ON)
  # Without AMX: ggml's AMX matmul segfaults on some Sapphire Rapids machines
  # (llama.cpp issue 20824; this CI machine included), and attnpred has no AMX
  # path. GCC's explicit -mno-* flags win over -march=native in any order.
  if [[ "$(uname -m)" == x86_64 ]]; then
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake_flags+=("-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx")
  fi
else
  cmake_flags+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF)
fi
src="$work/src"            # vendor/llama.cpp of the sdist, shared by both ISAs
bdir="$work/build-$isa"
llama_bench="$bdir/bin/llama-bench"
stamp="$bdir/attnpred-stamp"

fetch_sdist() {
  if [[ ! -f "$sdist" ]]; then
    echo "$me: fetching llama-cpp-python $LCP_VERSION sdist into $sdist_dir" >&2
    mkdir -p "$sdist_dir"
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" \
      -d "$sdist_dir" >&2 || die "pip download of llama-cpp-python==$LCP_VERSION failed"
    [[ -f "$sdist" ]] || die "pip did not leave $sdist"
  fi
  local got
  got="$(sha256sum "$sdist" | cut -d' ' -f1)"
  [[ "$got" == "$LCP_SHA256" ]] ||
    die "$sdist: sha256 $got, expected $LCP_SHA256 (delete it to fetch it again)"
}

build_llama() {
  local cc_ver want
  cc_ver="$(${CC:-cc} --version 2>/dev/null | head -1); $(${CXX:-c++} --version 2>/dev/null | head -1)"
  want="sdist=$LCP_SHA256 isa=$isa CC=${CC:-cc} CXX=${CXX:-c++} ($cc_ver) flags=${cmake_flags[*]}"
  if [[ -x "$llama_bench" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  fetch_sdist
  local top="llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  if [[ ! -f "$src/.attnpred-sdist" || "$(cat "$src/.attnpred-sdist")" != "$LCP_SHA256" ]]; then
    echo "$me: extracting $top into $src" >&2
    rm -rf "$src" "$work/build-native" "$work/build-avx2"
    mkdir -p "$src"
    tar -xzf "$sdist" -C "$src" --strip-components=3 "$top" ||
      die "cannot extract $top from $sdist"
    [[ -f "$src/tools/llama-bench/llama-bench.cpp" ]] ||
      die "$sdist has no tools/llama-bench in $top"
    echo "$LCP_SHA256" > "$src/.attnpred-sdist"
  fi
  echo "$me: building llama-bench ($isa, CPU only) in $bdir (several minutes)" >&2
  rm -f "$stamp"
  # A build configured with other flags or compilers starts afresh (CMake
  # caches the compiler); an interrupted one with the same settings resumes.
  if [[ -f "$bdir/attnpred-configured" && "$(cat "$bdir/attnpred-configured")" != "$want" ]]; then
    rm -rf "$bdir"
  fi
  mkdir -p "$bdir"
  echo "$want" > "$bdir/attnpred-configured"
  cmake -S "$src" -B "$bdir" "${cmake_flags[@]}" > "$work/configure-$isa.log" 2>&1 ||
    die "cmake configure failed, see $work/configure-$isa.log"
  cmake --build "$bdir" --target llama-bench -j "$(nproc)" > "$work/build-$isa.log" 2>&1 ||
    die "build failed, see $work/build-$isa.log"
  [[ -x "$llama_bench" ]] || die "build finished without $llama_bench"
  echo "$want" > "$stamp"
}

mkdir -p "$work"
build_llama
echo "$me: llama-bench: $llama_bench (llama-cpp-python $LCP_VERSION, $isa)" >&2
if [[ $build_only == 1 ]]; then exit 0; fi

# ------------------------------------------------------------------ attnpred
[[ -x "$bench_engine" ]] ||
  die "$bench_engine not built (cmake --build build --target bench-engine, or --bench-engine PATH)"
"$bench_engine" --help 2>/dev/null | grep -q -- '--rewind' ||
  die "$bench_engine has no --rewind/--variants options: rebuild it (cmake --build build --target bench-engine)"

if [[ ${#models[@]} -eq 0 ]]; then
  for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do
    [[ -f "$root/$m" ]] && models+=("$root/$m")
  done
  [[ ${#models[@]} -gt 0 ]] ||
    die "no model in $root/models (scripts/fetch-model.sh [KEY] fetches them) and no --model given"
fi
for m in "${models[@]}"; do [[ -r "$m" ]] || die "--model $m: no such readable file"; done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Python helper: GGUF header (architecture, context length), llama-bench and
# bench-engine JSON into one table and one JSON document.
cat > "$tmp/helper.py" <<'EOF'
import json, os, struct, sys

def gguf_info(path):
    """general.architecture and <arch>.context_length from the GGUF header."""
    f = open(path, "rb")
    def rd(fmt):
        n = struct.calcsize(fmt)
        b = f.read(n)
        if len(b) != n:
            raise ValueError("truncated header")
        return struct.unpack("<" + fmt, b)
    def rstr():
        (n,) = rd("Q")
        return f.read(n).decode("utf-8", "replace")
    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def rval(t):
        if t in sizes:
            return rd(sizes[t])[0]
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd("I") + rd("Q")
            if et in sizes:
                f.seek(n * struct.calcsize(sizes[et]), 1)
            else:
                for _ in range(n):
                    rval(et)
            return None
        raise ValueError(f"unknown value type {t}")
    if f.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    (ver,) = rd("I")
    if ver < 2:
        raise ValueError(f"GGUF version {ver} unsupported")
    _, n_kv = rd("Q") + rd("Q")
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        (t,) = rd("I")
        kv[k] = rval(t)
    arch = kv.get("general.architecture")
    ctx = kv.get(f"{arch}.context_length")
    if not arch or ctx is None:
        raise ValueError("no general.architecture / context_length")
    return arch, int(ctx)

def cmd_info(path):
    try:
        arch, ctx = gguf_info(path)
    except (OSError, ValueError, struct.error) as e:
        sys.exit(f"bench_llamacpp.sh: {path}: cannot read the GGUF header: {e}")
    print(arch, ctx)

def load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"bench_llamacpp.sh: cannot read {what} output {path}: {e}")

def cmd_model(out, path, arch, n_ctx, prefill, depths, gen, variant, pre_ap, dec_ap, pre_lc, dec_lc):
    """One model's rows from its four result files -> out (JSON)."""
    depths = [int(d) for d in depths.split(",")]
    prefill, gen = int(prefill), int(gen)
    ap_pre = [load(p, "bench-engine")["contexts"][0]["prefill_tps_quant"] for p in pre_ap.split(",")]
    ap_dec = {c["ctx"]: c["decode_tps_" + variant] for c in load(dec_ap, "bench-engine")["contexts"]}
    lc = load(pre_lc, "llama-bench") + load(dec_lc, "llama-bench")
    def lc_find(p, n, d):
        for t in lc:
            if t["n_prompt"] == p and t["n_gen"] == n and t["n_depth"] == d:
                return t
        sys.exit(f"bench_llamacpp.sh: llama-bench gave no result for p={p} n={n} d={d}")
    rows = []
    t = lc_find(prefill, 0, 0)
    rows.append({"test": "prefill", "tokens": prefill, "depth": 0, "attnpred_tps": max(ap_pre),
                 "attnpred_samples_tps": ap_pre, "llamacpp_tps": max(t["samples_ts"]),
                 "llamacpp_avg_tps": t["avg_ts"], "llamacpp_samples_tps": t["samples_ts"]})
    for d in depths:
        t = lc_find(0, gen, d)
        if d not in ap_dec:
            sys.exit(f"bench_llamacpp.sh: bench-engine gave no result at depth {d}")
        rows.append({"test": "decode", "tokens": gen, "depth": d, "attnpred_tps": ap_dec[d],
                     "llamacpp_tps": max(t["samples_ts"]), "llamacpp_avg_tps": t["avg_ts"],
                     "llamacpp_samples_tps": t["samples_ts"]})
    for r in rows:
        r["ratio_attnpred_over_llamacpp"] = r["attnpred_tps"] / r["llamacpp_tps"]
    t0 = lc[0]
    settings = {k: t0.get(k) for k in ("n_threads", "n_batch", "n_ubatch", "type_k", "type_v",
                                       "flash_attn", "load_mode", "poll", "repack", "cpu_info",
                                       "model_type", "backends", "build_commit")}
    # llama-bench writes the flash-attention type as an int: -1 auto (on the
    # CPU backend it resolves to enabled), 0 off, 1 on.
    fa = {-1: "auto", 0: "off", 1: "on"}
    settings["flash_attn"] = fa.get(settings["flash_attn"], settings["flash_attn"])
    doc = {"model": path, "arch": arch, "context_length": int(n_ctx), "rows": rows,
           "llamacpp_settings": settings}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{os.path.basename(path)} ({arch}, context {n_ctx}); llama.cpp: "
          f"batch {settings['n_batch']}, ubatch {settings['n_ubatch']}, KV {settings['type_k']}/"
          f"{settings['type_v']}, flash_attn {settings['flash_attn']}")
    print("| test | context / depth | attnpred tok/s | llama.cpp tok/s | attnpred / llama.cpp |")
    print("|:--|--:|--:|--:|--:|")
    for r in rows:
        what = f"prefill {r['tokens']}" if r["test"] == "prefill" else f"decode {r['tokens']}"
        ctx = r["tokens"] if r["test"] == "prefill" else r["depth"]
        print(f"| {what} | {ctx} | {r['attnpred_tps']:.1f} | {r['llamacpp_tps']:.1f} | "
              f"x{r['ratio_attnpred_over_llamacpp']:.2f} |")

def cmd_join(out, meta, *docs):
    root = json.loads(meta)
    root["models"] = [load(d, "model") for d in docs]
    tmp = f"{out}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(root, f, indent=1)
        f.write("\n")
    os.replace(tmp, out)

{"info": cmd_info, "model": cmd_model, "join": cmd_join}[sys.argv[1]](*sys.argv[2:])
EOF

load1() { cut -d' ' -f1 /proc/loadavg; }
load_start="$(load1)"
if awk -v l="$load_start" 'BEGIN { exit !(l > 0.5) }'; then
  echo "$me: warning: load average $load_start: not an idle machine. These numbers are not" \
       "the engines' speed, and the ratios mean little too: llama.cpp's threads spin at" \
       "barriers and collapse when another job takes a core" >&2
fi
read -r -a extra <<< "$llama_args"
docs=()
for mi in "${!models[@]}"; do
  m="${models[$mi]}"
  read -r arch n_ctx < <(python3 "$tmp/helper.py" info "$m") || exit 1
  [[ -n "${n_ctx:-}" ]] || die "$m: cannot read its GGUF header"
  (( prefill < n_ctx )) || die "$m: --prefill $prefill must be below its context length $n_ctx"
  # Decode runs keys D .. D + gen; attnpred refuses a cache past the model's
  # context, so a depth that would go past it is lowered to n_ctx - gen on
  # both sides.
  ds=()
  for d in ${depths//,/ }; do
    d=$((10#$d))
    if (( d + gen > n_ctx )); then
      (( n_ctx - gen >= 16 )) || die "$m: --gen $gen leaves no depth within context $n_ctx"
      echo "$me: $(basename "$m"): depth $d + $gen tokens exceeds context $n_ctx; using depth $((n_ctx - gen))" >&2
      d=$((n_ctx - gen))
    fi
    [[ ${#ds[@]} -gt 0 && "${ds[-1]}" -ge "$d" ]] || ds+=("$d")
  done
  dlist="$(IFS=,; echo "${ds[*]}")"
  echo "== $(basename "$m") ($arch, context $n_ctx): prefill $prefill, decode $gen tokens at" \
       "depths $dlist, $threads threads, best of $reps" >&2

  echo "-- llama.cpp prefill" >&2
  "$llama_bench" -m "$m" -t "$threads" -p "$prefill" -n 0 -r "$reps" -o json "${extra[@]}" \
    > "$tmp/lc-pre-$mi.json" 2> "$tmp/lc-pre-$mi.log" ||
    { tail -20 "$tmp/lc-pre-$mi.log" >&2; die "llama-bench (prefill) failed on $m"; }
  echo "-- attnpred prefill ($reps runs)" >&2
  pre_files=()
  for r in $(seq 1 "$reps"); do
    f="$tmp/ap-pre-$mi-$r.json"
    "$bench_engine" --model "$m" --engines quant --variants "$variant" --rewind --contexts "$prefill" \
      --gen 1 --reps 1 --threads "$threads" --no-limits --json "$f" > "$tmp/ap-pre.log" 2>&1 ||
      { tail -20 "$tmp/ap-pre.log" >&2; die "bench-engine (prefill) failed on $m"; }
    pre_files+=("$f")
  done
  echo "-- llama.cpp decode" >&2
  "$llama_bench" -m "$m" -t "$threads" -p 0 -n "$gen" -d "$dlist" -r "$reps" -o json "${extra[@]}" \
    > "$tmp/lc-dec-$mi.json" 2> "$tmp/lc-dec-$mi.log" ||
    { tail -20 "$tmp/lc-dec-$mi.log" >&2; die "llama-bench (decode) failed on $m"; }
  echo "-- attnpred decode" >&2
  "$bench_engine" --model "$m" --engines quant --variants "$variant" --rewind --contexts "$dlist" \
    --gen "$gen" --reps "$reps" --threads "$threads" --no-limits --json "$tmp/ap-dec-$mi.json" \
    > "$tmp/ap-dec.log" 2>&1 ||
    { tail -20 "$tmp/ap-dec.log" >&2; die "bench-engine (decode) failed on $m"; }

  python3 "$tmp/helper.py" model "$tmp/model-$mi.json" "$m" "$arch" "$n_ctx" "$prefill" "$dlist" \
    "$gen" "$variant" "$(IFS=,; echo "${pre_files[*]}")" "$tmp/ap-dec-$mi.json" "$tmp/lc-pre-$mi.json" \
    "$tmp/lc-dec-$mi.json" || exit 1
  docs+=("$tmp/model-$mi.json")
done
load_end="$(load1)"
echo
echo "threads $threads, best of $reps runs per cell; load average $load_start at start, $load_end at end" \
     "($(nproc) CPUs); attnpred: bench-engine quantized engine, decode variant $variant; llama.cpp:" \
     "llama-cpp-python $LCP_VERSION vendor/llama.cpp, $isa build${llama_args:+, extra args: $llama_args}"

if [[ -n "$json" ]]; then
  meta="$(python3 -c '
import json, sys
a = sys.argv[1:]
print(json.dumps({
  "threads": int(a[0]), "prefill": int(a[1]), "gen": int(a[2]), "reps": int(a[3]),
  "statistic": "best of reps (max tok/s) on both sides; llama.cpp avg_tps kept too",
  "load_average": {"start": float(a[4]), "end": float(a[5]), "ncpu": int(a[6])},
  "attnpred": {"bench_engine": a[7], "engine": "quant", "variant": a[14],
               "options": "--engines quant --variants " + a[14] + " --rewind --no-limits"},
  "llamacpp": {"source": "llama-cpp-python " + a[8] + " sdist, vendor/llama.cpp",
               "sdist_sha256": a[9], "isa": a[10], "llama_bench": a[11], "extra_args": a[12],
               "cmake_flags": a[13].splitlines()}}))
' "$threads" "$prefill" "$gen" "$reps" "$load_start" "$load_end" "$(nproc)" "$bench_engine" \
    "$LCP_VERSION" "$LCP_SHA256" "$isa" "$llama_bench" "$llama_args" "$(printf '%s\n' "${cmake_flags[@]}")" \
    "$variant")"
  python3 "$tmp/helper.py" join "$json" "$meta" "${docs[@]}" || exit 1
  echo "wrote $json"
fi
