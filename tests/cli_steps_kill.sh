#!/usr/bin/env bash
# The main job's step bookkeeping (scripts/lib/steps.sh) under random SIGKILLs.
# A three-step fake pipeline built the way scripts/main.sh builds its steps
# (step_digest / step_fresh / step_begin / step_done, outputs written slowly
# under a temporary name and renamed):
#   gen     resumable, like capture: lines appended to gen.txt.partial, which
#           a rerun of the same inputs continues; renamed to gen.txt at the end
#   train   resumable, like train: a checkpoint run/ckpt.txt per "epoch"
#           (tmp + rename), resumed from when the inputs are the same; a fresh
#           start leaves an older checkpoint in place until its first epoch
#           overwrites it (as `attnpred train --force` does); then "exports"
#           model.txt
#   report  not resumable, like replay/tasks: report.txt from both
# Each seeded iteration runs the pipeline with option A or B, SIGKILLs its
# whole process group after a seeded random delay (1 or 2 times), checks what
# the kill left, then reruns it to the end with A or B and compares the whole
# directory with an uninterrupted run of that option. After every kill:
#   - every output under its final name is complete (equals an uninterrupted
#     run's, of A or of B), and so is every .digest and the checkpoint;
#   - an output whose .digest says "fresh" for an option is that option's;
#   - resumable state (gen.txt.partial, run/ckpt.txt) is that of the inputs
#     its .digest.partial names (else a rerun would resume other inputs' work
#     and mark the result fresh).
# usage: cli_steps_kill.sh ATTNPRED_BINARY SOURCE_DIR [AP_FIXTURE_BINARY]
# env: STEPS_KILL_SEED (1), STEPS_KILL_ITERS (50); STEPS_KILL_MAINSH=1 calls
# step_begin without the state to drop, as scripts/main.sh's capture and train
# steps do when this was written: that fails (a stale checkpoint resumed under
# the new digest, its model marked fresh).
set -u
src=${2:?source dir}
steps="$src/scripts/lib/steps.sh"
seed=${STEPS_KILL_SEED:-1}
iters=${STEPS_KILL_ITERS:-50}
legacy=${STEPS_KILL_MAINSH:-0}
command -v sha256sum > /dev/null || { echo "skip: no sha256sum"; exit 77; }
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then echo "skip: bash < 5.1"; exit 77; fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0 it=-
fail() { echo "FAIL (seed $seed, iteration $it): $*"; fails=$((fails + 1)); }

# Without kills: a start-over drops the named state before it records the new
# digest; a resume keeps it.
. "$steps"
t="$dir/plain"
mkdir -p "$t"
echo old > "$t/state"
echo old-digest > "$t/out.digest.partial"
step_begin "$t/out" new-digest "$t/state"
[ $? -eq 1 ] && ! [ -e "$t/state" ] && [ "$(cat "$t/out.digest.partial")" = new-digest ] ||
  fail "a start-over keeps the old state or does not record the new digest"
echo new > "$t/state"
step_begin "$t/out" new-digest "$t/state"
[ $? -eq 0 ] && [ "$(cat "$t/state")" = new ] || fail "a resume of the same digest drops its state"

cat > "$dir/pipeline.sh" << 'EOF'
# pipeline.sh STEPS_SH WORKDIR OPT LEGACY [HIST]
set -euo pipefail
. "$1"
cd "$2"
opt=$3 legacy=$4 hist=${5:-}
nap() { sleep 0.003; }
begin() { if [ "$legacy" = 1 ]; then step_begin "$1" "$2"; else step_begin "$@"; fi; }

d1=$(step_digest gen "$opt" "$(file_digest input.txt)")
if ! step_fresh gen.txt "$d1"; then
  if begin gen.txt "$d1" gen.txt.partial && [ -f gen.txt.partial ]; then
    n=$(wc -l < gen.txt.partial) # drop a line cut by the kill
    head -n "$n" gen.txt.partial > gen.txt.fix
    mv gen.txt.fix gen.txt.partial
  else
    rm -f gen.txt gen.txt.partial gen.txt.fix
    : > gen.txt.partial
  fi
  i=$(wc -l < gen.txt.partial)
  while [ "$i" -lt 8 ]; do
    l="$opt:$i:$(step_digest line "$opt" "$(cat input.txt)" "$i")"
    printf '%s' "${l:0:20}" >> gen.txt.partial
    nap
    printf '%s\n' "${l:20}" >> gen.txt.partial
    i=$((i + 1))
  done
  mv gen.txt.partial gen.txt
  step_done gen.txt "$d1"
fi

