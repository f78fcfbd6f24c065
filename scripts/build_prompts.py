#!/usr/bin/env python3
"""Build the prompt sets in data/prompts/ from real text and code in Debian packages.

Every prompt is cut from a file that a named Debian bookworm package installs
(novels, the Jargon File, a book on hacker history, the Python documentation
sources and the Python standard library). The build is deterministic: the same
package files give byte-identical JSONL files. Nothing is downloaded unless
--fetch is given, and no tokenizer is needed unless --count is given.

Output: data/prompts/{default,quick,smoke,long}.jsonl, one JSON object per line:
    {"id", "text", "chat", "task", "source"}
"chat" prompts are the user message of a chat turn (the capture wraps them in
the model's chat template); the others are fed raw. "source" names where the
text comes from: "PACKAGE:PATH[OBJECT]#START-END", several joined by " ; ".
START-END are character offsets into the decoded file text (gzip
decompressed; CRLF turned into LF; for R data, the character vector's
elements joined with LF; for HTML, the text with tags stripped and one blank
line between blocks). The prompt text is derived from that span: prose
paragraphs are reflowed to single lines, and task wording (a question, an
instruction, a hidden passkey sentence) is added.

long.jsonl is the long-context set (2K-30K tokens of Gemma 3's tokenizer, BOS
included) for base models with a 32K context such as Gemma 3 270M: every
prompt is plain text ("chat": false), and the ones that ask something end
with the start of the answer ("The pass key is", "Answer:", "Summary:"). It
reads the same packages as the other sets, none of the training prompts'
(scripts/build_train_prompts.py checks that).

Usage:
    python3 scripts/build_prompts.py            # write data/prompts/*.jsonl
    python3 scripts/build_prompts.py --check    # rebuild in memory, compare to the files
    python3 scripts/build_prompts.py --fetch    # first extract missing packages into
                                                # .deps/debroot (apt-get download + dpkg-deb -x)
    .venv/bin/python scripts/build_prompts.py --count
        # also count tokens with the reference tokenizers (transformers, models/*.gguf:
        # SmolLM2's for default/quick/smoke, Gemma 3's for long), enforce the length
        # limits and rewrite the table in data/prompts/README.md
"""

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "data" / "prompts"
DEB_ROOT = REPO / ".deps" / "debroot"
DEB_CACHE = REPO / ".deps" / "debs"

# Longest allowed prompt, in model tokens, chat wrapper included: the model's
# context is 8192 and captures generate up to ~128 tokens after the prompt.
MAX_TOKENS = 7900
# The long set: Gemma 3's 32,768-token context less room for 1,024 generated tokens.
MAX_TOKENS_LONG = 31744

# The default system prompt SmolLM2's chat template inserts (stack-notes, section 2).
CHAT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_wrap(text):
    return ("<|im_start|>system\n" + CHAT_SYSTEM + "<|im_end|>\n"
            "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n")


class BuildError(Exception):
    pass


# ---------------------------------------------------------------------------
# Debian package files

# package -> (what it holds, license) — mirrored in data/prompts/NOTICE.
PACKAGES = {
    "r-cran-janeaustenr": ("Jane Austen's six novels (R data)", "public domain (package: MIT)"),
    "r-cran-tokenizers": ("Moby-Dick, Project Gutenberg #2701 (R data)", "public domain (package: MIT)"),
    "jargon-text": ("The Jargon File 4.4.7", "public domain"),
    "cfi-en": ("Linus Walleij, Copyright Does Not Exist (HTML)", "public domain"),
    "python3.11-doc": ("Python 3.11 documentation sources (reST)", "PSF License Version 2"),
    "libpython3.11-minimal": ("Python 3.11 standard library source (core modules)", "PSF License Version 2"),
    "libpython3.11-stdlib": ("Python 3.11 standard library source", "PSF License Version 2"),
}


