#!/usr/bin/env bash
# What the repository tells a user to open or run must exist for them:
# - no user-facing text (CLI sources, README, docs/ but the status log, the
#   scripts' help) cites method.md, the project's notes outside the
#   repository: it points at the repository's docs instead;
# - every `runs/NAME/FILE` a test names (a skipped test's hint to run the
#   main job) is one the main job writes: NAME a preset of scripts/main.sh
#   (configs/pipeline-NAME.json) and FILE written there as "$run/FILE".
# usage: cli_docs_refs.sh ATTNPRED_BINARY SOURCE_DIR [AP_FIXTURE_BINARY]
set -u
src=${2:?source dir}
fails=0

cd "$src" || exit 1
hits=$(grep -n "method\.md" cli/*.c README.md scripts/*.py scripts/*.sh \
    $(ls docs/*.md | grep -v '^docs/status\.md$') 2>/dev/null)
if [ -n "$hits" ]; then
    echo "FAIL: user-facing text cites method.md (not in the repository):"
    echo "$hits"
    fails=$((fails + 1))
fi

refs=$(grep -ohE 'runs/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+' tests/*.c | sort -u)
for ref in $refs; do
    preset=${ref#runs/}
    preset=${preset%%/*}
    file=${ref##*/}
    if [ ! -f "configs/pipeline-$preset.json" ]; then
        echo "FAIL: tests name $ref, but the main job has no preset '$preset'"
        fails=$((fails + 1))
    elif ! grep -qF "\$run/$file" scripts/main.sh; then
        echo "FAIL: tests name $ref, but scripts/main.sh never writes \$run/$file"
        fails=$((fails + 1))
    fi
done

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "cli_docs_refs: all checks passed"
