#!/usr/bin/env python3
"""Reference token ids for tests/test_tokenizer.c (tests/fixtures/tokenizer_smollm2.jsonl).

    .venv/bin/python scripts/ref/make_tokenizer_fixture.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--out tests/fixtures/tokenizer_smollm2.jsonl]

Which reference, and why
------------------------
The GGUF says tokenizer.ggml.pre = "smollm". llama.cpp runs that as two regex
splits one after the other: `\\p{N}` (every number code point alone), then the
GPT-2 pattern. In HF terms that is the original SmolLM2 tokenizer.json
pre-tokenizer: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)].

transformers (5.x) rebuilds the tokenizer from the GGUF differently: "smollm"
is not in its table of GGUF pre-tokenizer splits, so it falls back to the GPT-2
ByteLevel regex alone and does NOT split digits ("2024" stays one piece for
the regex, and " 42" keeps its space). Where that matters the GGUF-built
tokenizer and llama.cpp disagree. So the expected ids here come from an
explicit `tokenizers` pipeline built from the GGUF's own vocabulary and merges:

    BPE(vocab, merges) + pre_tokenizer Sequence[Digits(individual_digits=True),
    ByteLevel(add_prefix_space=False, use_regex=True)] + the 17 control tokens
    (token_type 3) as special added tokens.

The transformers GGUF tokenizer is run on every string too; where it differs
its ids are stored under "tf_gguf" (documentation only, the C test ignores
them), and the header line counts the differences. (Checked when this was
written, transformers 5.24 / tokenizers 0.23.3: 16 of 1234 strings differ, all
contain \p{N} code points, and the same pipeline without the Digits step
reproduces transformers' ids on all 1234 -- the digit split is the only
difference.)

Bytes with no one-byte token in the vocabulary (SmolLM2 lacks 21: some C0
controls, 0xC0/0xC1, 0xF1/0xF2, 0xF5..0xFF) are dropped by HF and llama.cpp
alike; the header lists them.

Unicode: HF tokenizers 0.23 classifies \\p{L}/\\p{N}/\\s with Unicode 16.0
(Oniguruma, Rust std); the C tables are from Debian's Unicode 15.0. Random
code points are drawn only from those assigned in Python's unicodedata
(Unicode 14.0 here), so the fixture does not exercise the 15.1/16.0 additions.

Format: JSON lines. Line 1 is a header object ("meta"). Every other line:
  {"text": str, "ids": [...]}            ids with special tokens parsed
  optional "ids_raw": [...]              ids with special parsing off, when different
  optional "tf_gguf": [...]              transformers' GGUF tokenizer, when different
No text contains U+0000 (the C side reads strings NUL-terminated via cJSON).
Generation is seeded and reproducible (same Python stdlib files -> same output).

Second output, tests/fixtures/pretok_patterns.jsonl: the pre-tokenizer split
alone (no vocabulary) for the four patterns, from `tokenizers`
Split(Regex(pattern), "isolated") -- the GPT-2, Llama 3 and Qwen 2 regexes
exactly as in capture/tokenizer.c (Qwen 2's is also checked equal to
transformers' Qwen2 PRETOKENIZE_REGEX), smollm as Digits(individual) then
GPT-2: {"pre": "gpt2"|"llama3"|"qwen2"|"smollm", "text": str,
"ends": [byte offset of each piece end]}. gpt2 and smollm run on a subset of
the strings (315); llama3 and qwen2 on every string of at most 600 characters
plus digit-heavy extras (>= 1,000 each). This checks the hand-written C
matchers against a real regex engine (Oniguruma).
"""
import argparse
import glob
import json
import os
import random
import sys
import unicodedata

SEED = 20240607
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
            "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
            "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
            "<jupyter_script>", "<empty_output>"]


