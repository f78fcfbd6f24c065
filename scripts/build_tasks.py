#!/usr/bin/env python3
"""Build the offline LongBench-style task suites in data/tasks/ (issues 5 and 13).

Eight tasks in LongBench's categories, every sample made from text and code that
named Debian bookworm packages install, or by a seeded generator; a suite
definition (tasks, metrics, buckets, counts, seeds) is a config and the task
descriptions are in docs/tasks.md. Two suites share the generators:
    main  configs/tasks.json       data/tasks/{full,quick,standard}.jsonl + manifest.json
          (0-8K tokens, SmolLM2-135M-Instruct, chat where the task has it)
    long  configs/tasks-long.json  data/tasks/{long,long-quick}.jsonl + manifest-long.json
          (2-32K tokens, Gemma 3 270M base: plain text with answer prefixes,
          counted with its tokenizer, BOS included)
The build is deterministic: the same package files and config give
byte-identical files.

Usage:
    .venv/bin/python scripts/build_tasks.py             # write both suites' files
    .venv/bin/python scripts/build_tasks.py --check     # rebuild in memory, compare with the files
    python3 scripts/build_tasks.py --check-presets      # quick/standard vs their selection of full.jsonl,
                                                        # long-quick vs long.jsonl (no package files needed)
    python3 scripts/build_tasks.py --fetch              # first extract missing packages into .deps/debroot
    ... --suite main|long                               # one suite only (default: all; main
                                                        # for --calibrate and --baselines)
    .venv/bin/python scripts/build_tasks.py --suite main --calibrate 1 [--tasks passkey,...]
        # greedy full-KV decoding with the transformers reference on the first N
        # samples of each task and bucket, scored with scripts/ref/textmetrics_ref.py
        # (--suite long runs Gemma 3 270M, the long config's tokenizer model)

Token counts: "n_tokens" is the length of the model input (the prompt wrapped in
the chat template when "chat" is true, then "answer_prefix"; when "chat" is
false and the prefix is not empty the prompt ends with a blank line), counted
for a config with a "tokenizer" object by transformers' tokenizer of that GGUF
(HFTokenCounter; "n_tokens_by" is the object's "name"), else with the
reference tokenizer (scripts/ref/make_tokenizer_fixture.py: the GGUF's vocabulary
and merges, llama.cpp's "smollm" pre-tokenizer; equal to capture/tokenizer.c on
its fixture) when the `tokenizers` and `gguf` packages and the model file are
there; "n_tokens_by" says "tokenizer". Without them it is the estimate the
generators size their contexts with, ceil(1.1 x the number of GPT-2-style
pre-tokens), "n_tokens_by": "estimate", and the build does not enforce buckets.
Content never depends on the tokenizer, so --check without one compares every
field except those two.

Record (one JSON object per line):
    id, task, category, bucket, n_tokens, n_tokens_by, metric, max_new_tokens,
    first_line (score only the first line, LongBench's few-shot rule), chat,
    prompt (the task template already applied: the user message when chat),
    answer_prefix (appended after the assistant turn starts, RULER-style; may be
    ""), answers (list; score = max over them), all_classes (classification
    only, else null), depth (needle position in [0, 1], or null), source
    ("PACKAGE:PATH[OBJECT]#START-END", several joined by " ; ", plus what the
    generator added).
"""
import argparse
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import tokenize
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline_sources as osrc  # noqa: E402
from offline_sources import Rng, SourceError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "tasks.json"
CONFIG_LONG = REPO / "configs" / "tasks-long.json"
OUT_DIR = REPO / "data" / "tasks"


class BuildError(Exception):
    pass


# ---------------------------------------------------------------------------
# Package files

PYDOC_LIB = "/usr/share/doc/python3.11/html/_sources/library/"
AUSTEN_BASE = "/usr/lib/R/site-library/janeaustenr/data/Rdata"
MOBY_BASE = "/usr/lib/R/site-library/tokenizers/data/Rdata"
JARGON = "/usr/share/doc/jargon-text/jargon.txt.gz"
WORDNET = "/usr/share/wordnet/"
COUNTRIES = "/usr/share/misc/countries.gz"

# Python modules for code completion: long (>= 50 KB), and not ones Debian's
# security updates usually touch (network, archives, parsers of untrusted data).
CODE_FILES = [
    ("libpython3.11-stdlib", "difflib.py"), ("libpython3.11-minimal", "inspect.py"),
    ("libpython3.11-minimal", "argparse.py"), ("libpython3.11-minimal", "typing.py"),
    ("libpython3.11-stdlib", "dataclasses.py"), ("libpython3.11-minimal", "enum.py"),
    ("libpython3.11-minimal", "configparser.py"), ("libpython3.11-minimal", "ast.py"),
    ("libpython3.11-minimal", "pickle.py"), ("libpython3.11-minimal", "collections/__init__.py"),
    ("libpython3.11-minimal", "optparse.py"), ("libpython3.11-stdlib", "_pydecimal.py"),
    ("libpython3.11-minimal", "locale.py"), ("libpython3.11-stdlib", "doctest.py"),
    ("libpython3.11-stdlib", "turtle.py"), ("libpython3.11-minimal", "logging/__init__.py"),
    ("libpython3.11-stdlib", "unittest/case.py"), ("libpython3.11-minimal", "threading.py"),
]

NOVELS = ["emma", "persuasion", "prideprejudice", "sensesensibility", "mansfieldpark", "northangerabbey"]

FILES = ([("r-cran-janeaustenr", AUSTEN_BASE + ext) for ext in (".rdx", ".rdb")] +
         [("r-cran-tokenizers", MOBY_BASE + ext) for ext in (".rdx", ".rdb")] +
         [("jargon-text", JARGON), ("miscfiles", COUNTRIES)] +
         [("wordnet-base", WORDNET + f) for f in ("data.noun", "index.adj", "index.noun")] +
         [(pkg, "/usr/lib/python3.11/" + f) for pkg, f in CODE_FILES] +
         [("python3.11-doc", PYDOC_LIB + "zipfile.rst.txt")])  # the library folder is listed at build time

PACKAGES = {
    "r-cran-janeaustenr": ("Jane Austen's six novels (R data)", "public domain (package: MIT)"),
    "r-cran-tokenizers": ("Moby-Dick, Project Gutenberg #2701 (R data)", "public domain (package: MIT)"),
    "jargon-text": ("The Jargon File 4.4.7", "public domain"),
    "miscfiles": ("country table (/usr/share/misc/countries)", "GPL-2+ / public domain"),
    "wordnet-base": ("WordNet 3.0 database", "WordNet 3.0 license (permissive, notice required)"),
    "python3.11-doc": ("Python 3.11 documentation sources (reST)", "PSF License Version 2"),
    "libpython3.11-minimal": ("Python 3.11 standard library (core modules)", "PSF License Version 2"),
    "libpython3.11-stdlib": ("Python 3.11 standard library", "PSF License Version 2"),
}