d2=$(step_digest train "$d1" "$opt")
if ! step_fresh model.txt "$d2"; then
  mkdir -p run
  if begin model.txt "$d2" run/ckpt.txt && [ -f run/ckpt.txt ]; then
    read -r e h < run/ckpt.txt
  else
    e=0 h=$(step_digest init "$opt" "$(file_digest gen.txt)")
  fi
  while [ "$e" -lt 4 ]; do
    e=$((e + 1)) h=$(step_digest "$h" "$opt" "$e")
    printf '%s ' "$e" > run/ckpt.txt.tmp
    nap
    printf '%s\n' "$h" >> run/ckpt.txt.tmp
    mv run/ckpt.txt.tmp run/ckpt.txt
    if [ -n "$hist" ]; then echo "$e $h" >> "$hist"; fi
  done
  printf 'model %s\n' "$h" > model.txt.tmp
  mv model.txt.tmp model.txt
  step_done model.txt "$d2"
fi

d3=$(step_digest report "$d1" "$d2")
if ! step_fresh report.txt "$d3"; then
  begin report.txt "$d3" || true
  : > report.txt.tmp
  while IFS= read -r l; do
    printf '%s %s\n' "$l" "$(cat model.txt)" >> report.txt.tmp
    nap
  done < gen.txt
  mv report.txt.tmp report.txt
  step_done report.txt "$d3"
fi
EOF

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Uninterrupted reference runs; T = the slower one's time from scratch (ms).
T=0
for o in A B; do
  mkdir -p "$dir/ref_$o"
  echo "the input" > "$dir/ref_$o/input.txt"
  t0=$(now_ms)
  bash "$dir/pipeline.sh" "$steps" "$dir/ref_$o" "$o" "$legacy" "$dir/hist_$o" ||
    { echo "FAIL: reference run $o"; exit 1; }
  t=$(($(now_ms) - t0))
  [ "$t" -gt "$T" ] && T=$t
done
ref_digest() { cat "$dir/ref_$1/$2.digest"; }
[ "$(ref_digest A gen.txt)" != "$(ref_digest B gen.txt)" ] || { echo "FAIL: A and B alike"; exit 1; }
d1A=$(ref_digest A gen.txt) d1B=$(ref_digest B gen.txt)
d2A=$(ref_digest A model.txt) d2B=$(ref_digest B model.txt)

# in_hist FILE HIST...: FILE is exactly one line that one of the HISTs holds.
in_hist() {
  local l
  l=$(head -n 1 "$1")
  [ -n "$l" ] && cmp -s "$1" <(printf '%s\n' "$l") && grep -qxF -- "$l" "${@:2}"
}
# The state a kill left in $w must satisfy the invariants above.
check_state() {
  local w=$1 o x d n
  for o in gen.txt model.txt report.txt; do
    if [ -e "$w/$o" ] && ! cmp -s "$w/$o" "$dir/ref_A/$o" && ! cmp -s "$w/$o" "$dir/ref_B/$o"; then
      fail "$o under its final name but not a complete output"
    fi
    [ -e "$w/$o.digest" ] || continue
    d=$(cat "$w/$o.digest")
    for x in A B; do
      if [ "$d" = "$(ref_digest $x $o)" ]; then
        cmp -s "$w/$o" "$dir/ref_$x/$o" || fail "$o.digest says fresh for $x but $o is not $x's"
        continue 2
      fi
    done
    fail "$o.digest is no complete digest: '$d'"
  done
  if [ -e "$w/run/ckpt.txt" ] && ! in_hist "$w/run/ckpt.txt" "$dir/hist_A" "$dir/hist_B"; then
    fail "run/ckpt.txt is not a complete checkpoint: '$(cat "$w/run/ckpt.txt")'"
  fi
  if [ -f "$w/gen.txt.partial" ] && [ -f "$w/gen.txt.digest.partial" ]; then
    d=$(cat "$w/gen.txt.digest.partial")
    n=$(wc -l < "$w/gen.txt.partial")
    for x in A B; do
      if [ "$d" = "$(eval echo "\$d1$x")" ] &&
        ! cmp -s <(head -n "$n" "$w/gen.txt.partial") <(head -n "$n" "$dir/ref_$x/gen.txt"); then
        fail "gen.txt.partial is labelled $x (.digest.partial) but holds other lines"
      fi
    done
  fi
  if [ -f "$w/run/ckpt.txt" ] && [ -f "$w/model.txt.digest.partial" ]; then
    d=$(cat "$w/model.txt.digest.partial")
    for x in A B; do
      if [ "$d" = "$(eval echo "\$d2$x")" ] && ! in_hist "$w/run/ckpt.txt" "$dir/hist_$x"; then
        fail "run/ckpt.txt is labelled $x (.digest.partial) but is another run's checkpoint"
      fi
    done
  fi
}

