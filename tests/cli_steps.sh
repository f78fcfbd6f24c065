#!/usr/bin/env bash
# The main job's step bookkeeping (scripts/lib/steps.sh): a step whose inputs
# or options changed runs again, an unchanged one is skipped, an interrupted
# one resumes only with the same inputs. (The main job once kept a step's
# old output after its config changed.)
# usage: cli_steps.sh ATTNPRED_BINARY SOURCE_DIR [AP_FIXTURE_BINARY]
set -u
src=${2:?source dir}
. "$src/scripts/lib/steps.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0
check() { if eval "$2"; then :; else echo "FAIL: $1"; fails=$((fails + 1)); fi; }

runs=0
# a fake step: output = its options, run counted
step() {
  local out="$dir/out.txt" d
  d=$(step_digest fake "$1" "$(file_digest "$dir/input.txt")")
  if step_fresh "$out" "$d"; then return 0; fi
  step_begin "$out" "$d" && resumed=1 || resumed=0
  rm -f "$out"
  runs=$((runs + 1))
  echo "$1" > "$out"
  step_done "$out" "$d"
}
echo one > "$dir/input.txt"
step A; check "first run runs" '[ $runs -eq 1 ]'
step A; check "same inputs skip" '[ $runs -eq 1 ]'
step B; check "changed option reruns" '[ $runs -eq 2 ] && [ "$(cat $dir/out.txt)" = B ]'
echo two > "$dir/input.txt"
step B; check "changed input file reruns" '[ $runs -eq 3 ]'
step B; check "then skips" '[ $runs -eq 3 ]'
# an output without a digest (made by an older main job) is not trusted
rm -f "$dir/out.txt.digest"
step B; check "no digest reruns" '[ $runs -eq 4 ]'
# interrupted: .digest.partial of the same inputs resumes, of others not
d=$(step_digest fake C "$(file_digest "$dir/input.txt")")
rm -f "$dir/out.txt" "$dir/out.txt.digest"
printf '%s\n' "$d" > "$dir/out.txt.digest.partial"
step_begin "$dir/out.txt" "$d"; check "same-input partial resumes" '[ $? -eq 0 ]'
printf '%s\n' "$d" > "$dir/out.txt.digest.partial"
step_begin "$dir/out.txt" "$(step_digest other)"; check "other-input partial starts over" '[ $? -eq 1 ]'
# a produced input counts by its recorded digest
echo x > "$dir/trace.h5"; echo abc > "$dir/trace.h5.digest"
check "produced file by digest" '[ "$(file_digest $dir/trace.h5)" = abc ]'

[ $fails -eq 0 ] && echo "cli_steps: all checks passed"
exit $fails
