#!/usr/bin/env bash
# Every predictor shipped in data/predictors/ loads (`attnpred inspect
# --predictor`), matches its JSON sidecar (channels, history, parameters,
# query fusion), is listed in data/predictors/README.md, and leans on the
# newest history row (a spike there outweighs one in the interior: what
# training from the last-step initialisation keeps).
# usage: cli_shipped_predictors.sh ATTNPRED_BINARY SOURCE_DIR
set -u
ap=${1:?attnpred binary}
src=${2:?source dir}
command -v python3 > /dev/null || { echo "SKIP: no python3"; exit 77; }
fails=0
n=0
for p in "$src"/data/predictors/*.safetensors; do
  [ -f "$p" ] || continue
  n=$((n + 1))
  base=$(basename "$p" .safetensors)
  out=$("$ap" inspect --predictor "$p" --json) || { echo "FAIL: $base does not load"; fails=$((fails + 1)); continue; }
  grep -q "\`$base.safetensors\`" "$src/data/predictors/README.md" || { echo "FAIL: $base not in data/predictors/README.md"; fails=$((fails + 1)); }
  msg=$(printf '%s' "$out" | python3 -c '
import json, sys
got = json.load(sys.stdin)
side = json.load(open(sys.argv[1]))
bad = []
for k, g in (("c1", "c1"), ("c2", "c2"), ("history", "history"), ("param_count", "params_per_model")):
    if side.get(k) != got.get(g):
        bad.append("%s: sidecar %s, file %s" % (k, side.get(k), got.get(g)))
if side.get("query_fusion") != 1:
    bad.append("not a query-fusion predictor")
for m in got["models"]:
    if not m["newest_over_interior"] > 10:
        bad.append("model %d: newest/interior %.2f" % (m["model"], m["newest_over_interior"]))
print("; ".join(bad))' "${p%.safetensors}.json")
  [ -z "$msg" ] || { echo "FAIL: $base: $msg"; fails=$((fails + 1)); }
done
[ "$n" -ge 2 ] || { echo "FAIL: expected the shipped predictors, found $n"; fails=$((fails + 1)); }
[ "$fails" -eq 0 ] && echo "ok: $n shipped predictors"
exit $((fails > 0))
