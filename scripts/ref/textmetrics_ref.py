#!/usr/bin/env python3
"""Independent reference for eval/textmetrics.c: LongBench's answer metrics in
plain Python, and the fixture tests/test_textmetrics.c compares against.

    python3 scripts/ref/textmetrics_ref.py                 # write tests/fixtures/textmetrics/cases.jsonl
    python3 scripts/ref/textmetrics_ref.py --check         # rebuild in memory, compare with the file
    python3 scripts/ref/textmetrics_ref.py --crosscheck DIR
        # also score every case with the packages LongBench itself imports
        # (rouge 1.0.1, fuzzywuzzy 0.18.0 without python-Levenshtein) found
        # under DIR, e.g. after
        #   .venv/bin/pip install --no-deps --target .deps/pyref rouge==1.0.1 fuzzywuzzy==0.18.0 six
    python3 scripts/ref/textmetrics_ref.py --c-tables      # print the Unicode tables of textmetrics.c

What is reproduced (LongBench metrics.py / eval.py, paraphrased in
../shared/reference/data-sources.md section 1.1):
  normalize   lower() -> drop string.punctuation -> \\b(a|an|the)\\b -> " " -> split/join
  qa_f1       token F1 of the normalized strings, multiset intersection
  rouge_l     pltrdy `rouge` 1.0.1 get_scores(...)["rouge-l"]["f"]: split on ".",
              pieces of length 0 dropped, whitespace collapsed, words split on " ",
              summary-level union LCS with *sets* of words (exclusive=True), the
              LCS reconstructed with rouge's tie rule; an empty hypothesis or
              reference (no sentence) scores 0 (LongBench catches the ValueError)
  classification  class names found as substrings, LongBench's removal loop
              (which skips the element after each removal: Python list.remove while
              iterating), 1/len(matches) when the ground truth is among them
  retrieval   ids from "Paragraph (\\d+)" in the ground truth, share of \\d+ runs of the
              prediction equal to it
  count       the same with the ground truth itself
  code_sim    first line after lstrip("\\n") without ` # //, fuzz.ratio / 100 where
              fuzz.ratio = 100 if equal, 0 if one is empty, else
              round(100 * difflib.SequenceMatcher(None, a, b).ratio()) (banker's rounding,
              difflib's autojunk heuristic included)
  first_int   InfiniteBench passkey: the first run of ASCII digits equals the label
  substring   RULER string_match_part: answer.lower() in prediction.lower()
  scorer      first line only (lstrip("\\n"), split("\\n")[0]) when asked; max over answers

Where the C port knowingly differs (documented in eval/textmetrics.h, avoided here):
  - lower() of U+03A3 (capital sigma) is context dependent in Python (final sigma);
    the C side always maps it to U+03C3. No case contains U+03A3.
  - rouge's LCS reconstruction is recursive: a sentence pair whose lengths sum past
    Python's recursion limit raises RecursionError and LongBench scores 0. This
    reference (and C) reconstructs iteratively; the cases keep sentences short.

Output format: JSON lines. Line 1 is {"meta": {...}} (unicode version, counts).
Other lines: {"fn": "normalize", "s", "want"} | {"fn": "seq", "a", "b", "matches",
"ratio", "fuzz", "autojunk_matters"} | {"fn": "score", "metric", "pred", "answers",
"all_classes", "first_line", "want", "what"}. The cases are seeded; the same
script gives the same bytes.
"""
import argparse
import difflib
import json
import os
import random
import re
import string
import sys
import unicodedata
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
OUT = REPO / "tests" / "fixtures" / "textmetrics" / "cases.jsonl"
SEED = 20261128

# ---------------------------------------------------------------------------
# The metrics

PUNCT = frozenset(string.punctuation)
ARTICLE_RE = re.compile(r"\b(a|an|the)\b")


def normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in PUNCT)
    s = ARTICLE_RE.sub(" ", s)
    return " ".join(s.split())


def token_f1(pred_tokens, gt_tokens):
    same = sum((Counter(pred_tokens) & Counter(gt_tokens)).values())
    if same == 0:
        return 0.0
    p = 1.0 * same / len(pred_tokens)
    r = 1.0 * same / len(gt_tokens)
    return (2 * p * r) / (p + r)


def qa_f1(pred, gt, classes=None):
    return token_f1(normalize(pred).split(), normalize(gt).split())