def read_gguf_vocab(path):
    from gguf import GGUFReader
    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    def scalar_str(key):
        f = r.fields.get(key)
        return bytes(f.parts[-1]).decode("utf-8") if f else None

    return {
        "model": scalar_str("tokenizer.ggml.model"),
        "pre": scalar_str("tokenizer.ggml.pre"),
        "tokens": strings("tokenizer.ggml.tokens"),
        "types": ints("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
    }


def build_reference(v):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    vocab = {}
    for i, t in enumerate(v["tokens"]):
        vocab[t] = i
    merges = []
    for m in v["merges"]:
        k = m.index(" ", 1)  # llama.cpp's split: first space after position 0
        merges.append((m[:k], m[k + 1:]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, normalized=False, special=True)
                for t, ty in zip(v["tokens"], v["types"]) if ty == 3]
    tok.add_special_tokens(specials)
    return tok


# ---------------------------------------------------------------- strings

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Attention maps show which tokens a model looks at when it predicts the next one.",
    "In 1905, Einstein published four papers; each changed physics.",
    "She said: \"It's not what you think.\" Then she left.",
    "Mr. Smith's car -- a 1967 Mustang -- wasn't for sale.",
    "What is the capital of France? Paris, of course.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "E-mail me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "Prices rose 3.5% in Q3 (vs. 2.1% in Q2), according to the report.",
    "The well-known state-of-the-art model -- trained on 2T tokens -- performs well.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "mixedCase camelCase snake_case kebab-case PascalCase",
    "Is this the real life? Is this just fantasy?",
    "Once upon a time, in a land far, far away...",
    "Footnote[1] and reference (see p. 42, fig. 3b).",
    "#hashtag @mention $dollar %percent ^caret &ampersand *star",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "Über naïve café résumé coöperate façade jalapeño",
    "C'est la vie. L'homme qu'il a vu. Aujourd'hui.",
    "Ich heiße Max und wohne in München.",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Hyphen-ated, semi;colon, colon: dash—em dash – en dash.",
    "Tabs\tbetween\twords\tand trailing tab\t",
    "Ellipsis… and “smart quotes” and ‘single’ ones.",
]

WORDS = ("the of and to in is was for on that with as it by at from his her they be this have are "
         "not but had an which one you were all we she there been their if has more when will would "
         "who so no model token attention layer head matrix vector prompt output input GPU tensor "
         "Hugging Face SmolLM transformer neural network gradient loss batch").split()

CJK = ["你好，世界！", "我们今天去公园散步吧。", "日本語のテキストです。", "こんにちは、元気ですか？",
       "カタカナとひらがなと漢字", "안녕하세요 세계", "한국어 문장입니다.", "中文标点：“引号”、《书名》",
       "東京タワーは333メートルです", "漢字かな交じり文"]
EMOJI = ["😀", "🙂", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "🔥", "🚀", "🤖", "💯",
         "🧑🏿‍💻", "✨", "☕", "🎉"]
RTL = ["مرحبا بالعالم", "السلام عليكم ورحمة الله", "שלום עולם", "עברית מימין לשמאל",
       "English then عربي then English", "فارسی: سلام دوست من"]
OTHER_SCRIPTS = ["Привет, мир!", "Ελληνικά γράμματα αβγδ", "สวัสดีครับ", "नमस्ते दुनिया",
                 "বাংলা ভাষা", "தமிழ் மொழி", "ქართული ენა", "Հայերեն", "ᚠᚢᚦᚨᚱᚲ", "ⲁⲃⲅ",
                 "Tiếng Việt có dấu", "İstanbul ığüşöç", "ß ẞ ſ ﬁ ﬂ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙"]
COMBINING = ["e\u0301", "a\u0300\u0301\u0302", "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
             "n\u0303o\u0308", "\u0915\u094d\u0937", "A\u030a ngstr\u00f6m", "\u0301leading mark",
             "x\u20dd", "1\ufe0f\u20e3", "ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ"]
UNI_DIGITS = ["٠١٢٣٤٥٦٧٨٩", "۱۲۳", "०१२३४", "১২৩", "１２３４５", "²³¹", "½ ¼ ¾", "Ⅰ Ⅱ Ⅷ Ⅻ",
              "①②③", "𝟎𝟏𝟐", "〇一二三", "x² + y² = z²", "H₂O and CO₂", "፩፪፫", "๑๒๓"]