# Where the kill landed (for the summary): the first step not fresh for OPT.
declare -A hits=()
classify() {
  local w=$1 opt=$2 tag
  if [ "$(cat "$w/gen.txt.digest" 2> /dev/null)" != "$(ref_digest "$opt" gen.txt)" ]; then
    if [ -e "$w/gen.txt.digest.tmp" ]; then tag=gen:in-step_done
    elif cmp -s "$w/gen.txt" "$dir/ref_$opt/gen.txt"; then tag=gen:renamed-before-digest
    elif [ -s "$w/gen.txt.partial" ]; then
      if [ "$(tail -c1 "$w/gen.txt.partial" | od -An -c | tr -d ' ')" = '\n' ]; then
        tag=gen:between-lines
      else tag=gen:mid-line; fi
    else tag=gen:starting; fi
  elif [ "$(cat "$w/model.txt.digest" 2> /dev/null)" != "$(ref_digest "$opt" model.txt)" ]; then
    if [ -e "$w/model.txt.digest.tmp" ]; then tag=train:in-step_done
    elif cmp -s "$w/model.txt" "$dir/ref_$opt/model.txt"; then tag=train:renamed-before-digest
    elif [ -e "$w/run/ckpt.txt.tmp" ]; then tag=train:writing-checkpoint
    elif [ -e "$w/model.txt.tmp" ]; then tag=train:writing-model
    else tag=train:between-epochs; fi
  elif [ "$(cat "$w/report.txt.digest" 2> /dev/null)" != "$(ref_digest "$opt" report.txt)" ]; then
    if [ -e "$w/report.txt.digest.tmp" ]; then tag=report:in-step_done
    elif cmp -s "$w/report.txt" "$dir/ref_$opt/report.txt"; then tag=report:renamed-before-digest
    elif [ -e "$w/report.txt.tmp" ]; then tag=report:writing
    else tag=report:starting; fi
  else tag=all-fresh; fi
  hits[$tag]=$((${hits[$tag]:-0} + 1))
}

# kill_run OPT: run the pipeline with OPT, SIGKILL its process group (every
# child too: sleep, mv, ...) after a seeded random delay within a run's time.
kill_run() {
  local opt=$1 ms=$((RANDOM % (T * 9 / 10 + 1))) pid sp done_pid rc
  set -m # the pipeline gets its own process group
  bash "$dir/pipeline.sh" "$steps" "$w" "$opt" "$legacy" &
  pid=$!
  set +m
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))" &
  sp=$!
  wait -n -p done_pid "$pid" "$sp"
  rc=$?
  if [ "$done_pid" = "$sp" ]; then
    kill -KILL -- "-$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    rc=$?
  else
    kill "$sp" 2> /dev/null
    wait "$sp" 2> /dev/null
  fi
  if [ "$rc" -eq 137 ]; then
    kills=$((kills + 1))
    classify "$w" "$opt"
  elif [ "$rc" -eq 0 ]; then
    hits[finished-before-kill]=$((${hits[finished-before-kill]:-0} + 1))
  else
    fail "the pipeline failed on its own (exit $rc)"
  fi
  check_state "$w"
}

RANDOM=$seed
w="$dir/work"
mkdir -p "$w"
echo "the input" > "$w/input.txt"
kills=0 cur=B
t_start=$(now_ms)
for ((it = 0; it < iters || (kills < 50 && it < 3 * iters); it++)); do
  # Kill a run of the other option (work to do from the first step on); then,
  # half the time, kill a second run of either (resuming or starting over);
  # then finish with either.
  kill_run "$([ "$cur" = A ] && echo B || echo A)"
  if [ $((RANDOM % 2)) -eq 0 ]; then kill_run "$([ $((RANDOM % 2)) -eq 0 ] && echo A || echo B)"; fi
  cur=$([ $((RANDOM % 2)) -eq 0 ] && echo A || echo B)
  bash "$dir/pipeline.sh" "$steps" "$w" "$cur" "$legacy" || fail "rerun with $cur failed"
  diff -r "$w" "$dir/ref_$cur" > /dev/null ||
    fail "after the rerun with $cur the directory differs from an uninterrupted run: $(diff -rq "$w" "$dir/ref_$cur" | tr '\n' ';')"
  [ "$fails" -gt 0 ] && break
done

echo "cli_steps_kill: seed $seed, $it iterations, $kills kills in $(($(now_ms) - t_start)) ms (run $T ms); where they landed:"
for t in $(printf '%s\n' "${!hits[@]}" | sort); do printf '  %-28s %d\n' "$t" "${hits[$t]}"; done
[ "$kills" -ge 50 ] || [ "$fails" -gt 0 ] || [ "$iters" -lt 50 ] || fail "only $kills kills landed"
[ "$fails" -eq 0 ] && echo "cli_steps_kill: all checks passed"
[ "$fails" -eq 0 ]
