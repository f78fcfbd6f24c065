"""Access to offline source material in Debian packages, for scripts/build_tasks.py.

The builders of attnpred's data sets read text and code that named Debian
bookworm packages install, either on the system (/) or extracted without
installing into .deps/debroot (apt-get download + dpkg-deb -x). This module is
the shared layer: it finds a package file under those roots, records the sha256
of every file read (so a build can say which input changed), reports package
versions, and extracts missing packages on request. The format readers that
scripts/build_prompts.py already has (R lazy-load data, HTML to text, blank-line
paragraphs, sentence ends) are reused from it rather than written twice.

Nothing here prints or exits; errors are SourceError with the file and the
package to install.
"""
import gzip
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEB_ROOT = REPO / ".deps" / "debroot"
DEB_CACHE = REPO / ".deps" / "debs"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_prompts as _bp  # noqa: E402  (reused readers; see the module docstring)

# Re-exported readers (their behaviour is part of the built files' bytes: a
# change there shows up in `build_tasks.py --check`).
read_rdata_object = _bp.read_rdata_object
html_to_text = _bp.html_to_text
paragraphs = _bp.paragraphs
sentence_ends = _bp.sentence_ends
CHAT_SYSTEM = _bp.CHAT_SYSTEM
chat_wrap = _bp.chat_wrap


class SourceError(Exception):
    pass


class Doc:
    """Decoded text of one package file, with the reference used in "source" fields."""

    def __init__(self, text, ref):
        self.text, self.ref = text, ref

    def find(self, anchor, start=0):
        i = self.text.find(anchor, start)
        if i < 0:
            raise SourceError("%s: anchor %r not found (the package's text changed?)" % (self.ref, anchor))
        return i

    def source(self, start, end):
        return "%s#%d-%d" % (self.ref, start, end)


class Sources:
    """Package files under a list of roots. `files` is [(package, absolute path)]:
    every file the caller may read, so that a missing package is reported up front
    for all files at once."""

    def __init__(self, roots, files):
        self.roots = [Path(r) for r in roots]
        self.files = list(files)
        self.allowed = set(self.files)
        self.used = {}  # "pkg:path" -> sha256

    def locate(self, path):
        for root in self.roots:
            p = root / path.lstrip("/")
            if p.is_file():
                return p
        return None

    def missing_packages(self):
        return sorted({pkg for pkg, path in self.files if self.locate(path) is None})

    def read_bytes(self, pkg, path):
        if (pkg, path) not in self.allowed:
            raise SourceError("internal: %s:%s is not in the declared file list" % (pkg, path))
        p = self.locate(path)
        if p is None:
            raise SourceError("missing %s: it comes from the Debian package '%s' (apt-get install -y %s, "
                              "or --fetch to extract it into .deps/debroot)" % (path, pkg, pkg))
        data = p.read_bytes()
        self.used["%s:%s" % (pkg, path)] = hashlib.sha256(data).hexdigest()
        return data

    def text(self, pkg, path):
        data = self.read_bytes(pkg, path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        s = data.decode("utf-8").replace("\r\n", "\n").lstrip("\ufeff")
        return Doc(s, "%s:%s" % (pkg, path))

    def rdata(self, pkg, base, name):
        """A character vector of an R lazy-load database (base.rdx + base.rdb), lines joined by LF."""
        rdx = self.read_bytes(pkg, base + ".rdx")
        rdb = self.read_bytes(pkg, base + ".rdb")
        try:
            vec = read_rdata_object(rdx, rdb, name, base)
        except _bp.BuildError as e:
            raise SourceError(str(e))
        s = "\n".join(vec).replace("\r\n", "\n").lstrip("\ufeff")
        return Doc(s, "%s:%s.rdb[%s]" % (pkg, base, name))


def package_version(pkg, roots):
    """Installed version (dpkg) when / is a root, else that of a fetched .deb; '' if unknown."""
    if Path("/") in [Path(r) for r in roots]:
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", pkg],
                                 capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.startswith("install ok installed"):
                return out.stdout.split("\t", 1)[1]
        except OSError:
            pass
    if DEB_CACHE.is_dir():
        for deb in sorted(DEB_CACHE.glob(pkg + "_*.deb")):
            return deb.name.split("_")[1].replace("%3a", ":")
    return ""


def fetch_packages(pkgs, log=None):
    """apt-get download + dpkg-deb -x into .deps/debroot (no install, no dependencies)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceError("--fetch needs %s (a Debian system)" % tool)
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    DEB_ROOT.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        debs = sorted(DEB_CACHE.glob(pkg + "_*.deb"))
        if not debs:
            if log:
                log("fetching Debian package %s" % pkg)
            r = subprocess.run(["apt-get", "download", pkg], cwd=DEB_CACHE, check=False)
            debs = sorted(DEB_CACHE.glob(pkg + "_*.deb"))
            if r.returncode != 0 or not debs:
                raise SourceError("apt-get download %s failed (run `apt-get update` first?)" % pkg)
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(DEB_ROOT)], check=True)


class Rng:
    """Deterministic random numbers from sha256 in counter mode: the built files
    must not depend on the Python version's `random` algorithms."""

    def __init__(self, *key):
        self.key = "/".join(str(k) for k in key).encode()
        self.n = 0

    def u64(self):
        self.n += 1
        return int.from_bytes(hashlib.sha256(self.key + b"#%d" % self.n).digest()[:8], "big")

    def below(self, n):
        """Uniform in [0, n) (rejection sampling, no modulo bias)."""
        if n <= 0:
            raise ValueError("below(%d)" % n)
        limit = (1 << 64) - (1 << 64) % n
        while True:
            x = self.u64()
            if x < limit:
                return x % n

    def randint(self, lo, hi):
        return lo + self.below(hi - lo + 1)

    def uniform(self):
        return self.u64() / float(1 << 64)

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def shuffle(self, seq):
        for i in range(len(seq) - 1, 0, -1):
            j = self.below(i + 1)
            seq[i], seq[j] = seq[j], seq[i]

    def sample(self, seq, k):
        pool = list(seq)
        self.shuffle(pool)
        return pool[:k]


jargon_entries = _bp.jargon_entries