def _sentences(text):
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _words(sentence):
    return sentence.split(" ")


def _lcs_words(x, y):
    """Words of the LCS of x (reference) and y (hypothesis), in rouge's order of
    preference: diagonal on a match, up when table[i-1][j] > table[i][j-1], else left."""
    n, m = len(x), len(y)
    t = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if x[i - 1] == y[j - 1]:
                t[i][j] = t[i - 1][j - 1] + 1
            else:
                t[i][j] = max(t[i - 1][j], t[i][j - 1])
    out = []
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif t[i - 1][j] > t[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out


def rouge_l(pred, gt, classes=None):
    hyp, ref = _sentences(pred), _sentences(gt)
    if not hyp or not ref:
        return 0.0
    m = len({w for s in ref for w in _words(s)})
    n = len({w for s in hyp for w in _words(s)})
    union = set()
    for r in ref:
        rw = _words(r)
        for h in hyp:
            union.update(_lcs_words(rw, _words(h)))
    llcs = len(union)
    r_lcs = llcs / m
    p_lcs = llcs / n
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


def classification(pred, gt, classes):
    found = [c for c in classes if c in pred]
    # LongBench removes from the list it is iterating over; spell the iteration out.
    i = 0
    while i < len(found):
        t = found[i]
        if t in gt and t != gt:
            found.remove(t)
        i += 1
    return 1.0 / len(found) if gt in found else 0.0


def _share_equal(pred, target):
    nums = re.findall(r"\d+", pred)
    if not nums:
        return 0.0
    return float(sum(1 for x in nums if x == target) / len(nums))


def retrieval(pred, gt, classes=None):
    return _share_equal(pred, re.findall(r"Paragraph (\d+)", gt)[0])


def count(pred, gt, classes=None):
    return _share_equal(pred, str(gt))


def seq_matches(a, b, autojunk=True):
    sm = difflib.SequenceMatcher(None, a, b, autojunk=autojunk)
    return sum(blk.size for blk in sm.get_matching_blocks()), sm.ratio()


def fuzz_ratio(a, b):
    if a == b:
        return 100
    if len(a) == 0 or len(b) == 0:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim(pred, gt, classes=None):
    line = ""
    for cand in pred.lstrip("\n").split("\n"):
        if "`" not in cand and "#" not in cand and "//" not in cand:
            line = cand
            break
    return fuzz_ratio(line, gt) / 100


def first_int(pred, gt, classes=None):
    run = next((x for x in re.split("[^0-9]", pred) if x != ""), "")
    return 1.0 if run == gt else 0.0


def substring(pred, gt, classes=None):
    return 1.0 if gt.lower() in pred.lower() else 0.0


METRICS = {"qa_f1": qa_f1, "rouge_l": rouge_l, "classification": classification,
           "retrieval": retrieval, "count": count, "code_sim": code_sim,
           "first_int": first_int, "substring": substring}


def first_line(pred):
    return pred.lstrip("\n").split("\n")[0]


def score(metric, pred, answers, classes=None, only_first_line=False):
    if only_first_line:
        pred = first_line(pred)
    best = 0.0
    for gt in answers:
        best = max(best, METRICS[metric](pred, gt, classes))
    return best


# ---------------------------------------------------------------------------
# Cross-check against the packages LongBench imports

def crosscheck(cases, where):
    sys.path.insert(0, where)
    from fuzzywuzzy import fuzz  # noqa: PLC0415
    from rouge import Rouge  # noqa: PLC0415
    if fuzz.SequenceMatcher is not difflib.SequenceMatcher:
        raise SystemExit("crosscheck: fuzzywuzzy uses python-Levenshtein here; the pinned "
                         "behaviour is difflib's (install into a folder without Levenshtein)")

    def lb_rouge(pred, gt, classes=None):
        try:
            return Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]
        except Exception:  # LongBench's own bare except
            return 0.0

    def lb_code(pred, gt, classes=None):
        line = ""
        for cand in pred.lstrip("\n").split("\n"):
            if "`" not in cand and "#" not in cand and "//" not in cand:
                line = cand
                break
        return fuzz.ratio(line, gt) / 100

    def lb_classification(pred, gt, classes):
        found = [c for c in classes if c in pred]
        for t in found:  # LongBench's loop, removal while iterating included
            if t in gt and t != gt:
                found.remove(t)
        return 1.0 / len(found) if gt in found else 0.0

    other = dict(METRICS, rouge_l=lb_rouge, code_sim=lb_code, classification=lb_classification)
    bad = n = 0
    for c in cases:
        if c["fn"] == "seq":
            n += 1
            if fuzz.ratio(c["a"], c["b"]) != c["fuzz"]:
                bad += 1
                print("crosscheck: fuzz.ratio differs: %r" % c, file=sys.stderr)
        elif c["fn"] == "score" and c["metric"] in ("rouge_l", "code_sim", "classification"):
            n += 1
            pred = first_line(c["pred"]) if c["first_line"] else c["pred"]
            got = max([0.0] + [other[c["metric"]](pred, gt, c["all_classes"]) for gt in c["answers"]])
            if abs(got - c["want"]) > 1e-12:
                bad += 1
                print("crosscheck: %s differs (%r vs %r): %r" % (c["metric"], got, c["want"], c),
                      file=sys.stderr)
    print("crosscheck: %d cases against rouge/fuzzywuzzy/LongBench's loop, %d differ" % (n, bad), file=sys.stderr)
    return bad == 0


