#!/usr/bin/env python3
"""Build the predictor's prompt sets, data/prompts/predictor-{train,val,test}.jsonl (issue 12).

Prompts for `attnpred capture` whose traces train and select the attention
predictor. Every source (a Debian package, or one file family inside one) belongs
to exactly one split, so the splits are held out *by source*:

    train  debian-handbook, gnu-standards, glibc (C), Rust's core/alloc/std (rust-src),
           perlfaq (perl-doc), FOLDOC (dict-foldoc), pci.ids, iso-codes
    val    developers-reference, abs-guide, fortunes, Linux man pages (roff source)
    test   The Devil's Dictionary (dict-devil), Go's standard library (golang-1.19-src),
           /etc/services (netbase) and the time zone tables (tzdata)

None of these packages is read by the evaluation prompts (the other data/prompts/*.jsonl) or the task suite (data/tasks/): `--check` verifies that too.
Kinds of text in every split: prose, code, dialogue (multi-turn ChatML, real
questions and answers of the source), structured data, and long-range retrieval
(pass keys, key/value lookups). Lengths ~1K-4K tokens (estimated); the capture
decodes 192 tokens past end-of-sequence (`--no-stop-eos`), see docs/training-data.md.

Record: id, text, chat, task, source (as the other prompt sets), plus
split ("train" | "val" | "test"), kind (prose | code | dialogue | structured |
retrieval) and origin (the source family the split is keyed on).

Usage:
    python3 scripts/build_train_prompts.py           # write data/prompts/predictor-*.jsonl
    python3 scripts/build_train_prompts.py --check   # rebuild in memory, exit 1 if it differs
    python3 scripts/build_train_prompts.py --fetch   # extract missing packages into .deps/debroot first
The output is byte-identical for the same package files (sha256 of every file
read: data/prompts/predictor.manifest.json).
"""
import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline_sources as osrc  # noqa: E402
from offline_sources import Rng, SourceError  # noqa: E402
from build_tasks import est_tokens  # noqa: E402  (the suite's token estimate)

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "data" / "prompts"
SPLITS = ("train", "val", "test")
MANIFEST = OUT_DIR / "predictor.manifest.json"
SEED = 20261207
LENGTHS = [1024, 2048, 3072, 4096]  # estimated prompt tokens, cycled per source

HANDBOOK = "/usr/share/doc/debian-handbook/html/en-US/"
DEVREF = "/usr/share/doc/developers-reference/"
ABS = "/usr/share/doc/abs-guide/html/"
GLIBC = "/usr/src/glibc/glibc-2.36.tar.xz"
RUST = "/usr/src/rustc-1.63.0/library/"
GO = "/usr/share/go-1.19/src/"
PERLPOD = "/usr/share/perl/5.36.0/pod/"

# origin -> (split, packages). The split is decided here and nowhere else.
ORIGINS = {
    "handbook": ("train", ["debian-handbook"]),
    "gnustd": ("train", ["gnu-standards"]),
    "glibc": ("train", ["glibc-source"]),
    "rust": ("train", ["rust-src"]),
    "perlfaq": ("train", ["perl-doc"]),
    "foldoc": ("train", ["dict-foldoc"]),
    "pciids": ("train", ["pci.ids"]),
    "isocodes": ("train", ["iso-codes"]),
    "devref": ("val", ["developers-reference"]),
    "absguide": ("val", ["abs-guide"]),
    "fortunes": ("val", ["fortunes"]),
    "manpages": ("val", ["manpages"]),
    "devil": ("test", ["dict-devil"]),
    "golang": ("test", ["golang-1.19-src"]),
    "sysdata": ("test", ["netbase", "tzdata"]),
}


class BuildError(Exception):
    pass


