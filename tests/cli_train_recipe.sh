#!/usr/bin/env bash
# `attnpred train --recipe`: each recipe sets what docs/predictor.md says
# (checked in the run's config.json), options after it override single
# settings, the default is `fused`, and bad input stops before any write.
# usage: cli_train_recipe.sh ATTNPRED_BINARY SOURCE_DIR AP_FIXTURE_BINARY
set -u
ap=${1:?attnpred binary}
fix=${3:-}
[ -x "$fix" ] || { echo "SKIP: no ap_fixture binary"; exit 77; }
command -v python3 > /dev/null || { echo "SKIP: no python3"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
"$fix" trace "$dir/t.h5" || { echo "FAIL: fixture"; exit 1; }
small=(--traces "$dir/t.h5" --history 16 --epochs 1 --max-train 64 --max-val 64 --val-fraction 0.5 --quiet)
# field=value pairs of config.json
cfg() { python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(" ".join("%s=%s" % (k, json.dumps(c[k], separators=(",", ":"))) for k in sys.argv[2:]))' "$@"; }
keys=(loss rows query_fusion init init_mean_weight input_scale target_scale sparse_budgets budgets)

"$ap" train "${small[@]}" --recipe cnn --out "$dir/cnn" || fail "--recipe cnn failed"
got=$(cfg "$dir/cnn/config.json" "${keys[@]}" lr)
want='loss="rank" rows="sparse" query_fusion=0 init="last-step" init_mean_weight=0.5 input_scale=256 target_scale=64 sparse_budgets=[256,512] budgets=[256,512] lr=0.0005000000237487257'
[ "$got" = "$want" ] || fail "cnn recipe: $got"

"$ap" train "${small[@]}" --recipe paper --out "$dir/paper" || fail "--recipe paper failed"
got=$(cfg "$dir/paper/config.json" loss rows query_fusion init input_scale target_scale budgets)
want='loss="mse" rows="dense" query_fusion=0 init="default" input_scale=1 target_scale=1 budgets=[256,512,1024]'
[ "$got" = "$want" ] || fail "paper recipe: $got"

# later options win, wherever --recipe stands
"$ap" train "${small[@]}" --loss ce --recipe cnn --input-scale 4 --out "$dir/over" || fail "override run failed"
got=$(cfg "$dir/over/config.json" loss input_scale rows)
[ "$got" = 'loss="ce" input_scale=4 rows="sparse"' ] || fail "override: $got"

# the default is fused: this fixture has no query vectors, so it is refused, naming the way out
msg=$("$ap" train "${small[@]}" --out "$dir/fused" 2>&1); rc=$?
[ $rc -ne 0 ] || fail "default recipe on a trace without queries succeeded"
grep -q -- "--recipe cnn" <<<"$msg" || fail "default recipe message: $msg"
[ ! -e "$dir/fused" ] || fail "a refused run left $dir/fused"

msg=$("$ap" train "${small[@]}" --recipe bogus --out "$dir/bogus" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "--recipe bogus exit $rc"
grep -q "fused, cnn or paper" <<<"$msg" || fail "--recipe bogus message: $msg"
[ ! -e "$dir/bogus" ] || fail "--recipe bogus left a run dir"

msg=$("$ap" train "${small[@]}" --recipe fused --loss mse --out "$dir/mse" 2>&1); rc=$?
[ $rc -ne 0 ] || fail "fused + mse accepted"
grep -q -- "--no-query-fusion" <<<"$msg" || fail "fused + mse message: $msg"

if [ $fails -gt 0 ]; then echo "cli_train_recipe: $fails failures"; exit 1; fi
echo "cli_train_recipe: all checks passed"