# ---------------------------------------------------------------------------
# Token estimate (the generators size contexts with it; see the module docstring)

PRETOK = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d|\d| ?[^\s\w]+|\s+(?!\S)|\s+|_+")


def cost(s):
    """Estimated tokens of s as a float: additive over the pieces of a text."""
    return 1.1 * len(PRETOK.findall(s))


def est_tokens(s):
    return int(math.ceil(cost(s)))


def model_input(rec):
    text = osrc.chat_wrap(rec["prompt"]) if rec["chat"] else rec["prompt"]
    return text + rec["answer_prefix"]


def fill(units, budget, start=0):
    """How many of units[start:] (joined by blank lines) come closest to budget
    estimated tokens, never more than 3% over it."""
    total, n = 0.0, 0
    for u in units[start:]:
        t = cost(u) + 1
        if n and total + t > budget:
            if total + t - budget < budget - total and total + t <= 1.03 * budget:
                n += 1
            break
        total += t
        n += 1
    return n


# ---------------------------------------------------------------------------
# Sources, parsed once

class Material:
    def __init__(self, src):
        self.src = src
        self._cache = {}

    def _memo(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def prose(self, name):
        """(doc, paragraphs) of a novel, paragraphs reflowed to single lines,
        the front matter (title pages, Gutenberg header) skipped."""
        def make():
            if name == "mobydick":
                doc = self.src.rdata("r-cran-tokenizers", MOBY_BASE, "mobydick")
                start = doc.find("CHAPTER 1. Loomings.")
            else:
                doc = self.src.rdata("r-cran-janeaustenr", AUSTEN_BASE, name)
                m = re.search(r"^(CHAPTER|Chapter) (1|I)\b", doc.text, re.M)
                if not m:
                    raise BuildError("%s: no first chapter heading" % doc.ref)
                start = m.start()
            paras = [p for p in osrc.paragraphs(doc, start) if len(p[2]) >= 2]
            return doc, paras
        return self._memo(("prose", name), make)

    def jargon(self):
        def make():
            doc = self.src.text("jargon-text", JARGON)
            out = []
            for s, e, head, rest, body in osrc.jargon_entries(doc):
                if not body:
                    continue
                text = (":%s: %s" % (head, rest)).strip()
                parts = []
                for _, _, t in body:
                    if parts and len(" ".join(parts)) + len(t) > 1200:
                        break
                    parts.append(t)
                out.append({"start": s, "end": e, "head": head, "text": text + "\n" + "\n".join(parts)})
            return doc, out
        return self._memo("jargon", make)

    def wordnet(self):
        """{category: [(word, definition)]} for the classes of fewshot_wordnet."""
        def make():
            doc = self.src.text("wordnet-base", WORDNET + "data.noun")
            cats = {int(k): v for k, v in WORDNET_CLASSES.items()}
            out = {v: [] for v in cats.values()}
            for line in doc.text.split("\n"):
                if not line or line.startswith("  "):
                    continue
                head, _, gloss = line.partition(" | ")
                f = head.split()
                lex = int(f[1])
                if lex not in cats:
                    continue
                word = f[4].replace("_", " ")
                definition = gloss.split('; "')[0].strip().rstrip(";").strip()
                if not re.fullmatch(r"[a-z][a-z ]{2,24}", word) or not 20 <= len(definition) <= 160:
                    continue
                if '"' in definition:
                    continue
                out[cats[lex]].append((word, definition, "%s:%s" % (f[0], word)))
            return doc, out
        return self._memo("wordnet", make)

    def words(self, kind):
        """Lower-case alphabetic lemmas (3-9 letters) of WordNet's index.adj / index.noun."""
        def make():
            doc = self.src.text("wordnet-base", WORDNET + "index." + kind)
            return sorted({ln.split(" ", 1)[0] for ln in doc.text.split("\n")
                           if ln and not ln.startswith("  ") and re.fullmatch(r"[a-z]{3,9}", ln.split(" ", 1)[0])})
        return self._memo(("words", kind), make)

    def countries(self):
        def make():
            doc = self.src.text("miscfiles", COUNTRIES)
            out = []
            for line in doc.text.split("\n"):
                if not line or line.startswith("#"):
                    continue
                num, iso2, iso3, name, capital = line.split(":")
                if not capital or re.search(r"[(,]", capital + name):
                    continue
                out.append({"num": num, "iso2": iso2, "iso3": iso3, "name": name, "capital": capital})
            return doc, out
        return self._memo("countries", make)

    def pydoc_pages(self):
        """Library pages with a module synopsis: [(doc, synopsis, body text, body offset)]."""
        def make():
            pages = []
            for path in self.src.list_dir("python3.11-doc", PYDOC_LIB, ".rst.txt"):
                doc = self.src.text("python3.11-doc", path)
                m = re.search(r"^\.\. module:: \S+\n(?:   :\w+:.*\n)*?   :synopsis: (.+)\n", doc.text, re.M)
                if not m:
                    continue
                synopsis = " ".join(m.group(1).split())
                # The page without the directive block that holds the synopsis (and
                # author lines); the title, which often paraphrases it, stays.
                body = doc.text[:m.start()] + doc.text[m.end():]
                body = re.sub(r"^\.\. (module|moduleauthor|sectionauthor|versionadded):: .*\n(   :\w+:.*\n)*",
                              "", body, flags=re.M)
                body = re.sub(r"\n{3,}", "\n\n", body)
                if synopsis.lower() in body.lower():
                    continue
                # the title's own one-line description (":mod:`x` --- Does y") is a
                # second, human-written reference summary
                t = re.match(r"\s*:mod:`[^`]+`\s*(?:---|\u2014)\s*(.+)\n", body)
                refs = [synopsis] + ([t.group(1).strip()] if t and t.group(1).strip() != synopsis else [])
                pages.append((doc, refs, body, m.group(0).split("::", 1)[1].split()[0]))
            return pages
        return self._memo("pydoc", make)

    def code(self, pkg, name):
        return self._memo(("code", name), lambda: self.src.text(pkg, "/usr/lib/python3.11/" + name))


class PackageSources(osrc.Sources):
    def list_dir(self, pkg, folder, suffix):
        """Sorted files of a package folder (first root that has it); each becomes readable."""
        for root in self.roots:
            d = root / folder.lstrip("/")
            if d.is_dir():
                names = sorted(p.name for p in d.iterdir() if p.name.endswith(suffix) and p.is_file())
                paths = [folder + n for n in names]
                for p in paths:
                    self.allowed.add((pkg, p))
                return paths
        raise SourceError("missing folder %s: it comes from the Debian package '%s'" % (folder, pkg))


WORDNET_CLASSES = {"05": "animal", "06": "artifact", "08": "body", "13": "food", "15": "location",
                   "18": "person", "20": "plant", "27": "substance"}


# ---------------------------------------------------------------------------
# Generators. Each returns the task-specific fields of a record; `budget` is the
# estimated size of the whole model input, `depth` a position in [0, 1].

def _wrap_overhead(chat, head, tail, prefix):
    pieces = osrc.chat_wrap(head + tail) if chat else head + tail
    return est_tokens(pieces + prefix) + 2


def _haystack(mat, rng, budget):
    """Consecutive paragraphs of a random novel, about `budget` estimated tokens:
    [(start, end, text)]; the last one may be cut after a sentence to come closer."""
    name = rng.choice(NOVELS + ["mobydick"])
    doc, paras = mat.prose(name)
    texts = [t for _, _, t in paras]
    start = rng.below(max(1, len(texts) - _tail_margin(texts, budget, 600)))
    n = fill(texts, budget, start)
    if start + n >= len(texts):
        raise BuildError("%s: text too short for %d tokens" % (doc.ref, budget))
    chosen = list(paras[start:start + n])
    room = budget - sum(cost(t) + 1 for _, _, t in chosen)
    if room > 20:
        s0, e0, nxt = paras[start + n]
        ends = [e for e in osrc.sentence_ends(nxt) if cost(nxt[:e]) + 1 <= room]
        if ends:
            chosen.append((s0, e0, nxt[:ends[-1]]))
    return doc, chosen


def _tail_margin(texts, budget, floor):
    """How many units a random start must leave after it: `floor` (what the
    8K suite used, which keeps its samples as they were), or more when the last
    `floor` units hold less than 1.2 x budget estimated tokens (long contexts)."""
    acc, m = 0.0, 0
    for t in reversed(texts):
        if acc >= 1.2 * budget:
            break
        acc += cost(t) + 1
        m += 1
    return max(floor, m)


def _insert_at(n_paras, depth):
    return max(1, min(n_paras - 1, int(round(n_paras * depth))))


def gen_passkey(mat, rng, budget, depth, task):
    key = str(rng.randint(10000, 99999))
    needle = "The pass key is %s. Remember it. %s is the pass key." % (key, key)
    head = ("There is an important piece of information hidden inside a lot of irrelevant text. "
            "Find it and memorize it. I will quiz you about it afterwards.\n\n")
    tail = "\n\nWhat is the pass key? Answer with the number only."
    prefix = "The pass key is"
    doc, paras = _haystack(mat, rng, budget - _wrap_overhead(True, head, tail, prefix) - est_tokens(needle))
    texts = [t for _, _, t in paras]
    at = _insert_at(len(texts), depth)
    texts.insert(at, needle)
    return {"prompt": head + "\n\n".join(texts) + tail, "answer_prefix": prefix, "answers": [key],
            "depth": round(at / len(texts), 4),
            "source": doc.source(paras[0][0], paras[-1][1]) + " ; generated pass key"}


def _word_keys(mat, rng, n):
    adjs, nouns = mat.words("adj"), mat.words("noun")
    keys, seen = [], set()
    while len(keys) < n:
        k = "%s-%s" % (rng.choice(adjs), rng.choice(nouns))
        if k not in seen:
            seen.add(k)
            keys.append(k)
    return keys


# InfiniteBench's noise line for its synthetic retrieval tasks.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def gen_kv_retrieval(mat, rng, budget, depth, task):
    """8 records "The value of the key "K" is V." (K adjective-noun, V 7 digits)
    spread through repeated filler text; the queried one at `depth`."""
    n_keys = 8
    keys = _word_keys(mat, rng, n_keys)
    values = [str(rng.randint(1000000, 9999999)) for _ in keys]
    recs = ["The value of the key \"%s\" is %s." % (k, v) for k, v in zip(keys, values)]
    q = rng.below(n_keys)
    head = ("There are some important pieces of information hidden inside a lot of irrelevant text: the "
            "values of some keys. Find them and memorize them. I will ask you for the value of one key "
            "afterwards.\n\n")
    tail = "\n\nWhat is the value of the key \"%s\"? Answer with the number only." % keys[q]
    prefix = "The value of the key \"%s\" is" % keys[q]
    room = budget - _wrap_overhead(True, head, tail, prefix) - sum(cost(r) + 1 for r in recs)
    lines = [FILLER] * max(n_keys + 1, int(round(room / (cost(FILLER) + 1))))
    slots = {q: _insert_at(len(lines), depth)}
    for i in range(n_keys):
        if i != q:
            slots[i] = rng.randint(1, len(lines) - 1)
    for i in sorted(range(n_keys), key=lambda i: (-slots[i], i)):
        lines.insert(slots[i], recs[i])
    at = lines.index(recs[q])
    return {"prompt": head + "\n".join(lines) + tail, "answer_prefix": prefix, "answers": [values[q]],
            "depth": round(at / len(lines), 4),
            "source": "wordnet-base:%sindex.adj,index.noun (keys) ; generated values ; InfiniteBench "
                      "filler line" % WORDNET}


def gen_multikey_needle(mat, rng, budget, depth, task):
    keys = _word_keys(mat, rng, 4)
    values = [str(rng.randint(1000000, 9999999)) for _ in keys]
    needles = ["One of the special magic numbers for %s is: %s." % (k, v) for k, v in zip(keys, values)]
    q = rng.below(4)
    head = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the numbers afterwards.\n\n")
    tail = "\n\nWhat is the special magic number for %s mentioned in the provided text?" % keys[q]
    prefix = "The special magic number for %s mentioned in the provided text is" % keys[q]
    doc, paras = _haystack(mat, rng, budget - _wrap_overhead(True, head, tail, prefix) -
                           sum(est_tokens(n) + 1 for n in needles))
    texts = [t for _, _, t in paras]
    # the queried needle at `depth`, the three others anywhere else
    slots = {q: _insert_at(len(texts), depth)}
    for i in range(4):
        if i != q:
            slots[i] = rng.randint(1, len(texts) - 1)
    for i in sorted(range(4), key=lambda i: (-slots[i], i)):  # insert from the back: indices stay valid
        texts.insert(slots[i], needles[i])
    at_q = texts.index(needles[q])
    return {"prompt": head + "\n\n".join(texts) + tail, "answer_prefix": prefix, "answers": [values[q]],
            "depth": round(at_q / len(texts), 4),
            "source": doc.source(paras[0][0], paras[-1][1]) +
            " ; wordnet-base:%sindex.adj,index.noun (keys) ; generated values" % WORDNET}


def gen_doc_qa(mat, rng, budget, depth, task):
    """A question about one Python library page whose answer one sentence of the
    page states (a release year, inserted at `depth` between blocks; the year is
    made up, so memory of the real history does not help)."""
    head = "Read the following page of the Python documentation and answer the question after it.\n\n"
    tail_t = "\n\nQuestion: According to the page, in which year was the %s module first released? Answer with the year only."
    prefix_t = "According to the page, the %s module was first released in"
    room = budget - _wrap_overhead(True, head, tail_t % "xxxxxxxx", prefix_t % "xxxxxxxx") - 20
    pages = [p for p in mat.pydoc_pages() if cost(p[2]) >= room]
    if not pages:
        raise BuildError("doc_qa: no page reaches %d tokens" % room)
    doc, refs, body, module = rng.choice(pages)
    blocks = body.split("\n\n")
    n = fill(blocks, room)
    year = str(rng.randint(1990, 2019))
    evidence = "The %s module was first released in %s." % (module, year)
    at = max(1, min(n - 1, int(round(depth * n))))
    kept = blocks[:n]
    kept.insert(at, evidence)
    return {"prompt": head + "\n\n".join(kept).rstrip() + tail_t % module,
            "answer_prefix": prefix_t % module, "answers": [year], "depth": round(at / len(kept), 4),
            "source": "%s (first %d blocks) ; generated evidence sentence" % (doc.ref, n)}


def gen_factsheet_qa(mat, rng, budget, depth, task):
    """Documents of the Jargon File (one entry each) with 4 country fact sheets
    among them; the capitals are permuted among the 4 (counterfactual, so the
    answer has to come from the documents); one sheet, at `depth`, is asked about."""
    jdoc, entries = mat.jargon()
    cdoc, countries = mat.countries()
    head = ("The following documents come from different sources. The facts in them may differ from what "
            "you know: answer from the documents only.\n\n")
    tail_t = ("\n\nAccording to the documents, what is the capital city of %s? Answer with the name of "
              "the city only.")
    prefix_t = "The capital city of %s is"
    sheets_t = ("{name}\n{name} has the ISO code {iso3} and the two-letter code {iso2}. The capital city of "
                "{name} is {capital}. The United Nations country number of {name} is {num}.")
    chosen_c = rng.sample(countries, 4)
    fake = [dict(c, capital=chosen_c[(i + 1) % 4]["capital"]) for i, c in enumerate(chosen_c)]
    sheets = [sheets_t.format(**c) for c in fake]
    q = rng.below(4)
    room = (budget - _wrap_overhead(True, head, tail_t % fake[q]["name"], prefix_t % fake[q]["name"]) -
            sum(cost(x) + 6 for x in sheets))
    texts = [e["head"] + "\n" + e["text"] for e in entries]
    start = rng.below(len(texts) - _tail_margin(texts, room, 300))
    n = fill(texts, room, start)
    docs = texts[start:start + n]
    slots = {q: max(0, min(len(docs), int(round(depth * len(docs)))))}
    for i in range(4):
        if i != q:
            slots[i] = rng.randint(0, len(docs))
    for i in sorted(range(4), key=lambda i: (-slots[i], i)):
        docs.insert(slots[i], sheets[i])
    at = docs.index(sheets[q])
    ctx = "\n\n".join("Document %d: %s" % (k + 1, d) for k, d in enumerate(docs))
    return {"prompt": head + ctx + tail_t % fake[q]["name"], "answer_prefix": prefix_t % fake[q]["name"],
            "answers": [fake[q]["capital"]], "depth": round(at / len(docs), 4),
            "source": "%s ; %s (4 countries, capitals permuted)" % (
                jdoc.source(entries[start]["start"], entries[start + n - 1]["end"]), cdoc.ref)}


def gen_synopsis_summ(mat, rng, budget, depth, task):
    head = ("You are given a page of the Python standard library documentation. Write a one-sentence "
            "summary of what the module does.\n\nDocumentation:\n")
    tail = "\n\nNow, write a one-sentence summary of what the module does."
    # A base model (no chat turn) needs the answer's start spelled out.
    prefix = "" if task["chat"] else "Summary:"
    room = budget - _wrap_overhead(True, head, tail, prefix)
    pages = [p for p in mat.pydoc_pages() if est_tokens(p[2]) >= room]
    if not pages:
        raise BuildError("synopsis_summ: no page reaches %d tokens" % room)
    doc, refs, body, _ = rng.choice(pages)
    blocks = body.split("\n\n")
    n = fill(blocks, room)
    text = "\n\n".join(blocks[:n]).rstrip()
    return {"prompt": head + text + tail, "answer_prefix": prefix, "answers": refs, "depth": None,
            "source": "%s (first %d blocks, module/synopsis directive removed)" % (doc.ref, n)}


def gen_fewshot_wordnet(mat, rng, budget, depth, task):
    """TREC-style classification of a word from its WordNet gloss into 8
    lexicographer categories, from many labelled examples. The query's own
    labelled example is one of them, at `depth`: the task then needs the long
    context (as TREC's near-duplicate questions do) and a 135M model can
    follow it, which it cannot do from the other examples alone (measured)."""
    doc, by_cat = mat.wordnet()
    cats = sorted(by_cat)
    head = ("Here are words with their dictionary definitions and their categories. The categories are: "
            "%s.\n\n" % ", ".join(cats))
    shot_t = "Definition: %s\nThe category of the word \"%s\" is %s."
    qcat = rng.choice(cats)
    query = rng.choice(by_cat[qcat])
    used = {query[0]}
    twin = shot_t % (query[1], query[0], qcat)
    tail = ("\n\nDefinition: %s\nWhat is the category of the word \"%s\"? Answer with one of the "
            "categories." % (query[1], query[0]))
    prefix = "The category of the word \"%s\" is" % query[0]
    room = budget - _wrap_overhead(True, head, tail, prefix) - cost(twin) - 1
    shots, total = [], 0
    while True:
        order = list(cats)
        rng.shuffle(order)
        done = False
        for c in order:
            w = rng.choice(by_cat[c])
            if w[0] in used:
                continue
            s = shot_t % (w[1], w[0], c)
            t = cost(s) + 1
            if shots and total + t > room:
                done = True
                break
            used.add(w[0])
            shots.append(s)
            total += t
        if done:
            break
    at = max(0, min(len(shots), int(round(depth * len(shots)))))
    shots.insert(at, twin)
    return {"prompt": head + "\n\n".join(shots) + tail, "answer_prefix": prefix,
            "answers": [qcat], "all_classes": cats, "depth": round(at / len(shots), 4),
            "source": "wordnet-base:%sdata.noun (%d glosses; query synset %s)" % (WORDNET, len(shots),
                                                                             query[2])}


SKIP_LINES = {"else:", "try:", "pass", "return", "break", "continue", "finally:", "return None",
              "return True", "return False", "raise", "return self"}


def _code_lines_ok(text):
    """Per line: usable as a completion target (not in a multi-line string, not a
    comment, not blank, at least 12 characters, not a lone keyword or bracket)."""
    lines = text.split("\n")
    ok = [True] * len(lines)
    # Python 3.12+ splits f-strings into FSTRING_START .. FSTRING_END tokens;
    # treat those spans like STRING so every version marks the same lines.
    fstart = getattr(tokenize, "FSTRING_START", None)
    fend = getattr(tokenize, "FSTRING_END", None)
    open_f = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        span = None
        if tok.type == tokenize.STRING:
            span = (tok.start[0], tok.end[0])
        elif fstart is not None and tok.type == fstart:
            open_f.append(tok.start[0])
        elif fend is not None and tok.type == fend and open_f:
            span = (open_f.pop(), tok.end[0])
        if span and span[1] > span[0]:
            for r in range(span[0], span[1] + 1):
                ok[r - 1] = False
    for i, ln in enumerate(lines):
        s = ln.strip()
        if (len(s) < 12 or s.startswith("#") or s in SKIP_LINES or re.fullmatch(r"[\])}:,\s]*", s)
                or s.startswith(('"""', "'''", '"', "'"))):
            ok[i] = False
    return lines, ok


def gen_code_lcc(mat, rng, budget, depth, task):
    # Raw continuation of the file (LongBench's "Please complete the code given
    # below ... Next line of code:" wrapper makes the 135M instruct model answer
    # in markdown); a path header says what the file is.
    room = budget - _wrap_overhead(False, "# Path: Lib/collections/__init__.py\n", "", "")
    files = list(CODE_FILES)
    rng.shuffle(files)
    for pkg, name in files:
        doc = mat.code(pkg, name)
        lines, ok = _code_lines_ok(doc.text)
        # per-line estimates, scaled to the whole text's (a newline and the next
        # line's indentation are one pre-token in running text, two apart)
        lcost = [cost(ln + "\n") for ln in lines]
        scale = cost(doc.text) / max(1.0, sum(lcost))
        lcost = [c * scale for c in lcost]
        # first line index whose prefix reaches the budget
        acc, first = 0, None
        for i, c in enumerate(lcost):
            acc += c
            if acc >= room:
                first = i + 1
                break
        if first is None:
            continue
        cands = []
        for t in range(first, len(lines)):
            if not ok[t]:
                continue
            # context: lines [a, t) with about `room` tokens
            acc, a = 0, t
            while a > 0 and acc + lcost[a - 1] <= room:
                a -= 1
                acc += lcost[a]
            # No newline at the end: a newline and the next line's indentation
            # are one token in running code, so a prompt ending in a bare "\n"
            # is off-distribution (the model then starts lines with "#").
            ctx = "\n".join(lines[a:t])
            # The line and the one before it occur together earlier in the
            # context, outside its last quarter: the completion then depends on
            # far context (what KV selection can lose), and a 135M model can
            # make it (measured: on arbitrary lines it scores below repeating the
            # previous line).
            pair = lines[t - 1] + "\n" + lines[t] + "\n"
            i = (ctx + "\n").find(pair)
            if lines[t - 1].strip() and 0 <= i < int(0.75 * len(ctx)):
                cands.append((t, a, ctx, i))
        if not cands:
            continue
        t, a, ctx, i = cands[min(len(cands) - 1, int(depth * len(cands)))]
        start = sum(len(ln) + 1 for ln in lines[:a])
        head = "# Path: Lib/%s\n" % name
        return {"prompt": head + ctx, "answer_prefix": "", "answers": [lines[t].rstrip()],
                "depth": round((len(head) + i) / (len(head) + len(ctx)), 4),
                "source": "%s ; target line %d" % (doc.source(start, start + len(ctx)), t + 1)}
    raise BuildError("code_lcc: no file has a target line for %d tokens" % room)


GENERATORS = {
    "passkey": gen_passkey, "kv_retrieval": gen_kv_retrieval, "multikey_needle": gen_multikey_needle,
    "doc_qa": gen_doc_qa, "factsheet_qa": gen_factsheet_qa, "synopsis_summ": gen_synopsis_summ,
    "fewshot_wordnet": gen_fewshot_wordnet, "code_lcc": gen_code_lcc,
}

# Margins inside a bucket for the estimate-driven sizing: targets stay within
# [lo * LO_MARGIN, hi * HI_MARGIN] estimated tokens so that the real count
# (0.89x..1.07x of the estimate on this suite; Gemma 3's tokenizer 0.90x..1.09x)
# still lands in the bucket. A config may set its own ("margins": [lo, hi]).
LO_MARGIN, HI_MARGIN = 1.15, 0.88

# Between the question and the answer prefix when there is no chat turn (a base
# model reads one plain text: "...? Answer with the number only.\n\nThe pass key is").
RAW_SEPARATOR = "\n\n"


# ---------------------------------------------------------------------------
# The suite

def load_config(path):
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError("%s: %s" % (path, e))
    names = [t["name"] for t in cfg["tasks"]]
    for t in cfg["tasks"]:
        if t["name"] not in GENERATORS:
            raise BuildError("%s: task %r has no generator" % (path, t["name"]))
        if t["metric"] not in ("qa_f1", "rouge_l", "classification", "retrieval", "count", "code_sim",
                               "first_int", "substring"):
            raise BuildError("%s: task %r: unknown metric %r" % (path, t["name"], t["metric"]))
    if len(set(names)) != len(names):
        raise BuildError("%s: duplicate task names" % path)
    return cfg


def build_records(cfg, mat, only=None, log=None):
    per = cfg["presets"]["full"]["per_bucket"]
    lo_m, hi_m = cfg.get("margins", [LO_MARGIN, HI_MARGIN])
    recs = []
    for task in cfg["tasks"]:
        if only and task["name"] not in only:
            continue
        for b in cfg["buckets"]:
            lo, hi = b["lo"] * lo_m, min(b["hi"], cfg["context_limit"] - task["max_new_tokens"]) * hi_m
            for k in range(per):
                rng = Rng(cfg["seed"], task["name"], task["version"], b["name"], k)
                target = int(lo + (hi - lo) * (k + rng.uniform()) / per)
                depth = 0.05 + 0.9 * (k + rng.uniform()) / per
                fields = GENERATORS[task["name"]](mat, rng, target, depth, task)
                if not task["chat"] and fields["answer_prefix"]:
                    fields["prompt"] += RAW_SEPARATOR
                rec = {"id": "%s-%s-%02d" % (task["name"], b["name"], k), "task": task["name"],
                       "category": task["category"], "bucket": b["name"], "n_tokens": 0,
                       "n_tokens_by": "estimate", "metric": task["metric"],
                       "max_new_tokens": task["max_new_tokens"], "first_line": task["first_line"],
                       "chat": task["chat"], "prompt": fields["prompt"],
                       "answer_prefix": fields["answer_prefix"], "answers": fields["answers"],
                       "all_classes": fields.get("all_classes"), "depth": fields["depth"],
                       "source": fields["source"]}
                rec["n_tokens"] = est_tokens(model_input(rec))
                recs.append(rec)
            if log:
                log("built %s %s" % (task["name"], b["name"]))
    return recs


class TokenCounter:
    """The reference tokenizer of scripts/ref/make_tokenizer_fixture.py."""

    def __init__(self, gguf_path):
        sys.path.insert(0, str(REPO / "scripts" / "ref"))
        try:
            from make_tokenizer_fixture import build_reference, read_gguf_vocab  # noqa: PLC0415
            self.tok = build_reference(read_gguf_vocab(str(gguf_path)))
        except ImportError as e:
            raise BuildError("counting tokens needs the Python packages tokenizers and gguf (%s); use "
                             ".venv/bin/python" % e)
        self.path = gguf_path

        self.label = "tokenizer"

    def ids(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def count(self, text):
        return len(self.ids(text))

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def eos_ids(self):
        return {self.tok.token_to_id("<|im_end|>"), self.tok.token_to_id("<|endoftext|>")}


class HFTokenCounter:
    """transformers' tokenizer read from a GGUF (AutoTokenizer.from_pretrained(dir,
    gguf_file=...)): the reference for models other than SmolLM2 (for Gemma 3 it
    gives the ids of capture/tokenizer.c, tests/fixtures/tokenizer_gemma3.jsonl).
    A config's "tokenizer" object names it: {"gguf": path, "bos": true|false,
    "name": what "n_tokens_by" records}. The text is encoded as one string,
    control tokens not parsed (as the C runner does for "chat": false) and BOS
    first when "bos"; the build stops if parsing them would give other ids."""

    def __init__(self, spec, gguf_path):
        try:
            import logging  # noqa: PLC0415
            from transformers import AutoTokenizer  # noqa: PLC0415
        except ImportError as e:
            raise BuildError("counting tokens for this suite needs the Python package transformers (%s); "
                             "use .venv/bin/python" % e)
        logging.getLogger("transformers").setLevel(logging.ERROR)
        gguf_path = Path(gguf_path)
        self.tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        self.bos = bool(spec.get("bos"))
        if self.bos and self.tok.bos_token_id is None:
            raise BuildError("%s: the config asks for BOS, the tokenizer has none" % gguf_path)
        self.path = gguf_path
        self.label = spec["name"]

    def ids(self, text):
        ids = self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if ids != self.tok(text, add_special_tokens=False)["input_ids"]:
            raise BuildError("a model input spells a control token (%r...): its count would depend on "
                             "special-token parsing" % text[:60])
        return ([self.tok.bos_token_id] if self.bos else []) + list(ids)

    def count(self, text):
        return len(self.ids(text))

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def eos_ids(self):
        out = {self.tok.eos_token_id}
        eot = self.tok.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(eot, int) and eot != self.tok.unk_token_id:
            out.add(eot)
        return out


def make_counter(cfg, gguf):
    spec = cfg.get("tokenizer")
    return HFTokenCounter(spec, gguf) if spec else TokenCounter(gguf)


def model_path(cfg, arg):
    """The GGUF whose tokenizer counts n_tokens: --model, else the config's
    "tokenizer.gguf", else SmolLM2's (the 8K suite)."""
    if arg:
        return arg
    spec = cfg.get("tokenizer")
    return str(REPO / spec["gguf"]) if spec else str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def apply_counts(cfg, recs, counter):
    bounds = {b["name"]: (b["lo"], b["hi"]) for b in cfg["buckets"]}
    bad = []
    for r in recs:
        n = counter.count(model_input(r))
        r["n_tokens"], r["n_tokens_by"] = n, counter.label
        lo, hi = bounds[r["bucket"]]
        if not lo <= n < hi or n + r["max_new_tokens"] > cfg["context_limit"]:
            bad.append("%s (%d tokens, bucket %d-%d)" % (r["id"], n, lo, hi))
    if bad:
        raise BuildError("outside their bucket: %s" % ", ".join(bad))


def to_jsonl(recs):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")


def select_preset(cfg, recs, name):
    """The records of a preset drawn from the full suite: "select" lists
    [task, bucket, k] triples (kept in that order), "samples" maps task ->
    bucket -> [k, ...] (kept in the full suite's order: task, bucket, k)."""
    pre = cfg["presets"][name]
    by_id = {r["id"]: r for r in recs}
    if "select" in pre:
        want = [tuple(x) for x in pre["select"]]
    else:
        per = cfg["presets"]["full"]["per_bucket"]
        tasks = [t["name"] for t in cfg["tasks"]]
        buckets = [b["name"] for b in cfg["buckets"]]
        for task, cells in pre["samples"].items():
            bad = ([task] if task not in tasks else []) + [b for b in cells if b not in buckets]
            bad += ["%s %s %r" % (task, b, ks) for b, ks in cells.items()
                    if len(set(ks)) != len(ks) or any(not isinstance(k, int) or not 0 <= k < per for k in ks)]
            if bad:
                raise BuildError("%s preset: unknown task/bucket or bad sample indices (0..%d, each once): %s" % (
                    name, per - 1, ", ".join(bad)))
        want = [(t, b, k) for t in tasks for b in buckets for k in sorted(pre["samples"].get(t, {}).get(b, []))]
    out = []
    for task, bucket, k in want:
        rid = "%s-%s-%02d" % (task, bucket, k)
        if rid not in by_id:
            raise BuildError("%s preset names %s, which the full suite lacks" % (name, rid))
        out.append(by_id[rid])
    return out


def preset_blobs(cfg, recs):
    """{file name: bytes} of the full suite and of every preset drawn from it."""
    blobs = {Path(cfg["presets"]["full"]["file"]).name: to_jsonl(recs)}
    for name, pre in cfg["presets"].items():
        if name != "full":
            blobs[Path(pre["file"]).name] = to_jsonl(select_preset(cfg, recs, name))
    return blobs


def check_presets(cfg, out):
    """The presets' files against a selection from the committed full suite
    (no package files needed): the bytes of each, and full.jsonl's own JSON
    round trip. Returns a list of problems."""
    full = out / Path(cfg["presets"]["full"]["file"]).name
    if not full.is_file():
        return ["%s (missing)" % full]
    blob = full.read_bytes()
    recs = [json.loads(ln) for ln in blob.decode("utf-8").splitlines()]
    bad = [] if to_jsonl(recs) == blob else ["%s (not in the builder's JSON form)" % full]
    for name, want in preset_blobs(cfg, recs).items():
        f = out / name
        if not f.is_file():
            bad.append("%s (missing)" % f)
        elif f.read_bytes() != want:
            bad.append("%s (differs from its selection of %s)" % (f, full.name))
    return bad


def manifest(cfg, blobs, src, roots, counter, config_path=CONFIG):
    versions = {pkg: osrc.package_version(pkg, roots) for pkg in sorted({k.split(":", 1)[0] for k in src.used})}
    out = {
        "suite": cfg["suite"], "version": cfg["version"],
        "config_sha256": hashlib.sha256(Path(config_path).read_bytes()).hexdigest(),
        "tasks": {t["name"]: t["version"] for t in cfg["tasks"]},
        "n_tokens_by": counter.label if counter else "estimate",
        "tokenizer_gguf": Path(counter.path).name if counter else None,
        "outputs": {name: {"records": blob.count(b"\n"), "bytes": len(blob),
                           "sha256": hashlib.sha256(blob).hexdigest()} for name, blob in sorted(blobs.items())},
        "packages": {p: {"version": v, "what": PACKAGES.get(p, ("", ""))[0], "license": PACKAGES.get(p, ("", ""))[1]}
                     for p, v in versions.items()},
        "files": dict(sorted(src.used.items())),
    }
    if "manifest" in cfg:  # a second suite's manifest names its config (the first's is configs/tasks.json)
        c = Path(config_path).resolve()
        out = dict(out, config=str(c.relative_to(REPO)) if c.is_relative_to(REPO) else str(c))
    return out


def manifest_name(cfg):
    return Path(cfg.get("manifest", "data/tasks/manifest.json")).name


def strip_counts(blob):
    lines = []
    for ln in blob.decode("utf-8").splitlines():
        r = json.loads(ln)
        r.pop("n_tokens", None)
        r.pop("n_tokens_by", None)
        lines.append(json.dumps(r, ensure_ascii=False))
    return lines


# ---------------------------------------------------------------------------
# Calibration: full-KV greedy decoding with the transformers reference

def calibrate(cfg, recs, gguf, n_per, tasks, log):
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415
    sys.path.insert(0, str(REPO / "scripts" / "ref"))
    import textmetrics_ref as tm  # noqa: PLC0415
    # One thread: on a shared 2-core machine two OpenMP threads spin against
    # each other and decode runs 15x slower (measured).
    torch.set_num_threads(1)
    counter = make_counter(cfg, gguf)
    model = AutoModelForCausalLM.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name,
                                                 dtype=torch.float32)
    model.eval()
    eos = counter.eos_ids()
    seen, rows = {}, []
    for r in recs:
        key = (r["task"], r["bucket"])
        if (tasks and r["task"] not in tasks) or seen.get(key, 0) >= n_per:
            continue
        seen[key] = seen.get(key, 0) + 1
        ids = counter.ids(model_input(r))
        out = []
        t0 = time.time()
        with torch.no_grad():
            # Only the last position's logits (Gemma 3's 262K vocabulary over a
            # 10K-token input would take 10 GB); inputs past 8K are prefilled in
            # chunks of 4K through the cache, which bounds the attention scores.
            past, chunk = None, len(ids) if len(ids) <= 8192 else 4096
            for i in range(0, len(ids), chunk):
                res = model(torch.tensor([ids[i:i + chunk]]), past_key_values=past, use_cache=True,
                            logits_to_keep=1)
                past = res.past_key_values
            logits = res.logits[0, -1]
            for _ in range(r["max_new_tokens"]):
                nxt = int(torch.argmax(logits))
                if nxt in eos:
                    break
                out.append(nxt)
                res = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True, logits_to_keep=1)
                past, logits = res.past_key_values, res.logits[0, -1]
        pred = counter.decode(out)
        s = tm.score(r["metric"], pred, r["answers"], r["all_classes"], r["first_line"])
        rows.append({"id": r["id"], "task": r["task"], "bucket": r["bucket"], "n_tokens": len(ids),
                     "score": s, "pred": pred, "answers": r["answers"], "seconds": round(time.time() - t0, 1)})
        log("%-28s %5d tok  %.2f  %r  (want %r)" % (r["id"], len(ids), s, pred[:70], r["answers"][0][:40]))
    return rows