class Src(osrc.Sources):
    """Package files; folders are listed (sorted) and become readable."""

    def owned(self, pkg):
        """Paths the package itself ships (dpkg's list when installed, else the
        fetched .deb's contents), so that other packages' files in the same
        folder never enter a listing."""
        lst = Path("/var/lib/dpkg/info/%s.list" % pkg)
        if lst.is_file():
            return set(lst.read_text().split("\n"))
        debs = sorted(osrc.DEB_CACHE.glob(pkg + "_*.deb"))
        if not debs:
            raise SourceError("package '%s' is neither installed nor fetched (--fetch)" % pkg)
        out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tf:
            return {"/" + m.name.lstrip("./") for m in tf.getmembers() if m.isfile()}

    def list_dir(self, pkg, folder, pattern, recursive=False):
        own = self.owned(pkg)
        for root in self.roots:
            d = root / folder.lstrip("/")
            if d.is_dir():
                it = d.rglob("*") if recursive else d.iterdir()
                rx = re.compile(pattern)
                out = sorted("/" + str(p.relative_to(root)) for p in it
                             if p.is_file() and rx.search(p.name))
                out = [p for p in out if p in own]
                for p in out:
                    self.allowed.add((pkg, p))
                return out
        raise SourceError("missing folder %s: it comes from the Debian package '%s' "
                          "(--fetch extracts it into .deps/debroot)" % (folder, pkg))

    def text(self, pkg, path):
        """UTF-8, or Latin-1 for the older files (fortunes, some HTML) that are not."""
        try:
            return super().text(pkg, path)
        except UnicodeDecodeError:
            data = self.read_bytes(pkg, path)
            if path.endswith(".gz"):
                data = gzip.decompress(data)
            s = data.decode("latin-1").replace("\r\n", "\n")
            return osrc.Doc(s, "%s:%s" % (pkg, path))


# ---------------------------------------------------------------------------
# Text units: each source becomes a list of units (text, source span), which the
# generators join up to a length.

def units_paragraphs(doc, reflow=True, min_len=2):
    return [(t, doc.source(s, e)) for s, e, t in osrc.paragraphs(doc, reflow=reflow) if len(t) >= min_len]


def fit(units, start, budget, sep_tokens=1):
    """units[start:k] whose estimated tokens come closest to budget (never over)."""
    total, k = 0, start
    while k < len(units):
        t = est_tokens(units[k][0]) + sep_tokens
        if k > start and total + t > budget:
            break
        total += t
        k += 1
    return units[start:k]


def spans(units):
    return " ; ".join(s for _, s in units) if len(units) <= 2 else "%s ; ... ; %s" % (units[0][1], units[-1][1])


def rec(pid, origin, kind, task, chat, text, source):
    split = ORIGINS[origin][0]
    return {"id": pid, "text": text, "chat": chat, "task": task, "source": source[:255],
            "split": split, "kind": kind, "origin": origin}


def chat_overhead(text):
    return est_tokens(osrc.chat_wrap(text)) - est_tokens(text)


def gen_continuation(pid, origin, kind, units, rng, budget):
    start = rng.below(max(1, len(units) - 8))
    got = fit(units, start, budget)
    text = "\n\n".join(t for t, _ in got)
    return rec(pid, origin, kind, "continuation", False, text, spans(got))


def gen_code(pid, origin, files, rng, budget, lang):
    """One file (or several siblings with path headers when one is too short), cut at a line end."""
    k = rng.below(len(files))
    pieces, used, srcs = [], 0, []
    while used < budget and len(pieces) < 6:
        doc, path = files[k % len(files)]
        header = "// Path: %s\n" % path if lang != "go-comment" else "// Path: %s\n" % path
        room = budget - used - est_tokens(header)
        lines = doc.text.split("\n")
        take, tok = [], 0
        for line in lines:
            t = est_tokens(line) + 1
            if tok + t > room:
                break
            take.append(line)
            tok += t
        body = "\n".join(take).rstrip("\n") + "\n"
        pieces.append(header + body)
        srcs.append(doc.source(0, len(body)))
        used += tok + est_tokens(header)
        k += 1
        if len(take) < len(lines):
            break
    text = "\n".join(pieces)
    return rec(pid, origin, "code", "code_continuation", False, text, " ; ".join(srcs))


