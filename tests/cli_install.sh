#!/usr/bin/env bash
# Install and embed (docs/embedding.md): `cmake --install` of the build tree
# the attnpred binary lives in, into a temporary prefix; then
# examples/embed/predict_trace.c, copied out of the source tree, is built
# against that copy with pkg-config alone and run on a synthetic trace and
# predictor (tests/tools/ap_fixture.c). Checked: the installed headers are
# self-contained C11 and closed under #include, nothing the compiler sees
# points into the source or build tree, the example prints one score per
# candidate block (the count docs/predictor-data.md defines) and a consistent
# top-k, bad input exits non-zero with a message naming it, and a moved
# prefix still works (attnpred.pc locates itself).
# Skips (exit 77) only without pkg-config or a C compiler.
# usage: cli_install.sh ATTNPRED_BINARY SOURCE_DIR AP_FIXTURE_BINARY
set -u
ap=${1:?attnpred binary}
src=${2:?source dir}
fx=${3:?ap_fixture binary (tests/tools/ap_fixture.c)}
cc=${CC:-cc}
if ! command -v pkg-config >/dev/null 2>&1; then
    echo "SKIP: cli_install needs pkg-config (apt-get install pkg-config)"
    exit 77
fi
if ! command -v "${cc%% *}" >/dev/null 2>&1; then
    echo "SKIP: cli_install needs a C compiler ('$cc' not found; set CC)"
    exit 77
fi
build=$(cd "$(dirname "$ap")" && pwd)
src=$(cd "$src" && pwd)
cmake=cmake
command -v "$cmake" >/dev/null 2>&1 || cmake=$(dirname "$(command -v ctest 2>/dev/null || echo .)")/cmake

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# expect CODE PATTERN -- command...: exit status CODE and PATTERN in stdout+stderr.
expect() {
    local code=$1 pat=$2
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        fail "'$*' exited $rc, expected $code"; echo "$out"; return
    fi
    if ! grep -q -e "$pat" <<<"$out"; then
        fail "'$*' output lacks '$pat'"; echo "$out"
    fi
}

# ---- install ----
prefix="$tmp/prefix"
if ! "$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
    echo "FAIL: cmake --install $build --prefix $prefix"
    cat "$tmp/install.log"
    exit 1
fi
pc=$(find "$prefix" -name attnpred.pc -path '*/pkgconfig/*' | head -1)
if [ -z "$pc" ]; then
    echo "FAIL: no pkgconfig/attnpred.pc under $prefix"; find "$prefix"; exit 1
fi
libdir=$(dirname "$(dirname "$pc")")
inc="$prefix/include/attnpred"
[ -f "$libdir/libattnpred_core.a" ] || fail "no libattnpred_core.a in $libdir"
[ -x "$prefix/bin/attnpred" ] || fail "no bin/attnpred"
for h in train/runtime.h train/predictor.h capture/trace.h capture/model.h common/status.h; do
    [ -f "$inc/$h" ] || fail "header $h not installed"
done
# Every project header an installed header includes is installed too.
headers=$(cd "$inc" && find . -name '*.h' | sed 's|^\./||' | sort)
for h in $headers; do
    for dep in $(sed -n 's/^#include "\(.*\)"/\1/p' "$inc/$h"); do
        [ -f "$inc/$dep" ] || fail "installed $h includes \"$dep\", which is not installed"
    done
done

# ---- pkg-config, from the installed copy only ----
export PKG_CONFIG_PATH="$(dirname "$pc")"
unset CPATH C_INCLUDE_PATH LIBRARY_PATH
cflags=$(pkg-config --cflags attnpred) || fail "pkg-config --cflags attnpred"
libs=$(pkg-config --static --libs attnpred) || fail "pkg-config --static --libs attnpred"
echo "cflags: $cflags"
echo "libs:   $libs"
case "$cflags $libs" in
    *"$src"* | *"$build"*) fail "pkg-config flags point into the source or build tree" ;;