def baselines(recs):
    """Scores of answers that need no model, per task: what "above chance" is
    measured against. code_lcc: the last non-blank line of the context again;
    synopsis_summ: a fixed generic sentence; fewshot_wordnet: each category
    always (the best one reported); the retrieval and QA tasks: the answer of
    another sample of the same task (a plausible-looking wrong answer)."""
    sys.path.insert(0, str(REPO / "scripts" / "ref"))
    import textmetrics_ref as tm  # noqa: PLC0415
    out = {}
    by_task = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
    for task, rs in by_task.items():
        scores = []
        for i, r in enumerate(rs):
            if task == "code_lcc":
                pred = [ln for ln in r["prompt"].split("\n") if ln.strip()][-1]
            elif task == "synopsis_summ":
                pred = "This module provides functions and classes for working with Python objects."
            elif task == "fewshot_wordnet":
                pred = None
            else:
                pred = " " + rs[(i + 1) % len(rs)]["answers"][0]
            if pred is None:
                continue
            scores.append(tm.score(r["metric"], pred, r["answers"], r["all_classes"], r["first_line"]))
        if task == "fewshot_wordnet":
            cats = rs[0]["all_classes"]
            scores = max(([tm.score(r["metric"], " " + c, r["answers"], r["all_classes"], r["first_line"])
                           for r in rs] for c in cats), key=sum)
        out[task] = sum(scores) / len(scores)
    return out