CONTRACTIONS = ["don't", "I'll", "you're", "we've", "he'd", "I'm", "it's", "can't", "won't",
                "they'll", "she's", "DON'T", "I'LL", "You'Re", "'s", "'t", "'re", "'ve", "'m", "'ll",
                "'d", "''", "'''", "'sup", "rock'n'roll", "o'clock", "y'all'd've", "'tis",
                "’s", "don’t", "'\n's", "' s", "Bob's book", "the dogs' bones", "'S", "'LL",
                "quote 'single' words", "'12", "x'", "'"]


def gen_prose(rng):
    out = list(PROSE)
    for _ in range(130):
        n = rng.randint(3, 40)
        words = []
        for _ in range(n):
            w = rng.choice(WORDS)
            r = rng.random()
            if r < 0.1:
                w = w.capitalize()
            elif r < 0.13:
                w = w.upper()
            words.append(w)
            if rng.random() < 0.12:
                words[-1] += rng.choice([",", ".", ";", ":", "!", "?", "...", " -", ")"])
        out.append(" ".join(words))
    return out


def gen_code(rng):
    files = sorted(glob.glob("/usr/lib/python3.11/*.py"))
    out = []
    if not files:
        print("warning: no /usr/lib/python3.11/*.py; no code snippets", file=sys.stderr)
        return out
    for _ in range(220):
        path = rng.choice(files)
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        if len(lines) < 2:
            continue
        a = rng.randrange(len(lines))
        b = min(len(lines), a + rng.randint(1, 15))
        snippet = "\n".join(lines[a:b])[:600]
        if "\x00" in snippet or not snippet.strip():
            continue
        out.append(snippet)
    # A few hand-made code shapes from other languages.
    out += [
        "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
        "for (size_t i = 0; i < n; i++) { a[i] += b[i] * 2.0f; }",
        "const x = () => { return [1, 2, 3].map(v => v ** 2); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
        "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
        "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
        "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | tr a-z A-Z\n",
        "fn main() {\n\tlet v: Vec<u8> = vec![0xFF; 16];\n}\n",
        "    \n    def f(self):\n        pass\n\n\n",
        "x=1;y=2;z=x+y//3%4**5",
    ]
    return out


def gen_numbers(rng):
    out = list(UNI_DIGITS)
    for _ in range(150):
        k = rng.randrange(10)
        if k == 0:
            s = str(rng.randrange(10 ** rng.randint(1, 20)))
        elif k == 1:
            s = f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}"
        elif k == 2:
            s = f"{rng.randrange(10**9):,}"
        elif k == 3:
            s = f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif k == 4:
            s = f"+1 ({rng.randint(200, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        elif k == 5:
            s = hex(rng.randrange(2 ** 64))
        elif k == 6:
            s = "".join(rng.choice("abc123 .,-") for _ in range(rng.randint(3, 30)))
        elif k == 7:
            s = f"version {rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}"
        elif k == 8:
            s = " ".join(str(rng.randrange(1000)) for _ in range(rng.randint(2, 12)))
        else:
            s = f"{rng.randint(1, 99)}% of {rng.randint(1, 9999)} items cost ${rng.uniform(0, 999):.2f}"
        out.append(s)
    out += ["1", "12", "123", "1234", " 1", "  12", "a1b2c3", "1st 2nd 3rd 4th", "3.14159",
            "1e-10", "0x1F", "10,000,000", "2024年1月1日", "٣ apples", "page 42\n43"]
    return out


def gen_unicode(rng):
    out = CJK + RTL + OTHER_SCRIPTS + COMBINING + list(EMOJI)
    pool = CJK + RTL + OTHER_SCRIPTS + COMBINING + EMOJI + PROSE[:10]
    for _ in range(110):
        parts = [rng.choice(pool) for _ in range(rng.randint(2, 5))]
        out.append(rng.choice(["", " ", "\n", " - "]).join(parts))
    return out


def gen_whitespace(rng):
    out = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\t\t\t", "\u00a0", "\u3000",
           "\u2003x\u2003", " leading", "trailing ", "  two leading", "two trailing  ",
           "a  b   c    d", "a\tb\t\tc", "line1\nline2\n\nline4", "crlf\r\nline\r\n",
           "mixed \t\n \t\n", "\n   indented", "x\u00a0y", "x\u2028y", "x\x0bv\x0cf", "x\x85y",
           "    return x\n", "\n\n\n\nfour newlines", "end with newline\n", "   \n   \n   "]
    ws = [" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2009"]
    for _ in range(110):
        s = ""
        for _ in range(rng.randint(1, 8)):
            s += "".join(rng.choice(ws) for _ in range(rng.randint(0, 6)))
            s += rng.choice(WORDS + ["", "1", "!", "é"])
        out.append(s)
    return out