esac
# includes_dir DIR FLAGS: one -I of FLAGS is DIR (pkg-config leaves the
# ${pcfiledir}/../.. of a relocatable .pc file unresolved).
includes_dir() {
    local want f
    want=$(cd "$1" && pwd -P) || return 1
    for f in $2; do
        case $f in -I*) [ "$(cd "${f#-I}" 2>/dev/null && pwd -P)" = "$want" ] && return 0 ;; esac
    done
    return 1
}
includes_dir "$inc" "$cflags" || fail "Cflags '$cflags' lack -I$inc"
for l in -lattnpred_core -lhdf5 -lopenblas -lcjson -lm; do
    grep -q -e "$l\b" <<<"$libs" || fail "--static --libs lacks $l"
done

for h in $headers; do
    printf '#include "%s"\nint ap_header_check;\n' "$h" |
        $cc -std=c11 -Wall -Wextra -Werror -fsyntax-only $cflags -x c - ||
        fail "installed $h does not compile on its own (C11)"
done

# ---- the example, outside the source tree ----
ex="$tmp/example"
mkdir -p "$ex"
cp "$src/examples/embed/predict_trace.c" "$src/examples/embed/Makefile" "$ex/"
if command -v make >/dev/null 2>&1; then
    make -s -C "$ex" CC="$cc" CFLAGS="-std=c11 -O2 -Wall -Wextra -Werror" >"$tmp/make.log" 2>&1 ||
        { fail "make in the example (examples/embed/Makefile)"; cat "$tmp/make.log"; }
else
    (cd "$ex" && $cc -std=c11 -O2 -Wall -Wextra -Werror $cflags -o predict_trace \
        predict_trace.c $libs) || fail "compiling the example"
fi
pt="$ex/predict_trace"
if [ ! -x "$pt" ]; then
    echo "$fails check(s) failed (no example binary)"; exit 1
fi

"$fx" trace "$tmp/t.h5" >/dev/null || { echo "FAIL: ap_fixture trace"; exit 1; }
"$fx" predictor "$tmp/p.safetensors" 16 16 >/dev/null || { echo "FAIL: ap_fixture predictor"; exit 1; }
"$fx" predictor "$tmp/p32.safetensors" 32 16 >/dev/null || { echo "FAIL: ap_fixture predictor"; exit 1; }
export OPENBLAS_NUM_THREADS=1

# run_case SEQ LAYER HEAD STEP TOP: runs the example and checks its output
# against the trace's own numbers (`attnpred inspect --json`): W =
# ceil((n_prompt + step) / 16) - 4 sink - 4 local candidate blocks, one finite
# score each, and a top-k of min(TOP, W) distinct candidates whose scores are
# the k largest, in descending order.
n_prompt_of() { # SEQ: id or index
    "$ap" inspect "$tmp/t.h5" --json | tr -d ' \t\n' |
        grep -oE "(\"index\":$1,|\"id\":\"$1\")[^}]*" | grep -o '"n_prompt":[0-9]*' |
        cut -d: -f2
}
run_case() {
    local seq=$1 layer=$2 head=$3 step=$4 top=$5 out np W k
    out=$("$pt" --seq "$seq" --layer "$layer" --head "$head" --step "$step" --top "$top" \
        "$tmp/t.h5" "$tmp/p.safetensors" 2>&1) || { fail "example on $seq/$layer/$head/$step: $out"; return; }
    np=$(n_prompt_of "$seq")
    W=$(( (np + step + 15) / 16 - 8 ))
    k=$(( top < W ? top : W ))
    echo "--- predict_trace --seq $seq --layer $layer --head $head --step $step --top $top"
    echo "$out"
    awk -v W="$W" -v k="$k" -v c0=4 '
        /^ *[0-9]+  [-+][0-9]/ {
            n++; blk[n] = $1; sc[$1] = $2
            if ($2 !~ /^[-+][0-9]\.[0-9]+e[-+][0-9]+$/) bad = bad " non-finite score " $2
            if ($1 != c0 + n - 1) bad = bad " block " $1 " out of order"
        }
        /candidate blocks/ { if ($0 !~ " " W " candidate blocks \\[4, " (W + 4) "\\)") bad = bad " header: " $0 }
        /^top / {
            tops = NF - 2
            if ($2 != k ":") bad = bad " top line says " $2
            for (i = 3; i <= NF; i++) {
                if (!($i in sc)) bad = bad " top block " $i " is no candidate"
                if (seen[$i]++) bad = bad " top block " $i " twice"
                if (i > 3 && sc[$i] + 0 > sc[$(i - 1)] + 0) bad = bad " top not descending"
                intop[$i] = 1
                if (i == NF) last = sc[$i] + 0
            }
        }
        END {
            if (n != W) bad = bad " " n " score rows, expected " W
            if (tops != k) bad = bad " " tops " top blocks, expected " k
            for (b in sc) if (!(b in intop) && sc[b] + 0 > last) bad = bad " block " b " beats the top list"
            if (bad != "") { print bad; exit 1 }
        }' <<<"$out" || fail "output of --seq $seq --layer $layer --head $head --step $step --top $top"
}
run_case 0 0 0 0 3       # prompt 200: 5 candidates
run_case syn01 1 2 7 4   # by id, last step of the longer prompt: 12 candidates
run_case 1 0 1 0 50      # top larger than the candidates: all of them

# The same window twice gives the same numbers (no hidden state in the API).
a=$("$pt" --seq 1 --step 3 "$tmp/t.h5" "$tmp/p.safetensors" 2>&1)
b=$("$pt" --seq 1 --step 3 "$tmp/t.h5" "$tmp/p.safetensors" 2>&1)
[ "$a" = "$b" ] || fail "two identical runs differ"

# ---- bad input: non-zero, one message naming what is wrong ----
expect 0 "usage: predict_trace" -- "$pt" --help
expect 2 "usage: predict_trace" -- "$pt"
expect 2 "usage: predict_trace" -- "$pt" "$tmp/t.h5"
expect 2 "unknown option '--frobnicate'" -- "$pt" --frobnicate "$tmp/t.h5" "$tmp/p.safetensors"
expect 2 "bad value 'x' for --layer" -- "$pt" --layer x "$tmp/t.h5" "$tmp/p.safetensors"
expect 2 "bad value '0' for --top" -- "$pt" --top 0 "$tmp/t.h5" "$tmp/p.safetensors"
expect 2 "--step needs a value" -- "$pt" "$tmp/t.h5" "$tmp/p.safetensors" --step
expect 2 "unexpected argument 'extra'" -- "$pt" "$tmp/t.h5" "$tmp/p.safetensors" extra
expect 1 "$tmp/none.h5" -- "$pt" "$tmp/none.h5" "$tmp/p.safetensors"
echo "not hdf5" >"$tmp/bad.h5"
expect 1 "$tmp/bad.h5" -- "$pt" "$tmp/bad.h5" "$tmp/p.safetensors"
expect 1 "$tmp/none.safetensors" -- "$pt" "$tmp/t.h5" "$tmp/none.safetensors"
expect 1 "$tmp/bad.h5" -- "$pt" "$tmp/t.h5" "$tmp/bad.h5"
expect 1 "predictor pools 32-token blocks" -- "$pt" "$tmp/t.h5" "$tmp/p32.safetensors"
expect 1 "--layer 2 / --head 0 outside 2 layers x 3 heads" -- \
    "$pt" --layer 2 "$tmp/t.h5" "$tmp/p.safetensors"
expect 1 "--head 3 outside" -- "$pt" --head 3 "$tmp/t.h5" "$tmp/p.safetensors"
expect 1 "no sequence 'nosuch'" -- "$pt" --seq nosuch "$tmp/t.h5" "$tmp/p.safetensors"
expect 1 "no sequence '2'" -- "$pt" --seq 2 "$tmp/t.h5" "$tmp/p.safetensors"
expect 1 "has 8 decode steps, --step 8" -- "$pt" --step 8 "$tmp/t.h5" "$tmp/p.safetensors"

# ---- a moved prefix: attnpred.pc finds itself ----
mv "$prefix" "$tmp/moved"
pc_rel=${pc#"$prefix"/}
export PKG_CONFIG_PATH="$tmp/moved/$(dirname "$pc_rel")"
moved_flags=$(pkg-config --cflags attnpred)
includes_dir "$tmp/moved/include/attnpred" "$moved_flags" ||
    fail "after moving the prefix, Cflags are '$moved_flags'"
(cd "$ex" && $cc -std=c11 -O2 $(pkg-config --cflags attnpred) -o predict_moved predict_trace.c \
    $(pkg-config --static --libs attnpred)) || fail "building against the moved prefix"
expect 0 "top 8:" -- "$ex/predict_moved" --seq 1 "$tmp/t.h5" "$tmp/p.safetensors"

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "cli_install: all checks passed"