def gen_summary(pid, origin, units, rng, budget, what):
    head = "Here is %s.\n\n" % what
    tail = "\n\nSummarize the text above in one paragraph."
    b = budget - est_tokens(head + tail) - chat_overhead("")
    start = rng.below(max(1, len(units) - 8))
    got = fit(units, start, b)
    text = head + "\n\n".join(t for t, _ in got) + tail
    return rec(pid, origin, "prose", "summarization", True, text, spans(got))


def gen_passkey(pid, origin, units, rng, budget):
    key = rng.randint(10000, 99999)
    needle = "The pass key is %d. Remember it. %d is the pass key." % (key, key)
    head = ("There is an important piece of information hidden inside a lot of irrelevant text. "
            "Find it and memorize it. I will quiz you about it afterwards.\n\n")
    tail = "\n\nWhat is the pass key? Answer with the number only."
    b = budget - est_tokens(head + tail + needle) - chat_overhead("")
    start = rng.below(max(1, len(units) - 8))
    got = fit(units, start, b)
    parts = [t for t, _ in got]
    at = 1 + rng.below(max(1, len(parts) - 1))
    parts.insert(at, needle)
    text = head + "\n\n".join(parts) + tail
    return rec(pid, origin, "retrieval", "passkey_retrieval", True, text,
               spans(got) + " ; generated: pass key at paragraph %d of %d" % (at, len(parts)))


def gen_lookup(pid, origin, entries, rng, budget, noun):
    """entries: [(key, text, source)]; a run of them, then a question about one."""
    head = "Below is a list of %s.\n\n" % noun
    b = budget - est_tokens(head) - 60 - chat_overhead("")
    start = rng.below(max(1, len(entries) - 40))
    got = fit([(t, s) for _, t, s in entries], start, b)
    keys = [entries[start + i][0] for i in range(len(got))]
    q = rng.below(len(got))
    text = (head + "\n\n".join(t for t, _ in got) +
            "\n\nAccording to the list above, what is written about \"%s\"? Quote it." % keys[q])
    return rec(pid, origin, "retrieval", "lookup_qa", True, text,
               spans(got) + " ; generated: question about entry %d of %d" % (q + 1, len(got)))


def gen_dialogue(pid, origin, qas, rng, budget):
    """Multi-turn ChatML: real questions and answers of the source as user and
    assistant turns; the prompt ends with one more question, so the model answers."""
    start = rng.below(max(1, len(qas) - 30))
    turns, used, srcs, k = [], 0, [], start
    while k < len(qas) - 1:
        q, a, s = qas[k]
        t = est_tokens(q) + est_tokens(a) + 10
        if turns and used + t > budget - 80:
            break
        turns.append((q, a))
        srcs.append(s)
        used += t
        k += 1
    last_q = qas[k][0]
    srcs.append(qas[k][2])
    body = ""
    for i, (q, a) in enumerate(turns):
        body += q if i == 0 else "<|im_start|>user\n" + q
        body += "<|im_end|>\n<|im_start|>assistant\n" + a + "<|im_end|>\n"
    body += "<|im_start|>user\n" + last_q
    return rec(pid, origin, "dialogue", "dialogue", True, body, spans([(None, s) for s in srcs]))


def gen_fewshot(pid, origin, qas, rng, budget, qlabel, alabel):
    start = rng.below(max(1, len(qas) - 30))
    parts, used, k, srcs = [], 0, start, []
    while k < len(qas) - 1:
        q, a, s = qas[k]
        p = "%s: %s\n%s: %s" % (qlabel, q, alabel, a)
        if parts and used + est_tokens(p) + 2 > budget - 60:
            break
        parts.append(p)
        srcs.append(s)
        used += est_tokens(p) + 2
        k += 1
    parts.append("%s: %s\n%s:" % (qlabel, qas[k][0], alabel))
    srcs.append(qas[k][2])
    return rec(pid, origin, "dialogue", "few_shot", False, "\n\n".join(parts), spans([(None, s) for s in srcs]))