# Every file the build reads, with its package (checked up front, so that one message
# names all the packages that are missing).
REQUIRED_FILES = [
    ("r-cran-janeaustenr", "/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"),
    ("r-cran-janeaustenr", "/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"),
    ("r-cran-tokenizers", "/usr/lib/R/site-library/tokenizers/data/Rdata.rdx"),
    ("r-cran-tokenizers", "/usr/lib/R/site-library/tokenizers/data/Rdata.rdb"),
    ("jargon-text", "/usr/share/doc/jargon-text/jargon.txt.gz"),
    ("cfi-en", "/usr/share/doc/cfi-en/html/ch9web.htm"),
    ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources/howto/sockets.rst.txt"),
    ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources/faq/programming.rst.txt"),
    ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources/tutorial/classes.rst.txt"),
    ("libpython3.11-minimal", "/usr/lib/python3.11/textwrap.py"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/statistics.py"),
    ("libpython3.11-minimal", "/usr/lib/python3.11/bisect.py"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/json/scanner.py"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/json/decoder.py"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/json/encoder.py"),
    # the long set
    ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources/howto/logging.rst.txt"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/difflib.py"),
    ("libpython3.11-stdlib", "/usr/lib/python3.11/_pydecimal.py"),
]


def find_file(roots, path):
    for root in roots:
        p = Path(root) / path.lstrip("/")
        if p.is_file():
            return p
    return None


def missing_packages(roots):
    return sorted({pkg for pkg, path in REQUIRED_FILES if not find_file(roots, path)})


class Sources:
    """Finds package files under the system root or .deps/debroot, records what was read."""

    def __init__(self, roots):
        self.roots = [Path(r) for r in roots]
        self.used = {}  # "pkg:path" -> sha256 of the file

    def find(self, pkg, path):
        if (pkg, path) not in REQUIRED_FILES:
            raise BuildError("internal: %s:%s is not listed in REQUIRED_FILES" % (pkg, path))
        p = find_file(self.roots, path)
        if p is not None:
            return p
        raise BuildError(
            "missing %s: it comes from the Debian package '%s'. Install it with "
            "`apt-get install -y %s`, or run this script with --fetch to extract it into "
            ".deps/debroot without installing" % (path, pkg, pkg))

    def read_bytes(self, pkg, path):
        data = self.find(pkg, path).read_bytes()
        self.used["%s:%s" % (pkg, path)] = hashlib.sha256(data).hexdigest()
        return data

    def text(self, pkg, path):
        data = self.read_bytes(pkg, path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        s = data.decode("utf-8")
        return Doc(s.replace("\r\n", "\n").lstrip("\ufeff"), "%s:%s" % (pkg, path))

    def html_text(self, pkg, path):
        data = self.read_bytes(pkg, path)
        return Doc(html_to_text(data.decode("latin-1")), "%s:%s" % (pkg, path))

    def rdata(self, pkg, base, name):
        """A character vector from an R lazy-load database (base.rdx + base.rdb), without R."""
        rdx = self.read_bytes(pkg, base + ".rdx")
        rdb = self.read_bytes(pkg, base + ".rdb")
        vec = read_rdata_object(rdx, rdb, name, base)
        s = "\n".join(vec).replace("\r\n", "\n").lstrip("\ufeff")
        return Doc(s, "%s:%s.rdb[%s]" % (pkg, base, name))


def package_version(pkg, roots):
    """Installed version (dpkg) or the version of a fetched .deb; '' if unknown."""
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


def fetch_packages(pkgs):
    """apt-get download + dpkg-deb -x into .deps/debroot (no install, no dependencies)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BuildError("--fetch needs %s (a Debian system)" % tool)
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    DEB_ROOT.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        debs = sorted(DEB_CACHE.glob(pkg + "_*.deb"))
        if not debs:
            print("fetching Debian package %s" % pkg, file=sys.stderr)
            r = subprocess.run(["apt-get", "download", pkg], cwd=DEB_CACHE, check=False)
            debs = sorted(DEB_CACHE.glob(pkg + "_*.deb"))
            if r.returncode != 0 or not debs:
                raise BuildError("apt-get download %s failed (run `apt-get update` first?)" % pkg)
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(DEB_ROOT)], check=True)


# ---------------------------------------------------------------------------
# Readers

class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr", "table",
             "center", "blockquote", "pre", "ul", "ol", "dd", "dt", "hr", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks = [[]]
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.blocks.append([])

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.blocks.append([])

    def handle_data(self, data):
        if not self.skip:
            self.blocks[-1].append(data)


def html_to_text(s):
    p = _HTMLText()
    p.feed(s)
    p.close()
    paras = []
    for b in p.blocks:
        t = " ".join("".join(b).split())
        if t:
            paras.append(t)
    return "\n\n".join(paras) + "\n"


class _RReader:
    """Minimal reader of R's XDR serialization (format 2/3): enough for character
    vectors, integer vectors, lists, pairlists and attributes."""

    def __init__(self, data):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.d, self.p, self.refs = data, 2, []
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader R version
        if version == 3:
            n = self.int()  # native encoding name
            self.p += n

    def int(self):
        v = struct.unpack_from(">i", self.d, self.p)[0]
        self.p += 4
        return v

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in (254, 253, 242, 241, 251, 252, 250):  # NULL and special environments
            return None
        if t == 255:  # reference
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if t == 1:  # symbol
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if t == 2:  # pairlist: [(tag, value), ...]
            attr = self.item() if has_attr else None
            del attr
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            return [(tag, car)] + (cdr or [])
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            v = self.d[self.p:self.p + n]
            self.p += n
            return v.decode("utf-8" if not flags & (1 << 14) else "latin-1")
        if t == 16 or t == 19:  # character vector, list
            v = [self.item() for _ in range(self.int())]
        elif t in (10, 13):  # logical, integer
            n = self.int()
            v = list(struct.unpack_from(">%di" % n, self.d, self.p))
            self.p += 4 * n
        elif t == 14:  # double
            n = self.int()
            v = list(struct.unpack_from(">%dd" % n, self.d, self.p))
            self.p += 8 * n
        else:
            raise ValueError("unsupported R type %d" % t)
        if has_attr:
            attrs = {tag[1]: val for tag, val in self.item()}
            return RObj(v, attrs)
        return v


class RObj(list):
    def __init__(self, v, attrs):
        super().__init__(v)
        self.attrs = attrs


def read_rdata_object(rdx, rdb, name, where):
    index = _RReader(gzip.decompress(rdx)).item()
    variables = index[index.attrs["names"].index("variables")]
    names = variables.attrs["names"]
    if name not in names:
        raise BuildError("%s.rdx has no object '%s' (has: %s)" % (where, name, ", ".join(names)))
    off, length = variables[names.index(name)]
    blob = rdb[off:off + length]
    size = struct.unpack(">I", blob[:4])[0]
    data = zlib.decompress(blob[4:])
    if len(data) != size:
        raise BuildError("%s.rdb: object '%s' has a bad length" % (where, name))
    vec = _RReader(data).item()
    if not isinstance(vec, list) or not all(isinstance(x, str) or x is None for x in vec):
        raise BuildError("%s.rdb: object '%s' is not a character vector" % (where, name))
    return ["" if x is None else x for x in vec]


# ---------------------------------------------------------------------------
# Text helpers

class Doc:
    def __init__(self, text, ref):
        self.text, self.ref = text, ref

    def find(self, anchor, start=0):
        i = self.text.find(anchor, start)
        if i < 0:
            raise BuildError("%s: anchor %r not found (the package's text changed?)" % (self.ref, anchor))
        return i

    def source(self, start, end):
        return "%s#%d-%d" % (self.ref, start, end)


def paragraphs(doc, start=0, end=None, reflow=True):
    """(start, end, text) of each blank-line separated paragraph in [start, end).
    reflow: join the paragraph's lines into one (hard-wrapped prose); otherwise keep its
    lines and indentation as they are (markup, code), only trailing spaces removed."""
    end = len(doc.text) if end is None else end
    out = []
    for m in re.finditer(r"(?:^[ \t]*\S[^\n]*(?:\n|\Z))+", doc.text[start:end], re.M):
        block = m.group(0).rstrip("\n")
        if reflow:
            t = " ".join(block.split())
        else:
            t = "\n".join(line.rstrip() for line in block.split("\n"))
        out.append((start + m.start(), start + m.start() + len(block), t))
    return out


def take_paragraphs(paras, max_chars, min_paras=1):
    """The longest run of leading paragraphs whose "\n\n"-joined length fits max_chars."""
    n, total = 0, -2
    for _, _, t in paras:
        if total + 2 + len(t) > max_chars and n >= min_paras:
            break
        total += 2 + len(t)
        n += 1
    if n == 0:
        raise BuildError("no paragraph fits")
    return paras[:n]


def take_lines(text, max_chars):
    """The longest prefix of whole lines fitting max_chars, without trailing blank lines."""
    cut = text[:max_chars + 1]
    if len(cut) > max_chars:
        cut = cut[:cut.rfind("\n") + 1]
    return cut.rstrip("\n") + "\n"


def rand_int(seed, label, lo, hi):
    """Deterministic integer in [lo, hi] from (seed, label), independent of Python's random."""
    h = hashlib.sha256(("%s/%s" % (seed, label)).encode()).digest()
    return lo + int.from_bytes(h[:8], "big") % (hi - lo + 1)


def joined(paras):
    return "\n\n".join(t for _, _, t in paras)


def span(doc, paras):
    return doc.source(paras[0][0], paras[-1][1])


# ---------------------------------------------------------------------------
# Sources

AUSTEN = ("r-cran-janeaustenr", "/usr/lib/R/site-library/janeaustenr/data/Rdata")
MOBY = ("r-cran-tokenizers", "/usr/lib/R/site-library/tokenizers/data/Rdata")
JARGON = ("jargon-text", "/usr/share/doc/jargon-text/jargon.txt.gz")
CFI = ("cfi-en", "/usr/share/doc/cfi-en/html/")
PYDOC = ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources/")
STDLIB = ("libpython3.11-stdlib", "/usr/lib/python3.11/")


def austen(src, novel):
    return src.rdata(AUSTEN[0], AUSTEN[1], novel)


def mobydick(src):
    return src.rdata(MOBY[0], MOBY[1], "mobydick")


def jargon(src):
    return src.text(*JARGON)


def cfi(src, name):
    return src.html_text(CFI[0], CFI[1] + name)


def pydoc(src, name):
    return src.text(PYDOC[0], PYDOC[1] + name)


def stdlib(src, name):
    # Core modules (textwrap, bisect, ...) are in libpython3.11-minimal, the rest in
    # libpython3.11-stdlib: REQUIRED_FILES says which.
    path = STDLIB[1] + name
    pkg = [p for p, f in REQUIRED_FILES if f == path]
    return src.text(pkg[0] if pkg else STDLIB[0], path)


def jargon_entries(doc):
    """Glossary entries: (start, end, headword, header rest, body paragraphs)."""
    g0 = doc.find("\nGlossary\n")
    g1 = doc.find("\nAppendix\u00a0A.\u00a0Hacker Folklore\n", g0)
    heads = [m for m in re.finditer(r"^   :([^\n]+?):([^\n]*)$", doc.text[g0:g1], re.M)]
    out = []
    for k, m in enumerate(heads):
        s = g0 + m.start()
        e = g0 + (heads[k + 1].start() if k + 1 < len(heads) else g1 - g0)
        # An entry ends early at a letter-section heading (an unindented line).
        stop = re.search(r"^\S", doc.text[s:e], re.M)
        if stop:
            e = s + stop.start()
        body = paragraphs(doc, g0 + m.end(), e)
        out.append((s, e, m.group(1), m.group(2).strip(), body))
    return out


# ---------------------------------------------------------------------------
# Task builders. Each returns a dict with the prompt fields.

def prompt(pid, task, chat, text, source):
    return {"id": pid, "text": text, "chat": chat, "task": task, "source": source}


def drop_trailing_intros(paras):
    """Drop trailing paragraphs that only announce what follows: ones ending with ':',
    reST section titles (a line underlined with = - * ~ ^) and reST labels."""
    def intro(t):
        t = t.rstrip()
        return (t.endswith(":") or re.search(r"\n[=*~^-]{3,}$", t) is not None
                or re.fullmatch(r"\.\. _[^\n]*:", t) is not None)
    while len(paras) > 1 and intro(paras[-1][2]):
        paras = paras[:-1]
    return paras


def excerpt(doc, start_anchor, max_chars, reflow):
    paras = paragraphs(doc, doc.find(start_anchor), reflow=reflow)
    return drop_trailing_intros(take_paragraphs(paras, max_chars))


def doc_qa(pid, doc, start_anchor, max_chars, question, expect, reflow=True):
    paras = excerpt(doc, start_anchor, max_chars, reflow)
    ctx = joined(paras)
    for e in expect:
        if e not in ctx:
            raise BuildError("%s: the excerpt no longer contains %r" % (pid, e))
    text = ("Read the following text and answer the question after it.\n\n" + ctx +
            "\n\nAnswer the question based on the text above. Question: " + question)
    return prompt(pid, "long_doc_qa", True, text, span(doc, paras))


def summarize(pid, doc, start_anchor, max_chars, what, reflow=True, raw=False):
    """raw: plain text for a base model, ending with the answer's start."""
    paras = excerpt(doc, start_anchor, max_chars, reflow)
    text = ("Here is " + what + ".\n\n" + joined(paras) +
            "\n\nSummarize the text above in one paragraph." + ("\n\nSummary:" if raw else ""))
    return prompt(pid, "summarization", not raw, text, span(doc, paras))


SENTENCE_END = re.compile(r"[.!?;][\"'\u2019\u201d)]*(?= )")
ABBREVIATIONS = {"Mr", "Mrs", "Dr", "St", "Esq", "Capt", "Col", "Messrs", "Mme", "Ch", "viz", "i.e", "e.g"}


def sentence_ends(text):
    """Offsets just after each sentence end (a '.' after an abbreviation such as Mr. is none)."""
    out = []
    for m in SENTENCE_END.finditer(text):
        if text[m.start()] == ".":
            word = re.search(r"(\S*)$", text[:m.start()]).group(1)
            if word in ABBREVIATIONS or len(word) == 1:
                continue
        out.append(m.end())
    return out


def continuation(pid, doc, start_anchor, max_chars):
    """Raw prose that stops mid-paragraph at a sentence end, close to max_chars."""
    paras = paragraphs(doc, doc.find(start_anchor))
    fit = take_paragraphs(paras, max_chars)
    room = max_chars - len(joined(fit)) - 2
    nxt = paras[len(fit)] if len(fit) < len(paras) else None
    ends = [e for e in sentence_ends(nxt[2]) if e <= room] if nxt else []
    if ends:
        text = joined(fit) + "\n\n" + nxt[2][:ends[-1]]
        used = fit + [nxt]
    else:
        # Cut the last whole paragraph after its first sentence instead.
        last = fit[-1][2]
        first = sentence_ends(last)[:1]
        text = joined(fit[:-1])
        if first:
            text += ("\n\n" if text else "") + last[:first[0]]
        used = fit
    return prompt(pid, "continuation", False, text, span(doc, used))


def passkey(pid, doc, start_anchor, max_chars, seed, raw=False):
    key = rand_int(seed, pid + "/key", 10000, 99999)
    needle = "The pass key is %d. Remember it. %d is the pass key." % (key, key)
    paras = take_paragraphs(paragraphs(doc, doc.find(start_anchor)), max_chars - len(needle) - 2)
    depth = rand_int(seed, pid + "/depth", 5, 95)  # percent
    at = max(1, min(len(paras) - 1, round(len(paras) * depth / 100)))
    parts = [t for _, _, t in paras]
    parts.insert(at, needle)
    text = ("There is an important piece of information hidden inside a lot of irrelevant "
            "text. Find it and memorize it. I will quiz you about it afterwards.\n\n" +
            "\n\n".join(parts) + "\n\nWhat is the pass key? Answer with the number only." +
            ("\n\nThe pass key is" if raw else ""))
    return prompt(pid, "passkey_retrieval", not raw, text, span(doc, paras)), key, at / len(paras)


def code_prefix(pid, files, max_chars):
    """Raw code continuation. files: [(doc, show_path)]; all but the last file are
    given whole as cross-file context (RepoBench-style, with '# Path:' headers); the
    last one is cut at a line boundary so that the total fits max_chars."""
    pieces, sources = [], []
    multi = len(files) > 1
    for k, (doc, path) in enumerate(files):
        header = "# Path: %s\n" % path if multi else ""
        if k < len(files) - 1:
            pieces.append(header + doc.text.rstrip("\n") + "\n")
            sources.append(doc.source(0, len(doc.text)))
        else:
            used = sum(len(p) + 1 for p in pieces) + len(header)
            body = take_lines(doc.text, max_chars - used)
            pieces.append(header + body)
            sources.append(doc.source(0, len(body)))
    return prompt(pid, "code_continuation", False, "\n".join(pieces), " ; ".join(sources))


def fewshot_jargon(pid, doc, first_head, n_shots):
    entries = jargon_entries(doc)
    heads = [e[2] for e in entries]
    if first_head not in heads:
        raise BuildError("%s: Jargon File entry %r not found" % (pid, first_head))
    i = heads.index(first_head)
    chosen = [e for e in entries[i:] if e[4]][:n_shots + 1]
    lines = ["The following are entries of the Jargon File, a dictionary of hacker slang.", ""]
    for k, (_, _, head, _, body) in enumerate(chosen):
        lines.append("Term: " + head)
        if k == len(chosen) - 1:
            lines.append("Definition:")
        else:
            d = []
            for _, _, t in body:
                if d and len(" ".join(d)) + len(t) > 500:
                    break
                d.append(t)
            lines.append("Definition: " + " ".join(d))
            lines.append("")
    return prompt(pid, "few_shot", False, "\n".join(lines),
                  doc.source(chosen[0][0], chosen[-1][0]))


def lookup_jargon(pid, doc, first_head, max_chars, seed, raw=False):
    entries = [e for e in jargon_entries(doc) if e[4]]
    heads = [e[2] for e in entries]
    if first_head not in heads:
        raise BuildError("%s: Jargon File entry %r not found" % (pid, first_head))
    i = heads.index(first_head)
    chosen, total = [], 0
    for e in entries[i:]:
        block = (":%s: %s" % (e[2], e[3])).strip() + "\n" + "\n".join(t for _, _, t in e[4])
        if chosen and total + len(block) + 2 > max_chars:
            break
        chosen.append((e, block))
        total += len(block) + 2
    q = rand_int(seed, pid + "/q", len(chosen) // 5, len(chosen) - 1 - len(chosen) // 5)
    term = chosen[q][0][2]
    text = ("Below is an excerpt from the Jargon File, a glossary of hacker slang.\n\n" +
            "\n\n".join(b for _, b in chosen) +
            "\n\nAccording to the glossary above, what does the term \"%s\" mean? "
            "Answer in one or two sentences." % term + ("\n\nAnswer:" if raw else ""))
    return prompt(pid, "lookup_qa", not raw, text,
                  doc.source(chosen[0][0][0], chosen[-1][0][1])), term


def faq_sections(doc):
    """(start, end, question, answer text) for each '----'-underlined FAQ heading."""
    t = doc.text
    heads = list(re.finditer(r"^(\S[^\n]*)\n-{3,}\n", t, re.M))
    out = []
    for k, m in enumerate(heads):
        e = heads[k + 1].start() if k + 1 < len(heads) else len(t)
        body = t[m.end():e]
        # Drop reST labels and section titles that precede the next heading.
        body = re.sub(r"\n\.\. _[^\n]*:\n", "\n", "\n" + body)
        body = re.sub(r"\n[^\n]+\n={3,}\n", "\n", body)
        out.append((m.start(), e, m.group(1), body.strip()))
    return out


def fewshot_faq(pid, doc, first_q, max_chars, max_answer=900):
    secs = faq_sections(doc)
    qs = [s[2] for s in secs]
    if first_q not in qs:
        raise BuildError("%s: FAQ question %r not found" % (pid, first_q))
    i = qs.index(first_q)
    head = "The following are questions and answers from the Python Programming FAQ.\n\n"
    blocks, total = [], len(head)
    used = []
    for s in secs[i:]:
        ans = s[3]
        if len(ans) > max_answer:
            cut = ans[:max_answer]
            j = cut.rfind("\n\n")
            ans = cut[:j] if j > 0 else cut[:cut.rfind(" ")] + " ..."
        block = "Question: %s\nAnswer: %s" % (s[2], ans)
        if blocks and total + len(block) + 2 + 200 > max_chars:
            last = s
            break
        blocks.append(block)
        used.append(s)
        total += len(block) + 2
    else:
        raise BuildError("%s: ran out of FAQ entries" % pid)
    text = head + "\n\n".join(blocks) + "\n\nQuestion: %s\nAnswer:" % last[2]
    return prompt(pid, "few_shot", False, text, doc.source(used[0][0], last[0] + len(last[2])))


# ---------------------------------------------------------------------------
# The sets

SEED = 20261128


def build_all(src):
    """Returns {set name: [prompt, ...]}, plus notes for the README."""
    jf = jargon(src)
    moby = mobydick(src)
    P = {}
    notes = {}

    # --- ~1K tokens
    P["cont_mobydick_1k"] = continuation("cont_mobydick_1k", moby, "CHAPTER 1. Loomings.", 4500)
    p, key, depth = passkey("passkey_jargon_1k", jf, "Chapter\u00a01.\u00a0Hacker Slang and Hacker Culture", 5200, SEED)
    P[p["id"]], notes[p["id"]] = p, "pass key %d at depth %.2f" % (key, depth)
    P["fewshot_jargon_1k"] = fewshot_jargon("fewshot_jargon_1k", jf, "cruft", 12)

    # --- ~2K tokens
    P["qa_persuasion_2k"] = doc_qa(
        "qa_persuasion_2k", austen(src, "persuasion"), "Chapter 1", 9400,
        "How many years had passed since Lady Elliot's death, and who was the intimate friend "
        "who had settled close by her in the village of Kellynch?",
        ["Thirteen years had passed away since Lady Elliot's death", "Lady Russell"])
    P["code_textwrap_2k"] = code_prefix("code_textwrap_2k", [(stdlib(src, "textwrap.py"), "textwrap.py")], 7600)
    p, term = lookup_jargon("lookup_jargon_2k", jf, "kluge", 8600, SEED)
    P[p["id"]], notes[p["id"]] = p, "asks for \"%s\"" % term

    # --- ~4K tokens
    p, key, depth = passkey("passkey_mobydick_4k", moby, "CHAPTER 3. The Spouter-Inn.", 16500, SEED)
    P[p["id"]], notes[p["id"]] = p, "pass key %d at depth %.2f" % (key, depth)
    P["sum_sockets_4k"] = summarize("sum_sockets_4k", pydoc(src, "howto/sockets.rst.txt"),
                                    "Socket Programming HOWTO", 16000,
                                    "a how-to guide from the Python documentation", reflow=False)
    P["code_statistics_4k"] = code_prefix("code_statistics_4k",
                                          [(stdlib(src, "statistics.py"), "statistics.py")], 13600)
    P["fewshot_pyfaq_4k"] = fewshot_faq(
        "fewshot_pyfaq_4k", pydoc(src, "faq/programming.rst.txt"),
        "Why am I getting an UnboundLocalError when the variable has a value?", 14900)

    # --- ~6K tokens
    P["sum_cfi_6k"] = summarize("sum_cfi_6k", cfi(src, "ch9web.htm"), "Chapter 9", 28500,
                                "a chapter of the book \"Copyright Does Not Exist\" by Linus Walleij")
    P["cont_emma_6k"] = continuation("cont_emma_6k", austen(src, "emma"), "CHAPTER X", 26500)
    P["qa_classes_6k"] = doc_qa(
        "qa_classes_6k", pydoc(src, "tutorial/classes.rst.txt"), "Scopes and Namespaces Example", 25500,
        "What is name mangling, and to which identifiers does it apply?",
        ["name mangling", "__spam"], reflow=False)

    # --- ~8K tokens (longest <= MAX_TOKENS with the chat wrapper)
    P["qa_northanger_8k"] = doc_qa(
        "qa_northanger_8k", austen(src, "northangerabbey"), "CHAPTER 20", 35500,
        "In the story Henry Tilney tells Catherine on the way to the abbey, what is the "
        "housekeeper's name, and what does Catherine find inside the cabinet of ebony and gold?",
        ["Dorothy", "ebony and gold", "roll of paper", "memoirs of the wretched Matilda"])
    p, key, depth = passkey("passkey_mobydick_8k", moby, "CHAPTER 41. Moby Dick.", 34000, SEED)
    P[p["id"]], notes[p["id"]] = p, "pass key %d at depth %.2f" % (key, depth)
    P["code_json_8k"] = code_prefix("code_json_8k", [
        (stdlib(src, "json/scanner.py"), "json/scanner.py"),
        (stdlib(src, "json/decoder.py"), "json/decoder.py"),
        (stdlib(src, "json/encoder.py"), "json/encoder.py"),
    ], 30500)

    order_default = [
        "cont_mobydick_1k", "passkey_jargon_1k", "fewshot_jargon_1k",
        "qa_persuasion_2k", "code_textwrap_2k", "lookup_jargon_2k",
        "passkey_mobydick_4k", "sum_sockets_4k", "code_statistics_4k", "fewshot_pyfaq_4k",
        "sum_cfi_6k", "cont_emma_6k", "qa_classes_6k",
        "qa_northanger_8k", "passkey_mobydick_8k", "code_json_8k",
    ]
    order_quick = ["cont_mobydick_1k", "fewshot_jargon_1k", "qa_persuasion_2k",
                   "code_textwrap_2k", "passkey_mobydick_4k", "sum_sockets_4k"]

    # --- smoke: three short prompts (~300-1,200 tokens)
    S = {}
    S["smoke_qa"] = doc_qa(
        "smoke_qa", austen(src, "prideprejudice"), "Chapter 1", 3600,
        "Who has taken Netherfield Park, according to Mrs. Bennet, and what is his name?",
        ["young man of large fortune from the north of England", "Bingley"])
    S["smoke_code"] = code_prefix("smoke_code", [(stdlib(src, "bisect.py"), "bisect.py")], 2200)
    p, key, depth = passkey("smoke_passkey", moby, "CHAPTER 2. The Carpet-Bag.", 2300, SEED)
    S[p["id"]], notes[p["id"]] = p, "pass key %d at depth %.2f" % (key, depth)

    # --- long: plain text for a 32K base model (Gemma 3 270M), ~2K, 8K, 16K and 30K
    # tokens of its tokenizer; spans apart from the sets above where they share a file
    L = {}
    L["long_cont_mansfield_2k"] = continuation("long_cont_mansfield_2k", austen(src, "mansfieldpark"),
                                               "CHAPTER I", 9600)
    L["long_code_difflib_2k"] = code_prefix("long_code_difflib_2k", [(stdlib(src, "difflib.py"), "difflib.py")],
                                            7600)
    L["long_sum_logging_8k"] = summarize("long_sum_logging_8k", pydoc(src, "howto/logging.rst.txt"),
                                         "Logging HOWTO", 34000, "a how-to guide from the Python documentation",
                                         reflow=False, raw=True)
    L["long_fewshot_pyfaq_8k"] = fewshot_faq(
        "long_fewshot_pyfaq_8k", pydoc(src, "faq/programming.rst.txt"),
        "How do I convert a number to a string?", 33000, max_answer=4000)
    p, key, depth = passkey("long_passkey_mobydick_16k", moby, "CHAPTER 60. The Line.", 70000, SEED, raw=True)
    L[p["id"]], notes[p["id"]] = p, "pass key %d at depth %.2f" % (key, depth)
    L["long_code_pydecimal_16k"] = code_prefix("long_code_pydecimal_16k",
                                               [(stdlib(src, "_pydecimal.py"), "_pydecimal.py")], 61500)
    p, term = lookup_jargon("long_lookup_jargon_30k", jf, "lag", 125500, SEED, raw=True)
    L[p["id"]], notes[p["id"]] = p, "asks for \"%s\"" % term
    L["long_cont_prideprejudice_30k"] = continuation("long_cont_prideprejudice_30k",
                                                     austen(src, "prideprejudice"), "Chapter 30", 139000)

    sets = {
        "default": [P[k] for k in order_default],
        "quick": [P[k] for k in order_quick],
        "smoke": [S[k] for k in ("smoke_qa", "smoke_code", "smoke_passkey")],
        "long": list(L.values()),
    }
    assert len(P) == len(order_default)
    return sets, notes


# ---------------------------------------------------------------------------
# Output

def to_jsonl(prompts):
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts).encode("utf-8")


class Counter:
    """transformers' tokenizer read from the GGUF. bos: count the BOS the model's
    runtime puts first (Gemma 3 adds one; SmolLM2's counts never had it)."""

    def __init__(self, model_dir, gguf_file, bos=False):
        try:
            from transformers import AutoTokenizer  # noqa: PLC0415
        except ImportError as e:
            raise BuildError("--count needs the Python package transformers (%s); run it with the "
                             "reference venv, e.g. .venv/bin/python" % e)
        path = Path(model_dir) / gguf_file
        if not path.is_file():
            raise BuildError("--count needs %s (scripts/fetch-model.sh)" % path)
        import logging  # noqa: PLC0415
        logging.getLogger("transformers").setLevel(logging.ERROR)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir), gguf_file=gguf_file)
        self.bos = bos

    def count(self, p):
        text = chat_wrap(p["text"]) if p["chat"] else p["text"]
        return len(self.tok(text, add_special_tokens=False)["input_ids"]) + (1 if self.bos else 0)