def gen_contractions(rng):
    out = list(CONTRACTIONS)
    for _ in range(60):
        s = " ".join(rng.choice(CONTRACTIONS + WORDS) for _ in range(rng.randint(2, 10)))
        out.append(s)
    return out


def gen_specials(rng):
    out = [
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "<|endoftext|>", "<|im_start|><|im_end|>", "<<|im_end|>>", "<|im_start", "im_start|>",
        "<|im_start|", "text<|endoftext|>text", " <|im_end|> ", "<|im_end|><|im_end|><|im_end|>",
        "<|IM_START|>", "< |im_start|>", "<|im_start|>12<|im_end|>",
        "<filename>main.py<file_sep>print(1)<|endoftext|>",
    ]
    out += SPECIALS
    for _ in range(45):
        parts = []
        for _ in range(rng.randint(2, 7)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(SPECIALS))
            elif r < 0.5:
                sp = rng.choice(SPECIALS)
                parts.append(sp[:rng.randint(1, len(sp) - 1)])
            else:
                parts.append(rng.choice(WORDS + ["\n", " ", "42", "<", ">", "|"]))
        out.append("".join(parts))
    return out


def assigned(cp):
    return unicodedata.category(chr(cp)) not in ("Cn", "Cs")


def gen_random(rng):
    out = []
    ranges = [(0x01, 0x7F), (0x80, 0xFF), (0x100, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD),
              (0x10000, 0x1FFFF), (0x20000, 0x2A6DF)]
    for _ in range(100):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            if assigned(cp):
                chars.append(chr(cp))
        if chars:
            out.append("".join(chars))
    # Random bytes made valid by replacement (U+FFFD), as text from a broken file would be.
    for _ in range(40):
        b = bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 60)))
        out.append(b.decode("utf-8", errors="replace"))
    # Printable ASCII soup.
    for _ in range(40):
        out.append("".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 80))))
    return out


def gen_long(rng, pool):
    out = []
    for _ in range(12):
        out.append("\n".join(rng.choice(pool) for _ in range(rng.randint(10, 30)))[:4000])
    return out


def generate(rng):
    groups = [gen_prose(rng), gen_code(rng), gen_numbers(rng), gen_unicode(rng), gen_whitespace(rng),
              gen_contractions(rng), gen_specials(rng), gen_random(rng)]
    flat = [s for g in groups for s in g]
    flat += gen_long(rng, flat)
    seen, out = set(), []
    for s in flat:
        s = s.replace("\x00", "")
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
WIDE_MAX_CHARS = 600


def pattern_rows(texts, rng):
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    if PRETOKENIZE_REGEX != QWEN2_PATTERN:
        sys.exit(f"Qwen 2 pattern changed in transformers: {PRETOKENIZE_REGEX!r}")
    gpt2 = pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated")
    pres = {
        "gpt2": gpt2,
        "llama3": pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]),
        "qwen2": pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
    }
    extra = ["I'M HERE 'S 'LL 'Re", "x'\u017fy", "12345678", "a1234b", " \n\n  x", "  \r\n\t y",
             "!!\n\n\nfoo", "\tfoo", "\u00a0foo", "?!abc", " ?!abc", "x   ", "   ", "\n", "a\n \nb"]
    subset = extra + rng.sample(texts, min(300, len(texts)))
    # Llama 3 and Qwen 2 differ from each other only in runs of number code
    # points: more of those, on every short string.
    digits = ["1", "12", "123", "1234", "12345", "123456", " 1234 ", "x12345y", "1,234,567.89",
              "\u0663\u0664\u0665\u0666", "\u00b2\u00b3\u00b9\u2074", "\u2160\u2161\u2162",
              "\u2460\u2461\u2462\u2463", "1\n2\n\n3", "a 12 b 345 c 6789", "'12'", " \u0661\u0662"]
    # (The subset first, so every Llama 3 split checked before is still checked.)
    wide = subset + [t for t in digits + texts if len(t) <= WIDE_MAX_CHARS and t not in subset]
    rows = []
    for name, pre in pres.items():
        for t in (wide if name in ("llama3", "qwen2") else subset):
            pieces = pre.pre_tokenize_str(t)
            ends, pos = [], 0
            for piece, (a, b) in pieces:
                if a != pos:
                    sys.exit(f"{name}: gap in split of {t!r}")
                pos = b
                ends.append(len(t[:b].encode("utf-8")))
            if pos != len(t):
                sys.exit(f"{name}: split of {t!r} does not cover it")
            rows.append({"pre": name, "text": t, "ends": ends})
    return rows