# ---------------------------------------------------------------------------

SUITES = {"main": [CONFIG], "long": [CONFIG_LONG], "all": [CONFIG, CONFIG_LONG]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default=None,
                    help="which suite: main (configs/tasks.json, 8K, SmolLM2), long (configs/tasks-long.json, "
                         "32K, Gemma 3) or all (default; main with --calibrate and --baselines)")
    ap.add_argument("--check", action="store_true", help="rebuild in memory and compare with data/tasks")
    ap.add_argument("--check-presets", action="store_true",
                    help="compare the presets' files (quick, standard, long-quick) with their selection of "
                         "the committed full set; needs no package files")
    ap.add_argument("--fetch", action="store_true",
                    help="extract missing Debian packages into .deps/debroot (apt-get download, no install)")
    ap.add_argument("--no-count", action="store_true", help="do not count tokens even if the tokenizer is there")
    ap.add_argument("--model", default=None,
                    help="GGUF whose tokenizer counts n_tokens (and that --calibrate runs); default: the "
                         "config's \"tokenizer\".gguf, else models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--config", default=None, help="one suite config instead of --suite's")
    ap.add_argument("--out", default=str(OUT_DIR))
    ap.add_argument("--root", action="append", default=None,
                    help="where package files are looked up (repeatable; default: / then .deps/debroot)")
    ap.add_argument("--calibrate", type=int, metavar="N", default=0,
                    help="decode the first N samples per task and bucket at full KV (transformers) and score them")
    ap.add_argument("--tasks", default="", help="comma-separated task names (with --calibrate)")
    ap.add_argument("--buckets", default="", help="comma-separated bucket names (with --calibrate)")
    ap.add_argument("--calibrate-json", default="", help="write the calibration rows here")
    ap.add_argument("--baselines", action="store_true", help="print model-free baseline scores per task")
    args = ap.parse_args(argv)
    one = args.calibrate or args.baselines
    configs = [Path(args.config)] if args.config else SUITES[args.suite or ("main" if one else "all")]
    if one and len(configs) > 1:
        ap.error("--calibrate and --baselines take one suite: --suite main or --suite long")
    rc = 0
    for config in configs:
        rc = max(rc, run_suite(args, config))
    return rc