def readme_table(sets, counts, notes):
    rows = ["| set | id | task | chat | chars | tokens | source | note |",
            "|---|---|---|---|---:|---:|---|---|"]
    for name in ("default", "quick", "smoke", "long"):
        for p in sets[name]:
            n = counts.get(p["id"], "")
            rows.append("| %s | %s | %s | %s | %d | %s | `%s` | %s |" % (
                name, p["id"], p["task"], "yes" if p["chat"] else "no", len(p["text"]), n,
                p["source"].replace("|", "\\|"), notes.get(p["id"], "")))
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- prompt-table:begin -->", "<!-- prompt-table:end -->"


def update_readme(table, versions, hashes):
    path = OUT_DIR / "README.md"
    if not path.is_file():
        raise BuildError("%s is missing" % path)
    s = path.read_text(encoding="utf-8")
    if BEGIN not in s or END not in s:
        raise BuildError("%s lacks the %s / %s markers" % (path, BEGIN, END))
    pk = ["", "Built from these package versions and files (sha256):", ""]
    for pkg in sorted(versions):
        what, lic = PACKAGES.get(pkg, ("", ""))
        pk.append("- `%s` %s: %s (%s)" % (pkg, versions[pkg] or "(version unknown)", what, lic))
    pk.append("")
    for f in sorted(hashes):
        pk.append("- `%s` `%s`" % (f, hashes[f][:16]))
    body = "\n" + table + "\n".join(pk) + "\n"
    s = s[:s.index(BEGIN) + len(BEGIN)] + body + s[s.index(END):]
    path.write_text(s, encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="build in memory and compare with the files in data/prompts (exit 1 on a difference)")
    ap.add_argument("--fetch", action="store_true",
                    help="extract missing Debian packages into .deps/debroot (apt-get download, no install)")
    ap.add_argument("--count", action="store_true",
                    help="count tokens with the reference tokenizer (needs transformers and the model), "
                         "enforce the length limit and rewrite the table in data/prompts/README.md")
    ap.add_argument("--model-dir", default=str(REPO / "models"))
    ap.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="the tokenizer that counts default/quick/smoke")
    ap.add_argument("--gguf-long", default="gemma-3-270m-q4_k_m.gguf",
                    help="the tokenizer that counts the long set (BOS included)")
    ap.add_argument("--root", action="append", default=None,
                    help="where package files are looked up (repeatable; default: / then .deps/debroot)")
    ap.add_argument("--out", default=str(OUT_DIR), help="output folder (default data/prompts)")
    args = ap.parse_args(argv)

    roots = args.root or ["/", str(DEB_ROOT)]
    try:
        missing = missing_packages(roots)
        if missing and args.fetch:
            fetch_packages(missing)
            if str(DEB_ROOT) not in roots:
                roots.append(str(DEB_ROOT))
            missing = missing_packages(roots)
        if missing:
            raise BuildError(
                "source files are missing; they come from the Debian package(s) %s. Install them "
                "with `apt-get install -y %s`, or run this script with --fetch to extract them "
                "into .deps/debroot without installing (missing: %s)" % (
                    ", ".join(missing), " ".join(missing),
                    ", ".join(path for pkg, path in REQUIRED_FILES if not find_file(roots, path))))
        src = Sources(roots)
        sets, notes = build_all(src)
        ids = [p["id"] for name in ("default", "smoke", "long") for p in sets[name]]
        if len(ids) != len(set(ids)):
            raise BuildError("duplicate prompt ids")

        counter = Counter(args.model_dir, args.gguf) if args.count else None
        counter_long = Counter(args.model_dir, args.gguf_long, bos=True) if args.count else None
        out = Path(args.out)
        blobs = {name: to_jsonl(ps) for name, ps in sets.items()}
        if args.check:
            bad = []
            for name, blob in blobs.items():
                f = out / (name + ".jsonl")
                if not f.is_file() or f.read_bytes() != blob:
                    bad.append(str(f))
            if bad:
                print("build_prompts: differs from a fresh build: %s" % ", ".join(bad), file=sys.stderr)
                return 1
            print("build_prompts: %s match a fresh build" % ", ".join(n + ".jsonl" for n in blobs))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for name, blob in blobs.items():
                tmp = out / (name + ".jsonl.tmp")
                tmp.write_bytes(blob)
                os.replace(tmp, out / (name + ".jsonl"))
                print("wrote %s (%d prompts, %d bytes)" % (out / (name + ".jsonl"), len(sets[name]), len(blob)))

        counts = {}
        if args.count:
            c = counter
            over = []
            for name in ("default", "smoke"):
                for p in sets[name]:
                    counts[p["id"]] = c.count(p)
                    if counts[p["id"]] > MAX_TOKENS:
                        over.append("%s (%d)" % (p["id"], counts[p["id"]]))
            for p in sets["quick"]:
                counts.setdefault(p["id"], c.count(p))
            for p in sets["long"]:
                counts[p["id"]] = counter_long.count(p)
                if counts[p["id"]] > MAX_TOKENS_LONG:
                    over.append("%s (%d, %s)" % (p["id"], counts[p["id"]], args.gguf_long))
            for name in ("default", "quick", "smoke", "long"):
                for p in sets[name]:
                    print("%-8s %-22s %-18s %5s %6d chars %5d tokens" % (
                        name, p["id"], p["task"], "chat" if p["chat"] else "raw", len(p["text"]),
                        counts[p["id"]]))
            if over:
                raise BuildError("over %d tokens (chat wrapper included; long set: %d, BOS included): %s" % (
                    MAX_TOKENS, MAX_TOKENS_LONG, ", ".join(over)))
            if not args.check and Path(args.out).resolve() == OUT_DIR.resolve():
                versions = {pkg: package_version(pkg, roots) for pkg in
                            sorted({k.split(":", 1)[0] for k in src.used})}
                update_readme(readme_table(sets, counts, notes), versions, src.used)
                print("updated %s" % (OUT_DIR / "README.md"))
    except BuildError as e:
        print("build_prompts: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