def main():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap = argparse.ArgumentParser(description="Generate the SmolLM2 tokenizer fixture.")
    ap.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizer_smollm2.jsonl"))
    ap.add_argument("--patterns-out",
                    default=os.path.join(root, "tests", "fixtures", "pretok_patterns.jsonl"))
    args = ap.parse_args()

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    v = read_gguf_vocab(args.model)
    if v["model"] != "gpt2" or v["pre"] != "smollm":
        sys.exit(f"{args.model}: expected a gpt2/smollm tokenizer, got {v['model']}/{v['pre']}")
    ref = build_reference(v)
    tf = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.model)),
                                       gguf_file=os.path.basename(args.model))

    from transformers.convert_slow_tokenizer import bytes_to_unicode
    alphabet = bytes_to_unicode()
    present = set(v["tokens"])
    missing = {b for b in range(256) if alphabet[b] not in present}

    rng = random.Random(SEED)
    texts = generate(rng)
    rows, n_tf_diff, n_raw = [], 0, 0
    for s in texts:
        ref.encode_special_tokens = False
        ids = ref.encode(s, add_special_tokens=False).ids
        ref.encode_special_tokens = True
        raw = ref.encode(s, add_special_tokens=False).ids
        # Bytes without a one-byte token are dropped (no unknown token), by HF
        # and llama.cpp alike: SmolLM2 lacks 21 (some C0 controls, C0/C1, F5..FF).
        kept = bytes(b for b in s.encode("utf-8") if b not in missing)
        if ref.decode(raw, skip_special_tokens=False).encode("utf-8", "surrogatepass") != kept:
            sys.exit(f"reference does not round-trip {s!r}")
        row = {"text": s, "ids": ids}
        if raw != ids:
            row["ids_raw"] = raw
            n_raw += 1
        tf_ids = tf.encode(s, add_special_tokens=False)
        if tf_ids != ids:
            row["tf_gguf"] = tf_ids
            n_tf_diff += 1
        rows.append(row)

    meta = {
        "meta": {
            "reference": "tokenizers BPE from the GGUF vocab/merges + Sequence[Digits(individual_digits="
                         "True), ByteLevel(add_prefix_space=False, use_regex=True)] + control tokens as "
                         "special added tokens (= llama.cpp pre-tokenizer 'smollm')",
            "why": "transformers' GGUF loader does not know pre 'smollm' and falls back to the plain "
                   "GPT-2 ByteLevel regex (no individual-digit split); its ids are kept as 'tf_gguf' "
                   "where they differ",
            "model": os.path.basename(args.model),
            "seed": SEED,
            "count": len(rows),
            "count_ids_raw": n_raw,
            "count_tf_gguf_differs": n_tf_diff,
            "bytes_without_token": sorted(missing),
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "python_unicodedata": unicodedata.unidata_version,
        }
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, ensure_ascii=False) + "\n")
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, args.out)
    prows = pattern_rows(texts, random.Random(SEED + 1))
    tmp = args.patterns_out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in prows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, args.patterns_out)
    print(f"{args.patterns_out}: {len(prows)} splits, {os.path.getsize(args.patterns_out)} bytes")
    print(f"{args.out}: {len(rows)} strings, {n_raw} with special tokens, "
          f"{n_tf_diff} where transformers' GGUF tokenizer differs, "
          f"{os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