# ---------------------------------------------------------------------------
# Cases

# Word pool for random text: articles in all cases, punctuation-only tokens,
# digits (ASCII and other decimal scripts), accented/other-script words whose
# lower() is not ASCII's, a two-code-point lower() (U+0130), a titlecase digraph,
# numerics that are alnum but not decimal, emoji, combining marks.
WORDS = [
    "the", "The", "THE", "a", "A", "an", "An", "AN", "cat", "Cat", "dog", "ran", "house", "blue",
    "x", "of", "in", "on", "Paris", "paris", "PARIS", "42", "7", "1999", "3.14", "well-known",
    "it's", "don't", "U.S.A.", "e.g.", "(note)", "[x]", "foo_bar", "__init__", "another", "theme",
    "an-", "-a-", "a's", "the_", "_the", "a1", "1a",
    "!!!", "...", "-", "'", "?", ".", ",", "\"", "--",
    "caf\u00e9", "Caf\u00c9", "na\u00efve", "Stra\u00dfe", "STRASSE", "\u0391\u039b\u03a6\u0391",
    "\u03bb\u03cc\u03b3\u03bf\u03c2", "\u041c\u043e\u0441\u043a\u0432\u0430",
    "\u041c\u041e\u0421\u041a\u0412\u0410", "\u6771\u4eac", "\u65e5\u672c\u8a9e",
    "\u0130stanbul", "\u01c5emal", "\u0663\u0664", "\u0967\u0968", "\u00bd", "\u00b2",
    "\u2014", "\u2026", "\u201cquoted\u201d", "\U0001f642", "a\u0301", "\u00e0", "\u00c0",
    "\u1e9e", "\u2160", "\uff21\uff22",
]
SEPS = [" ", " ", " ", "  ", "\n", "\t", "", ". ", "\u3000", "\u00a0", "\x1c", "\u2003", ",", "\r\n"]

CLASSES = ["LOC", "LOCATION", "HUM", "HUMAN", "ABBR", "abbreviation", "NUM", "number",
           "animal", "plant", "food", "person", "artifact", "act", "location", "body",
           "Description", "desc", "ENTY", "entity"]

CODE = [
    "def __init__(self, width=70, initial_indent=\"\", subsequent_indent=\"\"):",
    "return self._wrap_chunks(chunks)",
    "for i, line in enumerate(lines):",
    "if not isinstance(value, (int, float)):",
    "raise ValueError(\"invalid literal for int() with base %d: %r\" % (base, s))",
    "self.assertEqual(result, expected)",
    "x = {k: v for k, v in sorted(items.items(), key=lambda kv: kv[1])}",
    "print(f\"{name!r}: {value:>10.3f}\")",
    "public static void main(String[] args) {",
    "int n = strlen(s); // length",
    "    while (p < end && *p != '\\n') p++;",
    "chunks.reverse()",
    "return ''.join(result)",
    "elif c in '\\t\\n\\x0b\\x0c\\r ':",
    "lo, hi = 0, len(a)",
    "yield from self._iter(node.left)",
    "caf\u00e9 = \"cr\u00e8me br\u00fbl\u00e9e\"  # unicode",
    "`code` in markdown",
    "# a comment line",
    "s = '\u6771\u4eac' + \"\U0001f642\"",
]


