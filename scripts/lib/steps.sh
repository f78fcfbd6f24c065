# Step bookkeeping for the main job (sourced by scripts/main.sh).
#
# Each step writes its output plus OUTPUT.digest: a sha256 over the step's
# name, its options and the digests of its inputs (committed input files by
# content, produced inputs by their own .digest). A step is skipped only when
# its output exists and its recorded digest equals the one it would have now;
# otherwise the stale output is removed and the step runs again. An
# interrupted step leaves OUTPUT.digest.partial, so a resume continues only
# work started with the same inputs.

# step_digest WORD...: sha256 of the words, one per line.
step_digest() { printf '%s\n' "$@" | sha256sum | cut -c1-64; }

# file_digest PATH: the content's sha256, or the recorded digest of a produced
# file (PATH.digest) when there is one (a trace is not re-hashed every run).
file_digest() {
  if [ -f "$1.digest" ]; then cat "$1.digest"; else sha256sum "$1" | cut -c1-64; fi
}

# step_fresh OUTPUT DIGEST: 0 when OUTPUT exists and was made from DIGEST
# (then a .digest.partial left by a kill inside step_done goes).
step_fresh() {
  [ -e "$1" ] && [ -f "$1.digest" ] && [ "$(cat "$1.digest")" = "$2" ] && rm -f "$1.digest.partial"
}

# step_begin OUTPUT DIGEST [STATE...]: before running a step. Returns 0 when an
# interrupted run of the same inputs can be resumed (its .digest.partial
# matches), 1 when the step starts over: the old digest is removed here, and so
# are the STATE files (what the step resumes from: a capture's .partial, a
# run's last.safetensors), before the new .digest.partial is written. Resumable
# state not named here is the caller's to remove, and a kill before that leaves
# it labelled with the new digest: the next run would resume other inputs' work.
step_begin() {
  rm -f "$1.digest"
  if [ -f "$1.digest.partial" ] && [ "$(cat "$1.digest.partial")" = "$2" ]; then return 0; fi
  if [ $# -gt 2 ]; then rm -f -- "${@:3}"; fi
  printf '%s\n' "$2" > "$1.digest.partial"
  return 1
}

# step_done OUTPUT DIGEST: after the step wrote OUTPUT (the digest goes in
# whole, under a temporary name: a kill never leaves a cut one).
step_done() {
  printf '%s\n' "$2" > "$1.digest.tmp" && mv -f "$1.digest.tmp" "$1.digest"
  rm -f "$1.digest.partial"
}