def run_suite(args, config):
    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    roots = list(args.root) if args.root else ["/", str(osrc.DEB_ROOT)]
    t0 = time.time()
    try:
        cfg = load_config(config)
        if args.check_presets:
            bad = check_presets(cfg, Path(args.out))
            if bad:
                log("build_tasks: differs: %s" % ", ".join(bad))
                return 1
            print("build_tasks: %s match their selection of %s" % (
                ", ".join(Path(p["file"]).name for n, p in cfg["presets"].items() if n != "full"),
                Path(cfg["presets"]["full"]["file"]).name))
            return 0
        src = PackageSources(roots, FILES)
        missing = src.missing_packages()
        if missing and args.fetch:
            osrc.fetch_packages(missing, log)
            if str(osrc.DEB_ROOT) not in roots:
                roots.append(str(osrc.DEB_ROOT))
            src = PackageSources(roots, FILES)
            missing = src.missing_packages()
        if missing:
            raise BuildError("source files are missing; they come from the Debian package(s) %s. Install "
                             "them with `apt-get install -y %s`, or run this script with --fetch" % (
                                 ", ".join(missing), " ".join(missing)))
        mat = Material(src)
        only = {t for t in args.tasks.split(",") if t} if args.calibrate else None
        recs = build_records(cfg, mat, only=only)
        gguf = model_path(cfg, args.model)
        counter = None
        if not args.no_count and Path(gguf).is_file():
            try:
                counter = make_counter(cfg, gguf)
            except BuildError as e:
                log("build_tasks: not counting tokens: %s" % e)
        elif not args.no_count:
            log("build_tasks: not counting tokens: %s is not there (scripts/fetch-model.sh)" % gguf)
        if args.baselines:
            for task, v in baselines(recs).items():
                print("%-18s baseline %.3f" % (task, v))
            return 0
        if counter and not args.calibrate:
            apply_counts(cfg, recs, counter)
        if args.calibrate:
            want_b = {b for b in args.buckets.split(",") if b}
            rows = calibrate(cfg, [r for r in recs if not want_b or r["bucket"] in want_b], gguf,
                             args.calibrate, only, log)
            if args.calibrate_json:
                Path(args.calibrate_json).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
            return 0
        blobs = preset_blobs(cfg, recs)
        out = Path(args.out)
        if args.check:
            bad = []
            for name, blob in blobs.items():
                f = out / name
                if not f.is_file():
                    bad.append("%s (missing)" % f)
                elif counter and f.read_bytes() != blob:
                    bad.append(str(f))
                elif not counter and strip_counts(f.read_bytes()) != strip_counts(blob):
                    bad.append(str(f))
            if bad:
                old = {}
                mf = out / manifest_name(cfg)
                if mf.is_file():
                    old = json.loads(mf.read_text(encoding="utf-8")).get("files", {})
                changed = [k for k, v in src.used.items() if old.get(k) not in (None, v)]
                log("build_tasks: differs from a fresh build: %s%s" % (
                    ", ".join(bad), "; source files that changed since the manifest: " + ", ".join(changed)
                    if changed else ""))
                return 1
            print("build_tasks: %s match a fresh build%s" % (
                ", ".join(blobs), "" if counter else " (n_tokens not compared: no tokenizer)"))
            return 0
        out.mkdir(parents=True, exist_ok=True)
        blobs[manifest_name(cfg)] = (json.dumps(manifest(cfg, blobs, src, roots, counter, config), indent=1,
                                                ensure_ascii=False) + "\n").encode("utf-8")
        for name, blob in blobs.items():
            tmp = out / (name + ".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, out / name)
            print("wrote %s (%d bytes)" % (out / name, len(blob)))
        for b in cfg["buckets"]:
            ns = [r["n_tokens"] for r in recs if r["bucket"] == b["name"]]
            print("  bucket %-6s %3d records, n_tokens %d..%d (%s)" % (
                b["name"], len(ns), min(ns), max(ns), recs[0]["n_tokens_by"]))
        print("  %s: %.0f s" % (Path(config).name, time.time() - t0))
    except (BuildError, SourceError) as e:
        print("build_tasks: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