def rand_text(rng, lo, hi, words=WORDS, seps=SEPS):
    k = rng.randint(lo, hi)
    out = []
    for i in range(k):
        if i:
            out.append(rng.choice(seps))
        out.append(rng.choice(words))
    return "".join(out)


def mutate(rng, s, n_edits):
    alphabet = "abcdefxyz_(): =.,'\"0123456789\u00e9\u6771"
    s = list(s)
    for _ in range(n_edits):
        op = rng.randrange(3)
        pos = rng.randrange(len(s) + 1)
        if op == 0 or not s:
            s.insert(pos, rng.choice(alphabet))
        elif op == 1:
            del s[min(pos, len(s) - 1)]
        else:
            s[min(pos, len(s) - 1)] = rng.choice(alphabet)
    return "".join(s)


def long_line(rng):
    """A code line of 200+ code points: difflib's autojunk ignores, in b, every
    element that occurs more than len(b)//100 + 1 times."""
    kind = rng.randrange(3)
    if kind == 0:
        return "data = [" + ", ".join(str(rng.randrange(10)) for _ in range(rng.randint(70, 110))) + "]"
    if kind == 1:
        return "    " + " ".join(rng.choice(["self", "x", "=", "+", "(", ")", "foo", "bar", "0"])
                                   for _ in range(rng.randint(60, 90)))
    return "s = \"" + "".join(rng.choice("aaaaabbbc \u00e9\u6771") for _ in range(rng.randint(200, 320))) + "\""


