#!/usr/bin/env bash
# The task files in data/tasks/ are what scripts/build_tasks.py makes from
# configs/tasks.json (the 8K suite) and configs/tasks-long.json (the 32K
# suite), and the presets keep their promised sizes:
# - quick.jsonl and standard.jsonl are, byte for byte, their selections of
#   full.jsonl, long-quick.jsonl of long.jsonl (build_tasks.py
#   --check-presets; needs no package files);
# - each preset has the samples per task and bucket its config names, the
#   standard preset at least 50 (one sample moves its mean by 2 points at
#   most), every task in it, and quick's samples among them;
# - every sample counted by a tokenizer sits in its bucket with room for its
#   max_new_tokens in the context; the long suite is plain text ("chat":
#   false, a blank line before a non-empty answer prefix), counted by the
#   tokenizer its config names, and long-quick has at least 2 samples in the
#   longest bucket;
# - manifest.json / manifest-long.json record each file's current size and
#   sha256, and the config's;
# - data/prompts/long.jsonl (the long capture prompts) is plain text and reads
#   no package of the predictor's training prompts (predictor.manifest.json);
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
bad = []
def check_suite(config):
    cfg = json.loads(Path(config).read_text())
    tasks = [t["name"] for t in cfg["tasks"]]
    buckets = [b["name"] for b in cfg["buckets"]]
    bounds = {b["name"]: (b["lo"], b["hi"]) for b in cfg["buckets"]}
    per = cfg["presets"]["full"]["per_bucket"]
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
        label = Path(cfg["presets"][name]["file"]).name
        recs = records(name)
        ids[name] = [r["id"] for r in recs]
        got = Counter((r["task"], r["bucket"]) for r in recs)
        want = want_counts(name)
        diff = ["%s %s: %d, config %d" % (t, b, got[(t, b)], want[(t, b)]) for t in tasks for b in buckets
                if got[(t, b)] != want[(t, b)]]
        if diff:
            bad.append("%s: samples per task and bucket differ from %s: %s" % (label, config, "; ".join(diff)))
        if len(set(ids[name])) != len(ids[name]):
            bad.append("%s: duplicate ids" % label)
        spec = cfg.get("tokenizer")
        for r in recs:
            lo, hi = bounds[r["bucket"]]
            if r["n_tokens_by"] != "estimate" and (not lo <= r["n_tokens"] < hi or
                                                 r["n_tokens"] + r["max_new_tokens"] > cfg["context_limit"]):
                bad.append("%s: %s has %d tokens, outside %s or over %d with its %d new tokens" % (
                    label, r["id"], r["n_tokens"], r["bucket"], cfg["context_limit"], r["max_new_tokens"]))
            if spec and r["n_tokens_by"] != spec["name"]:
                bad.append("%s: %s counted by %r, the config names %r" % (label, r["id"], r["n_tokens_by"], spec["name"]))
            if spec and (r["chat"] or (r["answer_prefix"] and not r["prompt"].endswith("\n\n"))):
                bad.append("%s: %s is not plain text ending in a blank line before its answer prefix" % (label, r["id"]))
        ntok = [r["n_tokens"] for r in recs]
        print("%-17s %3d samples, %d..%d tokens: %s" % (label, len(recs), min(ntok), max(ntok), ", ".join(
            "%s %s" % (t, "/".join(str(got[(t, b)]) for b in buckets)) for t in tasks)))
    if "standard" in cfg["presets"]:
        std = Counter(r["task"] for r in records("standard"))
        if sum(std.values()) < 50:
            bad.append("standard: %d samples, fewer than 50" % sum(std.values()))
        if set(std) != set(tasks):
            bad.append("standard: tasks %s, the suite has %s" % (sorted(std), tasks))
        if not set(ids["quick"]) <= set(ids["standard"]):
            bad.append("standard lacks quick's %s" % sorted(set(ids["quick"]) - set(ids["standard"])))
    if "tokenizer" in cfg:  # the long suite: the quick preset reaches the longest bucket
        n_last = sum(1 for r in records("quick") if r["bucket"] == buckets[-1])
        if n_last < 2:
            bad.append("%s: %d samples in %s, fewer than 2" % (cfg["presets"]["quick"]["file"], n_last, buckets[-1]))
    mname = Path(cfg.get("manifest", "data/tasks/manifest.json"))
    manifest = json.loads(mname.read_text())
    if manifest["config_sha256"] != hashlib.sha256(Path(config).read_bytes()).hexdigest():
        bad.append("%s: %s changed since the last build (scripts/build_tasks.py)" % (mname.name, config))
    man = manifest["outputs"]
    for name, pre in cfg["presets"].items():
        f = Path(pre["file"]); blob = f.read_bytes()
        m = man.get(f.name)
        if not m or m["sha256"] != hashlib.sha256(blob).hexdigest() or m["bytes"] != len(blob) \
                or m["records"] != blob.count(b"\n"):
            bad.append("%s: %s is not recorded as it is now" % (mname.name, f.name))
for config in ("configs/tasks.json", "configs/tasks-long.json"):
    check_suite(config)
# The long capture prompts: plain text, unique ids, no training-set package.
train = {p for o in json.loads(Path("data/prompts/predictor.manifest.json").read_text())["origins"].values()
         for p in o["packages"]}
prompts = [json.loads(ln) for ln in Path("data/prompts/long.jsonl").read_text(encoding="utf-8").splitlines()]
pkgs = {piece.split(":", 1)[0].strip() for p in prompts for piece in p["source"].split(" ; ") if ":" in piece}
if any(p["chat"] for p in prompts) or len({p["id"] for p in prompts}) != len(prompts):
    bad.append("data/prompts/long.jsonl: a chat prompt or a duplicate id")
if pkgs & train:
    bad.append("data/prompts/long.jsonl reads training-set packages: %s" % sorted(pkgs & train))
print("long.jsonl (prompts) %d prompts from %s" % (len(prompts), ", ".join(sorted(pkgs))))
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
