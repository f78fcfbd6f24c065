#!/usr/bin/env bash
# The task files in data/tasks/ are what scripts/build_tasks.py makes from
# configs/tasks.json, and the presets keep their promised sizes:
# - quick.jsonl and standard.jsonl are, byte for byte, their selections of
#   full.jsonl (build_tasks.py --check-presets; needs no package files);
# - each preset has the samples per task and bucket its config names, the
#   standard preset at least 50 (one sample moves its mean by 2 points at
#   most), every task in it, and quick's samples among them;
# - manifest.json records each file's current size and sha256, and the
#   config's;
# - where the Debian source files are there (.deps/debroot, or installed), a
#   full rebuild matches every file (build_tasks.py --check; n_tokens too
#   when the tokenizer's Python packages are importable), else that part is
#   reported as skipped.
# usage: cli_task_files.sh ATTNPRED_BINARY SOURCE_DIR [AP_FIXTURE_BINARY]
set -u
src=${2:?source dir}
cd "$src" || exit 1
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

if out=$(python3 scripts/build_tasks.py --check-presets 2>&1); then echo "$out"; else fail "$out"; fi

out=$(python3 - <<'PY' 2>&1
import hashlib, json
from collections import Counter
from pathlib import Path
cfg = json.loads(Path("configs/tasks.json").read_text())
tasks = [t["name"] for t in cfg["tasks"]]
buckets = [b["name"] for b in cfg["buckets"]]
per = cfg["presets"]["full"]["per_bucket"]
bad = []
def records(name):
    return [json.loads(ln) for ln in Path(cfg["presets"][name]["file"]).read_text(encoding="utf-8").splitlines()]
def want_counts(name):
    pre = cfg["presets"][name]
    if name == "full":
        return Counter({(t, b): per for t in tasks for b in buckets})
    if "select" in pre:
        return Counter((t, b) for t, b, _ in pre["select"])
    return Counter({(t, b): len(ks) for t, cells in pre["samples"].items() for b, ks in cells.items() if ks})
ids = {}
for name in cfg["presets"]:
    recs = records(name)
    ids[name] = [r["id"] for r in recs]
    got = Counter((r["task"], r["bucket"]) for r in recs)
    want = want_counts(name)
    diff = ["%s %s: %d, config %d" % (t, b, got[(t, b)], want[(t, b)]) for t in tasks for b in buckets
            if got[(t, b)] != want[(t, b)]]
    if diff:
        bad.append("%s: samples per task and bucket differ from configs/tasks.json: %s" % (name, "; ".join(diff)))
    if len(set(ids[name])) != len(ids[name]):
        bad.append("%s: duplicate ids" % name)
    print("%-8s %3d samples: %s" % (name, len(recs), ", ".join(
        "%s %s" % (t, "/".join(str(got[(t, b)]) for b in buckets)) for t in tasks)))
std = Counter(r["task"] for r in records("standard"))
if sum(std.values()) < 50:
    bad.append("standard: %d samples, fewer than 50" % sum(std.values()))
if set(std) != set(tasks):
    bad.append("standard: tasks %s, the suite has %s" % (sorted(std), tasks))
if not set(ids["quick"]) <= set(ids["standard"]):
    bad.append("standard lacks quick's %s" % sorted(set(ids["quick"]) - set(ids["standard"])))
manifest = json.loads(Path("data/tasks/manifest.json").read_text())
if manifest["config_sha256"] != hashlib.sha256(Path("configs/tasks.json").read_bytes()).hexdigest():
    bad.append("manifest.json: configs/tasks.json changed since the last build (scripts/build_tasks.py)")
man = manifest["outputs"]
for name, pre in cfg["presets"].items():
    f = Path(pre["file"]); blob = f.read_bytes()
    m = man.get(f.name)
    if not m or m["sha256"] != hashlib.sha256(blob).hexdigest() or m["bytes"] != len(blob) \
            or m["records"] != blob.count(b"\n"):
        bad.append("manifest.json: %s is not recorded as it is now" % f.name)
for b in bad:
    print("FAIL: " + b)
raise SystemExit(1 if bad else 0)
PY
) || fails=$((fails + 1))
echo "$out"

# The full rebuild needs the Debian packages' files (build_tasks.py --fetch).
out=$(python3 scripts/build_tasks.py --check 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
    echo "$out"
elif grep -q "source files are missing" <<<"$out"; then
    echo "cli_task_files: full rebuild skipped (no package files; python3 scripts/build_tasks.py --fetch)"
else
    fail "build_tasks.py --check: $out"
fi

[ $fails -eq 0 ] || { echo "cli_task_files: $fails check(s) failed"; exit 1; }
echo "cli_task_files: all checks passed"