def gen_structured(pid, origin, doc, rng, budget, skip_comments=False):
    lines = doc.text.split("\n")
    offs, o = [], 0
    for line in lines:
        offs.append(o)
        o += len(line) + 1
    start = rng.below(max(1, len(lines) - 50))
    take, tok = [], 0
    for i in range(start, len(lines)):
        t = est_tokens(lines[i]) + 1
        if take and tok + t > budget:
            break
        take.append(lines[i])
        tok += t
    text = "\n".join(take).rstrip("\n") + "\n"
    return rec(pid, origin, "structured", "structured_continuation", False, text,
               doc.source(offs[start], offs[start] + len(text)))


# ---------------------------------------------------------------------------
# Sources, parsed

def html_units(src, pkg, files):
    out = []
    for f in files:
        doc = src.text(pkg, f)
        txt = osrc.html_to_text(doc.text)
        d = osrc.Doc(txt, doc.ref + "[text]")
        out += [u for u in units_paragraphs(d) if len(u[0]) >= 40]  # drops navigation links
    return out


def dictd_entries(src, pkg, base):
    """(headword, text, source) of a dictd database (.index: word, base64 offset, length)."""
    idx = src.text(pkg, base + ".index").text
    data = src.read_bytes(pkg, base + ".dict.dz")
    body = gzip.decompress(data)
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def dec(s):
        v = 0
        for ch in s:
            v = v * 64 + b64.index(ch)
        return v
    out = []
    for line in idx.split("\n"):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
            continue
        off, ln = dec(parts[1]), dec(parts[2])
        text = body[off:off + ln].decode("utf-8", "replace").strip("\n")
        text = "\n".join(l.rstrip() for l in text.split("\n"))
        if len(text) < 40:
            continue
        out.append((parts[0], text, "%s:%s.dict.dz#%d-%d" % (pkg, base, off, off + ln)))
    out.sort(key=lambda e: int(e[2].rsplit("#", 1)[1].split("-")[0]))
    return out


def perlfaq_qas(src):
    out = []
    for n in range(1, 10):
        path = PERLPOD + "perlfaq%d.pod" % n
        doc = src.text("perl-doc", path)
        heads = list(re.finditer(r"^=head2 (.+)$", doc.text, re.M))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(doc.text)
            body = doc.text[m.end():end]
            body = re.sub(r"^=\w+.*$", "", body, flags=re.M)
            body = re.sub(r"[A-Z]<+([^<>]*?)>+", r"\1", body)
            body = re.sub(r"\n{3,}", "\n\n", body).strip()
            if len(body) < 80:
                continue
            if len(body) > 2500:
                cut = body.rfind("\n\n", 0, 2500)
                body = body[:cut if cut > 500 else 2500]
            out.append((m.group(1).strip(), body, doc.source(m.start(), end)))
    return out


def roff_units(src, files):
    out = []
    for f in files:
        doc = src.text("manpages", f)
        out += [(t, s) for t, s in units_paragraphs(doc, reflow=False)]
    return out


def code_files(src, pkg, paths):
    return [(src.text(pkg, p), p.split("/library/")[-1] if "/library/" in p else p.split("/src/")[-1])
            for p in paths]


def glibc_files(src):
    data = src.read_bytes("glibc-source", GLIBC)
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:xz")
    rx = re.compile(r"^glibc-2\.36/(stdlib|string|malloc|stdio-common|libio|posix|time|locale|"
                    r"resolv|inet|iconv|nss|elf)/[a-z][a-z0-9_]+\.c$")
    out = []
    for m in sorted(tf.getmembers(), key=lambda m: m.name):
        if m.isfile() and rx.match(m.name) and 3000 <= m.size <= 60000:
            txt = tf.extractfile(m).read().decode("utf-8", "replace")
            out.append((osrc.Doc(txt, "glibc-source:%s[%s]" % (GLIBC, m.name)), m.name[len("glibc-2.36/"):]))
    return out