def hand_cases():
    """(metric, pred, answers, classes, first_line, what): edge cases from
    data-sources.md section 4 and the quirks listed above."""
    C = []

    def add(metric, pred, answers, what, classes=None, fl=False):
        C.append((metric, pred, answers, classes, fl, what))

    # qa_f1
    add("qa_f1", "", ["Paris"], "empty prediction")
    add("qa_f1", "Paris", [""], "empty ground truth")
    add("qa_f1", "the a an", ["The"], "articles only: both empty after normalization")
    add("qa_f1", "!!! ...", ["?"], "punctuation only")
    add("qa_f1", "The Eiffel Tower, in Paris.", ["eiffel tower paris"], "case, punctuation, articles")
    add("qa_f1", "paris paris paris", ["Paris"], "repeated tokens (multiset)")
    add("qa_f1", "Paris", ["paris paris"], "repeated tokens in the ground truth")
    add("qa_f1", "London or Paris", ["Rome", "Paris", "paris, France"], "max over answers")
    add("qa_f1", "theatre another", ["the atre an other"], "articles only as whole words")
    add("qa_f1", "don't U.S.A.", ["dont usa"], "punctuation inside words")
    add("qa_f1", "caf\u00c9 STRASSE", ["caf\u00e9 strasse"], "unicode lower()")
    add("qa_f1", "\u0130stanbul", ["i\u0307stanbul"], "U+0130 lowers to two code points")
    add("qa_f1", "\u201cquoted\u201d \u2014 word", ["quoted word"], "non-ASCII punctuation is kept")
    add("qa_f1", "a\u3000b\u00a0c\x1cd", ["a b c d"], "unicode whitespace splits")
    add("qa_f1", "\u00e9a the\u00e9 a\u0663", ["a"], "article next to non-ASCII word characters")
    add("qa_f1", "the_ _the a1", ["the_ _the a1"], "underscore and digits are word characters")
    add("qa_f1", "Answer: 42", ["42"], "partial overlap")
    # rouge_l
    add("rouge_l", "", ["a summary."], "empty prediction")
    add("rouge_l", "...", ["a summary."], "dots only: no sentence")
    add("rouge_l", "a summary.", [""], "empty reference")
    add("rouge_l", "the cat sat on the mat", ["the cat sat on the mat"], "identical")
    add("rouge_l", "The cat sat", ["the cat sat"], "case sensitive")
    add("rouge_l", "the the the cat", ["the cat the"], "repeated words: sets")
    add("rouge_l", "cat sat. the mat is red. dogs bark", ["the cat sat on the mat. dogs bark loudly"],
        "several sentences, union LCS")
    add("rouge_l", "a  b\t\tc .  . d", ["a b c d"], "whitespace collapse and empty sentences")
    add("rouge_l", "x . y", ["x y"], "a space-only piece becomes the empty word")
    add("rouge_l", "b a", ["a b"], "LCS tie: which word the reconstruction keeps")
    add("rouge_l", "a b c", ["c b a"], "reversed order")
    add("rouge_l", "Stra\u00dfe caf\u00e9. \u6771\u4eac", ["caf\u00e9 Stra\u00dfe \u6771\u4eac"], "unicode words")
    # classification
    add("classification", "LOCATION", ["LOCATION"], "a class that contains another (LOC)", CLASSES)
    add("classification", "LOC", ["LOC"], "exact short class", CLASSES)
    add("classification", "HUMAN or LOC", ["HUMAN"], "two matches: 1/2", CLASSES)
    add("classification", "abbreviation", ["ABBR"], "case sensitive: no match", CLASSES)
    add("classification", "nothing", ["NUM"], "no class", CLASSES)
    add("classification", "LOC HUM", ["LOCATION"], "ground truth not predicted", CLASSES)
    add("classification", "desc Description entity", ["Description"],
        "removal loop skips the element after a removed one", ["desc", "Description", "entity"])
    add("classification", "desc Des Description", ["Description"],
        "two removable matches in a row: the second survives", ["desc", "Des", "Description"])
    add("classification", "animal\nplant", ["plant"], "first line only", CLASSES, True)
    add("classification", "\n\nplant\nanimal", ["plant"], "leading newlines stripped", CLASSES, True)
    # retrieval / count
    add("retrieval", "Paragraph 12", ["Paragraph 12"], "exact")
    add("retrieval", "Paragraph 3 and Paragraph 12", ["Paragraph 12"], "fractional: 1/2")
    add("retrieval", "12 12 7", ["Paragraph 12"], "2/3")
    add("retrieval", "no number", ["Paragraph 12"], "no integers")
    add("retrieval", "Paragraph 012", ["Paragraph 12"], "leading zero is a different string")
    add("retrieval", "\u0661\u0662 12", ["Paragraph 12"], "Arabic-Indic digits are a \\d run")
    add("retrieval", "Paragraph 5", ["Paragraph \u0665"], "non-ASCII id in the ground truth")
    add("count", "There are 7 unique paragraphs", ["7"], "count exact")
    add("count", "7 or 8", ["7"], "count 1/2")
    add("count", "3.5", ["5"], "decimal point splits runs")
    add("count", "", ["5"], "empty")
    # code_sim
    add("code_sim", "return x", ["return x"], "identical: 100")
    add("code_sim", "", ["return x"], "empty prediction")
    add("code_sim", "# comment\nreturn x", ["return x"], "answer after a comment line")
    add("code_sim", "\n\n  return y", ["  return x"], "leading newlines stripped")
    add("code_sim", "`x`\n// c\nfoo()", ["foo()"], "backtick and // lines skipped")
    add("code_sim", "# only comments\n# more", ["x = 1"], "no usable line: empty")
    add("code_sim", "# a\n", [""], "empty vs empty: equal, 100")
    add("code_sim", "abcd", ["bcde"], "plain ratio")
    add("code_sim", "a\r\nb", ["a"], "carriage return stays in the line")
    long_b = "x = [" + "0, " * 80 + "1]"
    add("code_sim", "x = [" + "0, " * 70 + "1]", [long_b], "long line: autojunk drops popular characters")
    add("code_sim", "ab", ["ab" * 150], "long reference, short prediction")
    # first_int / substring
    add("first_int", "The pass key is 12345.", ["12345"], "passkey found")
    add("first_int", "123456", ["12345"], "longer digit run is wrong")
    add("first_int", "key 1 then 12345", ["12345"], "only the first run counts")
    add("first_int", "\u0661\u0662\u0663 12345", ["12345"], "only ASCII digits count")
    add("first_int", "none", [""], "no digits equals an empty label")
    add("substring", "The special magic number is 7654321.", ["7654321"], "found")
    add("substring", "CAF\u00c9", ["caf\u00e9"], "case-insensitive unicode")
    add("substring", "765432", ["7654321"], "partial is not found")
    add("substring", "anything", [""], "empty answer always found")
    return C


