#!/usr/bin/env bash
# attnpred eval: help texts, usage errors and input errors of `eval replay`
# and `eval tasks` (exit codes, one message naming the option or file, no
# output written). `eval tasks` never gets as far as loading a model here.
# The end-to-end runs on synthetic and real traces are in tests/test_replay.c
# (they need a trace, which only the C helpers can write).
# Several predictors (--predictor NAME=PATH,...) use fixtures written by
# tests/tools/ap_fixture.c: every bad --predictor input is refused before any
# work with one message and no output, and one file under two names gives
# two methods with identical numbers, in a replay and in live tasks on the
# synthetic test model.
# usage: cli_eval.sh ATTNPRED_BINARY SOURCE_DIR AP_FIXTURE_BINARY
set -u
ap=${1:?attnpred binary}
src=${2:?source dir}
fx=${3:?ap_fixture binary (tests/tools/ap_fixture.c)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect CODE PATTERN -- command...: exit status CODE and PATTERN in stdout+stderr.
expect() {
    local code=$1 pat=$2
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        echo "FAIL: '$*' exited $rc, expected $code"; echo "$out"; fails=$((fails + 1)); return
    fi
    if ! grep -q -e "$pat" <<<"$out"; then
        echo "FAIL: '$*' output lacks '$pat'"; echo "$out"; fails=$((fails + 1))
    fi
}

expect 0 "replay" -- "$ap" eval --help
expect 2 "replay" -- "$ap" eval
expect 2 "unknown subcommand 'bogus'" -- "$ap" eval bogus
expect 0 "eval" -- "$ap" --help
# Every option of eval replay is documented in its --help.
for opt in traces predictor budget methods sink local calib kv-mode dense-layers snapkv-window \
           snapkv-pool max-seqs max-steps threads naive json md png quiet help; do
    expect 0 "--$opt" -- "$ap" eval replay --help
done
for m in oracle streaming h2o snapkv quest last_step last_step_dense attnpred attnpred_nocal; do
    expect 0 "$m" -- "$ap" eval replay --help
done

j="$tmp/out.json"
expect 2 "--traces and --json are required" -- "$ap" eval replay --json "$j"
expect 2 "--traces and --json are required" -- "$ap" eval replay --traces x.h5
expect 2 "bad value 'abc' for --budget" -- "$ap" eval replay --traces x.h5 --json "$j" --budget abc
expect 2 "bad value '256,0' for --budget" -- "$ap" eval replay --traces x.h5 --json "$j" --budget 256,0
expect 2 "bad value '0' for --pred-stride" -- "$ap" eval replay --traces x.h5 --json "$j" --pred-stride 0
# --max-steps 0 means every step (configs/pipeline-full.json uses it): past
# option parsing, so the missing trace is what stops it.
expect 1 "--traces: $tmp/none.h5: no such file" -- "$ap" eval replay --traces "$tmp/none.h5" --json "$j" --max-steps 0
expect 2 "bad value '-1' for --max-steps" -- "$ap" eval replay --traces x.h5 --json "$j" --max-steps -1
# A budget at or below sink + local leaves no block to choose (every method
# would tie): refused as a usage error before the trace (missing here) is read.
expect 2 "--budget 100 is not above sink + local = 128 tokens (budgets must exceed 128)" -- \
    "$ap" eval replay --traces x.h5 --json "$j" --budget 256,100
expect 2 "--budget 128 is not above sink + local = 128 tokens" -- \
    "$ap" eval replay --traces x.h5 --json "$j" --budget 128
expect 2 "--budget 256 is not above sink + local = 256 tokens" -- \
    "$ap" eval replay --traces x.h5 --json "$j" --sink 128 --local 128
expect 0 "each above sink + local" -- "$ap" eval replay --help
expect 2 "for --kv-mode" -- "$ap" eval replay --traces x.h5 --json "$j" --kv-mode pairs
expect 2 "for --snapkv-pool" -- "$ap" eval replay --traces x.h5 --json "$j" --snapkv-pool 4
expect 2 "for --threads" -- "$ap" eval replay --traces x.h5 --json "$j" --threads 0
expect 2 "--predictor: empty path in 'p.st='" -- "$ap" eval replay --traces x.h5 --json "$j" --predictor p.st=
expect 2 "unknown or incomplete option '--frobnicate'" -- "$ap" eval replay --frobnicate
expect 2 "unexpected argument 'extra'" -- "$ap" eval replay --traces x.h5 --json "$j" extra
expect 1 "--traces: $tmp/none.h5: no such file" -- "$ap" eval replay --traces "$tmp/none.h5" --json "$j"

# A file that is not a trace: the reader's message names it.
echo "not hdf5" >"$tmp/bad.h5"
expect 1 "$tmp/bad.h5" -- "$ap" eval replay --traces "$tmp/bad.h5" --json "$j" --quiet
expect 1 "--predictor: $tmp/p.safetensors: no such file" -- \
    "$ap" eval replay --traces "$tmp/bad.h5" --predictor "$tmp/p.safetensors" --json "$j"
# An output directory that does not exist is refused before any replay.
expect 1 "--json" -- "$ap" eval replay --traces "$tmp/bad.h5" --json "$tmp/no/dir/out.json"
expect 1 "--md" -- "$ap" eval replay --traces "$tmp/bad.h5" --json "$j" --md "$tmp/no/out.md"
touch "$tmp/afile"
expect 1 "not a directory" -- "$ap" eval replay --traces "$tmp/bad.h5" --json "$j" --png "$tmp/afile"

# ---- eval tasks ----
expect 0 "tasks" -- "$ap" eval --help
# Every option, method and metric of eval tasks is documented in its --help.
for opt in model predictor quick full tasks-file tasks budget methods max-samples max-new calib \
           kv-mode no-teacher-forced threads json md png quiet help; do
    expect 0 "--$opt" -- "$ap" eval tasks --help
done
for m in oracle streaming h2o snapkv quest last_step last_step_dense attnpred attnpred_nocal \
         score score_rel_full agreement kl same "kept sets"; do
    expect 0 "$m" -- "$ap" eval tasks --help
done
expect 2 "--model and --json are required" -- "$ap" eval tasks --model m.gguf
expect 2 "--model and --json are required" -- "$ap" eval tasks --json "$j"
expect 2 "bad value 'abc' for --budget" -- "$ap" eval tasks --model m.gguf --json "$j" --budget abc
expect 2 "bad value '256,0' for --budget" -- "$ap" eval tasks --model m.gguf --json "$j" --budget 256,0
expect 2 "bad value 'x' for --pred-stride" -- "$ap" eval tasks --model m.gguf --json "$j" --pred-stride x
expect 2 "--budget 64 is below sink + local = 128" -- \
    "$ap" eval tasks --model m.gguf --json "$j" --budget 64,256
expect 2 "unknown method 'bogus'" -- "$ap" eval tasks --model m.gguf --json "$j" --methods quest,bogus
expect 2 "for --kv-mode" -- "$ap" eval tasks --model m.gguf --json "$j" --kv-mode pairs
expect 2 "for --threads" -- "$ap" eval tasks --model m.gguf --json "$j" --threads 0
expect 2 "for --max-new" -- "$ap" eval tasks --model m.gguf --json "$j" --max-new 0
expect 2 "for --max-samples" -- "$ap" eval tasks --model m.gguf --json "$j" --max-samples x
expect 2 "for --device" -- "$ap" eval tasks --model m.gguf --json "$j" --device gpu
expect 2 "--kv-offload needs --device cuda" -- "$ap" eval tasks --model m.gguf --json "$j" --kv-offload
expect 2 "for --prefetch-threads" -- "$ap" eval tasks --model m.gguf --json "$j" --prefetch-threads 0
expect 2 "bad value 'bf16' for --kv-type" -- "$ap" eval tasks --model m.gguf --json "$j" --kv-type bf16
expect 2 "--kv-type f16 needs --device cpu" -- \
    "$ap" eval tasks --model m.gguf --json "$j" --kv-type f16 --device cuda
for opt in device kv-offload prefetch-threads kv-type; do expect 0 "--$opt" -- "$ap" eval tasks --help; done
expect 2 "bad value 'gpu' for --device" -- "$ap" capture --model m.gguf --device gpu
expect 0 "--device" -- "$ap" capture --help
expect 2 "--quick and --full exclude each other" -- \
    "$ap" eval tasks --model m.gguf --json "$j" --quick --full
expect 2 "--tasks-file and --full both choose" -- \
    "$ap" eval tasks --model m.gguf --json "$j" --full --tasks-file t.jsonl
expect 2 "unknown or incomplete option '--frobnicate'" -- "$ap" eval tasks --frobnicate
expect 2 "unexpected argument 'extra'" -- "$ap" eval tasks --model m.gguf --json "$j" extra
expect 1 "--model: $tmp/none.gguf: no such file" -- \
    "$ap" eval tasks --model "$tmp/none.gguf" --json "$j"
touch "$tmp/m.gguf"
expect 1 "--predictor: $tmp/p.safetensors: no such file" -- \
    "$ap" eval tasks --model "$tmp/m.gguf" --predictor "$tmp/p.safetensors" --json "$j"
expect 1 "task file: $tmp/t.jsonl: no such file" -- \
    "$ap" eval tasks --model "$tmp/m.gguf" --tasks-file "$tmp/t.jsonl" --json "$j"
expect 1 "--json" -- "$ap" eval tasks --model "$tmp/m.gguf" --json "$tmp/no/dir/out.json"
expect 1 "--md" -- "$ap" eval tasks --model "$tmp/m.gguf" --json "$j" --md "$tmp/no/out.md"
expect 1 "not a directory" -- "$ap" eval tasks --model "$tmp/m.gguf" --json "$j" --png "$tmp/afile"
# The presets live in the data folder; $ATTNPRED_DATA moves it.
expect 1 "task file: $tmp/nodata/tasks/full.jsonl: no such file" -- \
    env ATTNPRED_DATA="$tmp/nodata" "$ap" eval tasks --model "$tmp/m.gguf" --full --json "$j"
rm -f "$tmp/m.gguf"

# ---- several predictors: --predictor NAME=PATH,... ----
# refuse CODE PATTERN -- command...: as expect, and the run wrote nothing.
refuse() {
    expect "$@"
    if [ -e "$j" ] || [ -e "$tmp/out.md" ] || ls "$tmp"/*.tmp.* >/dev/null 2>&1; then
        shift 3
        echo "FAIL: '$*' left output behind"; fails=$((fails + 1))
        rm -f "$j" "$tmp/out.md" "$tmp"/*.tmp.*
    fi
}
"$fx" trace "$tmp/t.h5" && "$fx" predictor "$tmp/p.st" 16 16 &&
    "$fx" predictor "$tmp/b4.st" 4 16 && "$fx" predictor "$tmp/h32.st" 16 32 &&
    "$fx" model "$tmp/synth.gguf" && "$fx" tasks "$tmp/t.jsonl" 2 6 ||
    { echo "FAIL: ap_fixture could not write the fixtures"; exit 1; }
p="$tmp/p.st"
# The same bad inputs for both commands; names are checked before any file
# is read (the trace and model here exist, so nothing else can fail first).
replay=("$ap" eval replay --traces "$tmp/t.h5" --json "$j" --md "$tmp/out.md" --quiet)
tasks=("$ap" eval tasks --model "$tmp/synth.gguf" --tasks-file "$tmp/t.jsonl" --budget 160
       --json "$j" --md "$tmp/out.md" --quiet)
for run in replay tasks; do
    declare -n cmd=$run
    refuse 2 "--predictor: name 'a' given twice ($p and $p)" -- "${cmd[@]}" --predictor "a=$p,a=$p"
    refuse 2 "--predictor: name 'attnpred2' given twice" -- \
        "${cmd[@]}" --predictor "attnpred2=$p,$p"
    refuse 2 "--predictor: empty name in '=$p'" -- "${cmd[@]}" --predictor "=$p"
    refuse 2 "--predictor: empty path in 'a='" -- "${cmd[@]}" --predictor "a="
    refuse 2 "--predictor: empty path in '$p,,$p'" -- "${cmd[@]}" --predictor "$p,,$p"
    refuse 1 "--predictor: $tmp/none.st: no such file" -- \
        "${cmd[@]}" --predictor "a=$p,b=$tmp/none.st"
    for builtin in oracle streaming h2o snapkv quest last_step last_step_dense full; do
        refuse 2 "--predictor: name '$builtin' is a built-in method's name" -- \
            "${cmd[@]}" --predictor "$builtin=$p"
    done
    refuse 2 "--predictor: name 'a b' may use only letters, digits and _ . + -" -- \
        "${cmd[@]}" --predictor "a b=$p"
    refuse 2 "--predictor: name 'runs/x' may use only letters" -- "${cmd[@]}" --predictor "runs/x=$p"
    refuse 2 "--predictor: name 'x_nocal' ends in _nocal" -- "${cmd[@]}" --predictor "x_nocal=$p"
    refuse 2 "--predictor: 5 predictors given, at most 4" -- \
        "${cmd[@]}" --predictor "a=$p,b=$p,c=$p,d=$p,e=$p"
    unset -n cmd
done
# A predictor made for another block size or history: the message names the
# file and both values.
refuse 1 "$tmp/b4.st: predictor block size 4, but trace $tmp/t.h5 has block size 16" -- \
    "${replay[@]}" --predictor "a=$p,b=$tmp/b4.st"
refuse 1 "$tmp/h32.st: predictor history 32, but trace $tmp/t.h5 has history 16" -- \
    "${replay[@]}" --predictor "$tmp/h32.st"
refuse 1 "$tmp/b4.st: predictor block size 4, but the eval has block size 16" -- \
    "${tasks[@]}" --predictor "a=$p,b=$tmp/b4.st"
# ... checked before the model is read: an empty file is never opened.
touch "$tmp/empty.gguf"
refuse 1 "$tmp/b4.st: predictor block size 4, but the eval has block size 16" -- \
    "$ap" eval tasks --model "$tmp/empty.gguf" --predictor "$tmp/b4.st" --json "$j"
rm -f "$tmp/empty.gguf"
refuse 2 "--methods: unknown method 'c'" -- "${tasks[@]}" --predictor "a=$p,b=$p" --methods a,c
# The same file under two names: two methods, identical numbers. --methods
# attnpred stands for every predictor, a name for one.
same() { # same JSON A B
    local out
    if ! out=$("$fx" same-methods "$@" 2>&1); then
        echo "FAIL: methods $2 and $3 of $1 differ or are missing"; echo "$out"; fails=$((fails + 1))
    fi
}
expect 0 "a.v1_nocal" -- "${replay[@]}" --predictor "a.v1=$p,b+2=$p" --budget 192,256
same "$j" a.v1 b+2
same "$j" a.v1_nocal b+2_nocal
rm -f "$j" "$tmp/out.md"
expect 0 "attnpred2" -- "$ap" eval replay --traces "$tmp/t.h5" --predictor "$p,$p" \
    --methods attnpred,oracle --budget 192 --json "$j"
same "$j" attnpred attnpred2
rm -f "$j"
expect 0 "b_nocal" -- "$ap" eval replay --traces "$tmp/t.h5" --predictor "a=$p,b=$p" \
    --methods b_nocal --budget 192 --json "$j"
if grep -q '"method":[[:space:]]*"a' "$j"; then echo "FAIL: --methods b_nocal ran a"; fails=$((fails + 1)); fi
rm -f "$j"
expect 0 "" -- "${tasks[@]}" --predictor "a=$p,b=$p" --methods attnpred,quest
same "$j" a b
if ! grep -q '"name":[[:space:]]*"b"' "$j"; then echo "FAIL: tasks JSON lacks predictor b"; fails=$((fails + 1)); fi
rm -f "$j" "$tmp/out.md"

if [ -e "$j" ] || ls "$tmp"/*.tmp.* >/dev/null 2>&1; then
    echo "FAIL: a failed run left output behind"; fails=$((fails + 1))
fi
[ -d "$src/eval" ] || { echo "FAIL: source dir $src has no eval/"; fails=$((fails + 1)); }
if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "cli_eval: all checks passed"