def build(src):
    rng = lambda *k: Rng(SEED, *k)  # noqa: E731
    recs = []

    def plan(origin, kinds):
        """kinds: [(task_label, count, generator(pid, rng, budget))]; lengths cycle."""
        i = 0
        for label, n, g in kinds:
            for j in range(n):
                budget = LENGTHS[(i + j) % len(LENGTHS)]
                pid = "%s_%s_%02d" % (origin, label, j)
                recs.append(g(pid, rng(pid), budget))
            i += n

    # train -------------------------------------------------------------
    hb_files = [f for f in src.list_dir("debian-handbook", HANDBOOK, r"\.html$")
                if not re.search(r"(index|ix01|pr01|book|foreword|preface)", f.rsplit("/", 1)[1])]
    hb = html_units(src, "debian-handbook", hb_files)
    plan("handbook", [
        ("cont", 10, lambda p, r, b: gen_continuation(p, "handbook", "prose", hb, r, b)),
        ("summ", 7, lambda p, r, b: gen_summary(p, "handbook", hb, r, b, "a chapter of a book about Debian")),
        ("passkey", 7, lambda p, r, b: gen_passkey(p, "handbook", hb, r, b)),
    ])
    gs = []
    for f in ("standards.text.gz", "maintain.text.gz"):
        gs += units_paragraphs(src.text("gnu-standards", "/usr/share/doc/gnu-standards/" + f))
    plan("gnustd", [
        ("cont", 6, lambda p, r, b: gen_continuation(p, "gnustd", "prose", gs, r, b)),
        ("summ", 4, lambda p, r, b: gen_summary(p, "gnustd", gs, r, b, "part of the GNU coding standards")),
    ])
    gl = glibc_files(src)
    plan("glibc", [("code", 16, lambda p, r, b: gen_code(p, "glibc", gl, r, b, "c"))])
    rs_paths = [p for p in src.list_dir("rust-src", RUST, r"\.rs$", recursive=True)
                if re.search(r"/library/(core|alloc|std)/src/", p) and "/tests/" not in p]
    rs = code_files(src, "rust-src", rs_paths)
    rs = [(d, n) for d, n in rs if 3000 <= len(d.text) <= 80000]
    plan("rust", [("code", 14, lambda p, r, b: gen_code(p, "rust", rs, r, b, "rust"))])
    pf = perlfaq_qas(src)
    plan("perlfaq", [
        ("dialog", 10, lambda p, r, b: gen_dialogue(p, "perlfaq", pf, r, b)),
        ("fewshot", 4, lambda p, r, b: gen_fewshot(p, "perlfaq", pf, r, b, "Question", "Answer")),
    ])
    fd = dictd_entries(src, "dict-foldoc", "/usr/share/dictd/foldoc")
    fd_qa = [("What does \"%s\" mean in computing?" % w, t, s) for w, t, s in fd]
    plan("foldoc", [
        ("lookup", 8, lambda p, r, b: gen_lookup(p, "foldoc", fd, r, b, "computing dictionary entries")),
        ("dialog", 4, lambda p, r, b: gen_dialogue(p, "foldoc", fd_qa, r, b)),
    ])
    pci = src.text("pci.ids", "/usr/share/misc/pci.ids")
    pci_entries = []
    for m in re.finditer(r"^([0-9a-f]{4})  (.+)$", pci.text, re.M):
        pci_entries.append((m.group(1), "Vendor %s: %s" % (m.group(1), m.group(2)), pci.source(m.start(), m.end())))
    plan("pciids", [
        ("data", 6, lambda p, r, b: gen_structured(p, "pciids", pci, r, b)),
        ("lookup", 4, lambda p, r, b: gen_lookup(p, "pciids", pci_entries, r, b, "PCI vendor identifiers")),
    ])
    iso = [src.text("iso-codes", "/usr/share/iso-codes/json/%s.json" % n)
           for n in ("iso_639-3", "iso_3166-2", "iso_4217", "iso_15924", "iso_639-5")]
    plan("isocodes", [("data", 10, lambda p, r, b: gen_structured(p, "isocodes", iso[r.below(len(iso))], r, b))])

    # val ---------------------------------------------------------------
    dr = [u for u in units_paragraphs(src.text("developers-reference", DEVREF + "docs/developers-reference.txt.gz"))
          if len(u[0]) >= 40]
    plan("devref", [
        ("cont", 3, lambda p, r, b: gen_continuation(p, "devref", "prose", dr, r, b)),
        ("passkey", 2, lambda p, r, b: gen_passkey(p, "devref", dr, r, b)),
    ])
    ab = html_units(src, "abs-guide", [f for f in src.list_dir("abs-guide", ABS, r"\.html$")
                                       if not re.search(r"(index|toc|xref|biblio|ascii)", f.rsplit("/", 1)[1])])
    plan("absguide", [
        ("cont", 3, lambda p, r, b: gen_continuation(p, "absguide", "prose", ab, r, b)),
        ("summ", 2, lambda p, r, b: gen_summary(p, "absguide", ab, r, b, "part of a guide to shell scripting")),
    ])
    fo_files = [f for f in src.list_dir("fortunes", "/usr/share/games/fortunes/", r"^[a-z-]+$")]
    fo_units = []
    for f in fo_files:
        doc = src.text("fortunes", f)
        o = 0
        for piece in doc.text.split("\n%\n"):
            if len(piece.strip()) > 20:
                fo_units.append((piece.strip("\n"), doc.source(o, o + len(piece))))
            o += len(piece) + 3
    plan("fortunes", [("cont", 3, lambda p, r, b: gen_continuation(p, "fortunes", "dialogue", fo_units, r, b))])
    mp = roff_units(src, src.list_dir("manpages", "/usr/share/man/man7/", r"\.7\.gz$"))
    plan("manpages", [("roff", 3, lambda p, r, b: gen_continuation(p, "manpages", "structured", mp, r, b))])

    # test --------------------------------------------------------------
    dv = dictd_entries(src, "dict-devil", "/usr/share/dictd/devil")
    dv_units = [(t, s) for _, t, s in dv]
    dv_qa = [("What is the meaning of \"%s\"?" % w.capitalize(), t, s) for w, t, s in dv]
    plan("devil", [
        ("cont", 3, lambda p, r, b: gen_continuation(p, "devil", "prose", dv_units, r, b)),
        ("dialog", 3, lambda p, r, b: gen_dialogue(p, "devil", dv_qa, r, b)),
        ("lookup", 2, lambda p, r, b: gen_lookup(p, "devil", dv, r, b, "satirical dictionary entries")),
        ("passkey", 2, lambda p, r, b: gen_passkey(p, "devil", dv_units, r, b)),
    ])
    go_paths = [p for p in src.list_dir("golang-1.19-src", GO, r"\.go$", recursive=True)
                if not p.endswith("_test.go") and "/testdata/" not in p and "/vendor/" not in p]
    go = [(d, n) for d, n in code_files(src, "golang-1.19-src", go_paths) if 3000 <= len(d.text) <= 80000]
    plan("golang", [("code", 8, lambda p, r, b: gen_code(p, "golang", go, r, b, "go"))])
    svc = src.text("netbase", "/etc/services")
    zone = src.text("tzdata", "/usr/share/zoneinfo/zone.tab")
    svc_entries = []
    for m in re.finditer(r"^([a-z0-9][a-z0-9-]*)\s+(\d+/(?:tcp|udp))(.*)$", svc.text, re.M):
        svc_entries.append((m.group(1), "Service %s: port %s%s" % (m.group(1), m.group(2), m.group(3).rstrip()),
                            svc.source(m.start(), m.end())))
    plan("sysdata", [
        ("services", 2, lambda p, r, b: gen_structured(p, "sysdata", svc, r, min(b, 2048))),
        ("zones", 1, lambda p, r, b: gen_structured(p, "sysdata", zone, r, b)),
        ("lookup", 3, lambda p, r, b: gen_lookup(p, "sysdata", svc_entries, r, min(b, 2048), "network services")),
    ])
    return recs