def random_cases(rng):
    C = []
    for k in range(120):
        pred = rand_text(rng, 0, 12)
        answers = [rand_text(rng, 0, 8) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.4:  # overlap on purpose
            answers[0] = pred if rng.random() < 0.3 else mutate(rng, pred, 2) if pred else answers[0]
        C.append(("qa_f1", pred, answers, None, rng.random() < 0.2, "random %d" % k))
    sent_words = ["cat", "Cat", "dog", "sat", "on", "the", "mat", "red", "runs", "and", "caf\u00e9",
                  "\u6771\u4eac", "x", "y"]
    for k in range(80):
        pred = rand_text(rng, 0, 16, sent_words, [" ", " ", " ", ". ", ".", "  ", "\n", " . "])
        gt = rand_text(rng, 1, 16, sent_words, [" ", " ", " ", ". ", ".", "\t"])
        C.append(("rouge_l", pred, [gt], None, False, "random %d" % k))
    for k in range(50):
        cls = rng.sample(CLASSES, rng.randint(3, 10))
        gt = rng.choice(cls)
        parts = rng.sample(cls, rng.randint(0, 3)) + ([gt] if rng.random() < 0.5 else [])
        rng.shuffle(parts)
        pred = rng.choice(["", "Type: ", "The answer is "]) + rng.choice([" ", ", ", "\n"]).join(parts)
        C.append(("classification", pred, [gt], cls, rng.random() < 0.5, "random %d" % k))
    digits = ["1", "2", "3", "12", "21", "5", "05", "\u0661", "100"]
    for k in range(40):
        target = rng.choice(["1", "2", "12", "5", "21"])
        pred = rand_text(rng, 0, 6, digits + [target] * 4 + ["Paragraph", "and", "or", "."],
                         [" ", ", ", "", "-", " "])
        metric = rng.choice(["retrieval", "count"])
        gt = "Paragraph " + target if metric == "retrieval" else target
        C.append((metric, pred, [gt], None, False, "random %d" % k))
    for k in range(80):
        gt = long_line(rng) if k % 5 == 4 else rng.choice(CODE)
        pred = mutate(rng, gt, rng.randint(0, 12)) if rng.random() < 0.8 else rng.choice(CODE)
        if rng.random() < 0.25:
            pred = rng.choice(["# c\n", "\n", "`x`\n", "// x\n"]) + pred + "\nnext()"
        C.append(("code_sim", pred, [gt], None, False, "random %d" % k))
    for k in range(20):
        key = str(rng.randrange(10000, 100000))
        pred = rng.choice(["", "The pass key is ", "key: ", "\u0661 "]) + rng.choice(
            [key, key[:-1], key + "9", "0" + key, "x"]) + rng.choice(["", ".", " and 1"])
        C.append(("first_int", pred, [key], None, False, "random %d" % k))
        C.append(("substring", pred, [key], None, False, "random %d" % k))
    return C


def seq_cases(rng):
    out = []
    pairs = [("", ""), ("a", ""), ("", "a"), ("abc", "abc"), ("abcd", "bcde"), ("kitten", "sitting"),
             ("caf\u00e9", "cafe"), ("\u6771\u4eac\u90fd", "\u4eac\u90fd"), ("ab" * 150, "ab"),
             ("ab", "ab" * 150), ("a" * 199 + "b", "a" * 200), ("x" + "a" * 250, "a" * 250 + "x")]
    for _ in range(30):
        b = long_line(rng)
        pairs.append((mutate(rng, b, rng.randint(1, 30)), b))
    for _ in range(30):
        b = rng.choice(CODE)
        pairs.append((mutate(rng, b, rng.randint(1, 8)), b))
    for a, b in pairs:
        m, r = seq_matches(a, b)
        m_nojunk, _ = seq_matches(a, b, autojunk=False)
        out.append({"fn": "seq", "a": a, "b": b, "matches": m, "ratio": r, "fuzz": fuzz_ratio(a, b),
                    "autojunk_matters": m != m_nojunk})
    return out


def build():
    rng = random.Random(SEED)
    cases = []
    norm_inputs = ["", "The", "A cat, an apple & the end.", "  THE   theatre  ", "a.b", "\u0130\u0130",
                   "\u00c0 la carte", "x\u3000the\u00a0y", "!!!", "a-an-the", "\u01c5EMAL", "\u00e9the"]
    norm_inputs += [rand_text(rng, 0, 10) for _ in range(60)]
    for s in norm_inputs:
        cases.append({"fn": "normalize", "s": s, "want": normalize(s)})
    cases += seq_cases(rng)
    for metric, pred, answers, classes, fl, what in hand_cases() + random_cases(rng):
        for t in [pred] + answers + (classes or []):
            if "\u03a3" in t or "\0" in t:
                raise SystemExit("internal: a case contains U+03A3 or NUL")
        cases.append({"fn": "score", "metric": metric, "pred": pred, "answers": answers,
                      "all_classes": classes, "first_line": fl,
                      "want": score(metric, pred, answers, classes, fl), "what": what})
    counts = Counter(c["fn"] if c["fn"] != "score" else c["metric"] for c in cases)
    meta = {"meta": {"generator": "scripts/ref/textmetrics_ref.py", "seed": SEED,
                     "unicode": unicodedata.unidata_version,
                     "python": "%d.%d" % sys.version_info[:2], "counts": dict(sorted(counts.items())),
                     "autojunk_cases": sum(1 for c in cases if c.get("autojunk_matters"))}}
    lines = [json.dumps(meta, ensure_ascii=False)] + [json.dumps(c, ensure_ascii=False) for c in cases]
    return ("\n".join(lines) + "\n").encode("utf-8"), cases


# ---------------------------------------------------------------------------
# C tables

def _ranges(pred):
    out, start = [], None
    for c in range(0x110001):
        if c < 0x110000 and pred(c):
            if start is None:
                start = c
        elif start is not None:
            out.append((start, c - 1))
            start = None
    return out


def _lower_runs():
    """(lo, hi, stride, delta): every c in range(lo, hi + 1, stride) lowers to c + delta."""
    pairs = [(c, ord(chr(c).lower()) - c) for c in range(0x110000)
             if c != 0x130 and len(chr(c).lower()) == 1 and chr(c).lower() != chr(c)]
    runs = []
    for c, d in pairs:
        if runs:
            lo, hi, stride, delta = runs[-1]
            if delta == d and (c - hi == stride or (lo == hi and c - hi in (1, 2))):
                runs[-1] = (lo, c, c - hi, d)
                continue
        runs.append((c, c, 1, d))
    return runs


def c_tables():
    def emit(name, rows, fmt, per_line):
        lines = ["static const %s[] = {" % name]
        for i in range(0, len(rows), per_line):
            lines.append("    " + " ".join(fmt % r for r in rows[i:i + per_line]))
        lines.append("};")
        return "\n".join(lines)

    out = ["/* Generated by scripts/ref/textmetrics_ref.py --c-tables from Python %d.%d's str "
           "methods\n * (Unicode %s). Do not edit by hand. */" % (sys.version_info[0], sys.version_info[1],
                                                              unicodedata.unidata_version),
           "#define TM_UNICODE_VERSION \"%s\"" % unicodedata.unidata_version,
           "/* str.isalnum(): with '_' this is the \\w of Python's re for str patterns. */",
           emit("tm_range tm_alnum", _ranges(lambda c: chr(c).isalnum()), "{0x%X, 0x%X},", 5),
           "/* str.isdecimal(): the \\d of Python's re for str patterns. */",
           emit("tm_range tm_decimal", _ranges(lambda c: chr(c).isdecimal()), "{0x%X, 0x%X},", 5),
           "/* str.isspace(): what str.split() splits on. */",
           emit("tm_range tm_space", _ranges(lambda c: chr(c).isspace()), "{0x%X, 0x%X},", 5),
           "/* str.lower() for every code point with a one-code-point lower case\n"
           " * (U+0130 is special-cased in the code): {lo, hi, stride, delta}. */",
           emit("tm_lower_run tm_lower", _lower_runs(), "{0x%X, 0x%X, %d, %d},", 3)]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true", help="compare a fresh build with --out")
    ap.add_argument("--crosscheck", metavar="DIR",
                    help="also score rouge_l/code_sim/fuzz cases with rouge 1.0.1 + fuzzywuzzy 0.18.0 from DIR")
    ap.add_argument("--c-tables", action="store_true", help="print the C tables and exit")
    args = ap.parse_args()
    if args.c_tables:
        sys.stdout.write(c_tables())
        return 0
    blob, cases = build()
    if args.crosscheck and not crosscheck(cases, args.crosscheck):
        return 1
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_bytes() != blob:
            print("textmetrics_ref: %s differs from a fresh build" % out, file=sys.stderr)
            return 1
        print("textmetrics_ref: %s matches a fresh build (%d cases)" % (out, len(cases)))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, out)
    print("wrote %s (%d cases, %d bytes)" % (out, len(cases), len(blob)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