FILES_FIXED = [
    ("gnu-standards", "/usr/share/doc/gnu-standards/standards.text.gz"),
    ("gnu-standards", "/usr/share/doc/gnu-standards/maintain.text.gz"),
    ("glibc-source", GLIBC),
    ("dict-foldoc", "/usr/share/dictd/foldoc.index"), ("dict-foldoc", "/usr/share/dictd/foldoc.dict.dz"),
    ("dict-devil", "/usr/share/dictd/devil.index"), ("dict-devil", "/usr/share/dictd/devil.dict.dz"),
    ("pci.ids", "/usr/share/misc/pci.ids"),
    ("netbase", "/etc/services"), ("tzdata", "/usr/share/zoneinfo/zone.tab"),
    ("developers-reference", DEVREF + "docs/developers-reference.txt.gz"),
] + [("perl-doc", PERLPOD + "perlfaq%d.pod" % n) for n in range(1, 10)] + [
    ("iso-codes", "/usr/share/iso-codes/json/%s.json" % n)
    for n in ("iso_639-3", "iso_3166-2", "iso_4217", "iso_15924", "iso_639-5")]


def eval_packages():
    """Packages the evaluation prompt sets and the task suite read."""
    pk = set()
    for f in sorted((REPO / "data" / "prompts").glob("*.jsonl")) + sorted((REPO / "data" / "tasks").glob("*.jsonl")):
        if f.name.startswith("predictor-"):
            continue
        for line in f.read_text().splitlines():
            r = json.loads(line)
            for piece in r.get("source", "").split(" ; "):
                if ":" in piece and not piece.startswith("generated"):
                    pk.add(piece.split(":", 1)[0].strip())
    return pk


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="rebuild in memory and compare with the file")
    ap.add_argument("--fetch", action="store_true", help="extract missing packages into .deps/debroot")
    ap.add_argument("--out-dir", default=str(OUT_DIR), help="output folder (default data/prompts)")
    a = ap.parse_args(argv)
    roots = ["/", str(osrc.DEB_ROOT)]
    src = Src(roots, FILES_FIXED)
    try:
        if a.fetch:
            need = sorted({p for o in ORIGINS.values() for p in o[1]
                           if not any(Path(r, "var/lib/dpkg/info/%s.list" % p).exists() for r in roots[:1])})
            osrc.fetch_packages(need, log=lambda m: print(m, file=sys.stderr))
        recs = build(src)
    except (SourceError, BuildError) as e:
        print("build_train_prompts: %s" % e, file=sys.stderr)
        return 1
    clash = sorted(eval_packages() & {p for o in ORIGINS.values() for p in o[1]})
    if clash:
        print("build_train_prompts: evaluation data reads these training-set packages too: %s"
              % ", ".join(clash), file=sys.stderr)
        return 1
    ids = [r["id"] for r in recs]
    assert len(set(ids)) == len(ids)
    blobs = {sp: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs if r["split"] == sp)
             for sp in SPLITS}
    man = {"seed": SEED, "origins": {k: {"split": v[0], "packages": v[1]} for k, v in ORIGINS.items()},
           "packages": {p: osrc.package_version(p, roots) for o in ORIGINS.values() for p in o[1]},
           # "PACKAGE:usr/share/...": where the file sits inside the package
           # (relative to its install root, so no path of this machine).
           "files_sha256": dict(sorted((k.replace(":/", ":", 1), v) for k, v in src.used.items())),
           "counts": {sp: sum(1 for r in recs if r["split"] == sp) for sp in SPLITS}}
    out_dir = Path(a.out_dir)
    if a.check:
        bad = [sp for sp in SPLITS
               if not (out_dir / ("predictor-%s.jsonl" % sp)).is_file()
               or (out_dir / ("predictor-%s.jsonl" % sp)).read_text() != blobs[sp]]
        print("build_train_prompts: %s" % ("up to date" if not bad else
              "DIFFERS from a rebuild: " + ", ".join("predictor-%s.jsonl" % b for b in bad)))
        return 1 if bad else 0
    files = [(out_dir / ("predictor-%s.jsonl" % sp), blobs[sp]) for sp in SPLITS]
    files.append((out_dir / MANIFEST.name, json.dumps(man, indent=1, sort_keys=True) + "\n"))
    for path, blob in files:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(blob)
        tmp.replace(path)
    print("build_train_prompts: wrote predictor-{train,val,test}.jsonl in %s: %s" % (out_dir, man["counts"]),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
