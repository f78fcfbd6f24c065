#!/usr/bin/env python3
"""Reference token ids for the Gemma 3 (SentencePiece BPE) test in tests/test_tokenizer.c
(tests/fixtures/tokenizer_gemma3.jsonl).

    .venv/bin/python scripts/ref/make_tokenizer_fixture_gemma3.py \
        [--model models/gemma-3-270m-q4_k_m.gguf] [--out tests/fixtures/tokenizer_gemma3.jsonl]

Which reference, and why
------------------------
transformers' own GGUF loader, AutoTokenizer.from_pretrained(dir, gguf_file=...),
is the reference: it is independent of our C code and of llama.cpp, and it is
what a user comparing against HF would run. For general.architecture gemma3 it
builds a GemmaTokenizer (transformers/integrations/gguf/gguf_tokenizer_mapping.py):
  - BPE with merges derived from the vocabulary (every split of a token into two
    tokens), ranked by the token's position in the file (not the stored scores),
    byte_fallback=True, fuse_unk=True, unk "<unk>";
  - normalizer Replace(" ", "\u2581"), no space prefix;
  - the 30 user-defined tokens made of spaces are respelled "\u2581\u2581..." and
    merged by BPE; the other user-defined tokens (type 4: "\\n" runs, "\\t" runs,
    HTML tags, "[multimodal]", image markers) are non-special added tokens, always
    matched literally; control tokens (type 3) are special added tokens.
llama.cpp differs on long runs of spaces: it matches the space tokens
literally, longest first (31 + 9 for 40 spaces), where transformers' BPE joins
runs pairwise; the header lists transformers' split of 40 spaces.

Rows: {"text": str, "ids": [...]} -- ids without BOS, special tokens parsed
(tok.encode(text, add_special_tokens=False)); optional "ids_raw" when special
parsing is off (split_special_tokens=True) gives other ids; optional
"rt": false when the reference's decode(ids) does not give the text back.
The script checks that encode with add_special_tokens=True is [bos] + ids on
every string (Gemma 3 adds BOS, id 2), so the C test checks BOS from that.
The texts are the SmolLM2 fixture's generator (scripts/ref/make_tokenizer_fixture.py,
same seed) plus Gemma-specific strings (its special tokens, whitespace runs
the user-defined tokens cover, byte fallback) and 400 strings glued from random
vocabulary entries, code points and space runs, capped in length so the file
stays small. Line 1 is a header object ("meta").
"""
import argparse
import json
import os
import random
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_fixture import WORDS, generate  # noqa: E402

SEED = 20261207
MAX_CHARS = 1200

GEMMA_SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]", "<unused0>",
                  "<unused17>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<table>", "</table>", "<tr>", "<td>", "</td>", "<h1>", "</h1>",
                  "<strong>", "</strong>", "<code>", "</code>", "<div>", "</div>", "<s>", "</s>",
                  "<u>", "<b>", "<i>", "<sup>", "<sub>", "<li>", "<ul>", "<span>", "<bbox>"]


def vocab_soup(rng, tokens, count):
    """Strings glued from random vocabulary entries (spelled with spaces, or with a literal
    U+2581 now and then), special tokens, random code points and runs of spaces: adversarial
    for the merge order."""
    pieces = [" ", "  ", "\n", "\t", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
              "<td>", "\u2581", "<0x41>", "<unk>"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.45:
                t = rng.choice(tokens)
                parts.append(t.replace("\u2581", " ") if rng.random() < 0.8 else t)
            elif r < 0.6:
                parts.append(rng.choice(pieces))
            elif r < 0.8:
                cp = rng.randint(0x20, 0x2FFFF)
                if not 0xD800 <= cp < 0xE000:
                    parts.append(chr(cp))
            else:
                parts.append(" " * rng.randint(1, 70))
        out.append("".join(parts)[:MAX_CHARS])
    return out


def gemma_strings(rng):
    out = [
        "",
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        "<bos><start_of_turn>user\nHello!<end_of_turn>\n",
        "<start_of_turn><end_of_turn>", "<start_of_turn", "start_of_turn>", "<<start_of_turn>>",
        "<table><tr><td>1</td><td>2</td></tr></table>", "<h1>Title</h1>\n<p>text</p>",
        "<strong>bold</strong> and <em>em</em>", "<unused6241>", "<unused99999>", "<unk><unk>",
        "<0x41>", "<0xZZ>", "\u2581", "\u2581\u2581x", "x\u2581y", " \u2581 ", "\u2581hello",
        "hello", " hello", "hello ", "  hello  ", " ", "  ", "\t", "\n", "\r", "\r\n", "\x01\x02",
        "\x7f", "\ufeff", "\u200b", "\u00ad", "\U0010fffd", "\ue000", "\U000e0001", "\U0002a6d6",
        "\U0001f9ff\U0001fa70", "a\u0301\u0302\u0303\u0304", "ǅ", "ﬃ", "ℌ", "㍿",
    ]
    for n in list(range(1, 41)) + [47, 62, 63, 64, 65, 80, 100]:
        out.append(" " * n)
        out.append("x" + " " * n + "y")
        out.append(" " * n + "word")
    for n in list(range(1, 36)) + [40, 64]:
        out.append("\n" * n)
        out.append("\t" * n + "x")
        out.append("a" + "\n" * n + "b")
    for _ in range(80):
        s = ""
        for _ in range(rng.randint(1, 6)):
            s += "".join(rng.choice([" ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000"])
                         for _ in range(rng.randint(0, 20)))
            s += rng.choice(WORDS + ["", "1", "!", "é", "{", "}"])
        out.append(s)
    for _ in range(80):
        parts = []
        for _ in range(rng.randint(2, 7)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(GEMMA_SPECIALS))
            elif r < 0.5:
                sp = rng.choice(GEMMA_SPECIALS)
                parts.append(sp[:rng.randint(1, len(sp) - 1)])
            else:
                parts.append(rng.choice(WORDS + ["\n", " ", "  ", "42", "<", ">", "\n\n", "\t"]))
        out.append("".join(parts))
    # Devanagari, Arabic and CJK prose with digits, as people write them.
    out += ["मेरा नाम राम है और मैं 25 साल का हूँ।", "हिन्दी में १२३ और 123 दोनों",
            "القاهرة هي عاصمة مصر، وعدد سكانها ٢٠ مليون.", "١٢٣٤ + 5678 = ?",
            "北京是中国的首都，人口约2100万。", "東京都の人口は約1400万人です。",
            "서울의 인구는 약 950만 명입니다.", "数学：x² + y² = z²（勾股定理）"]
    return out


def main():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap = argparse.ArgumentParser(description="Generate the Gemma 3 tokenizer fixture.")
    ap.add_argument("--model", default=os.path.join(root, "models", "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizer_gemma3.jsonl"))
    args = ap.parse_args()

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.model)),
                                        gguf_file=os.path.basename(args.model))
    bos = tok.bos_token_id
    if bos != 2 or not tok.add_bos_token:
        sys.exit(f"expected Gemma's BOS 2 added by default, got {bos} / {tok.add_bos_token}")

    texts = [s for s in generate(random.Random(20240607)) if len(s) <= MAX_CHARS]
    texts += gemma_strings(random.Random(SEED))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    texts += vocab_soup(random.Random(SEED + 1), [t for t, _ in vocab], 400)
    seen, uniq = set(), []
    for s in texts:
        s = s.replace("\x00", "")
        if s not in seen:
            seen.add(s)
            uniq.append(s)

    rows, n_raw, n_no_rt = [], 0, 0
    for s in uniq:
        ids = tok.encode(s, add_special_tokens=False)
        with_bos = tok.encode(s, add_special_tokens=True)
        if with_bos != [bos] + ids:
            sys.exit(f"BOS is not simply prepended for {s!r}: {with_bos[:5]} vs {ids[:5]}")
        # (transformers sets the backend's encode_special_tokens from this
        # argument on every call.)
        raw = tok.encode(s, add_special_tokens=False, split_special_tokens=True)
        row = {"text": s, "ids": ids}
        if raw != ids:
            row["ids_raw"] = raw
            n_raw += 1
        if tok.decode(ids, skip_special_tokens=False) != s:
            row["rt"] = False
            n_no_rt += 1
        rows.append(row)

    meta = {
        "meta": {
            "reference": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) (GemmaTokenizer "
                         "rebuilt from the GGUF); ids without BOS; add_special_tokens=True was checked "
                         "to be [2] + ids on every string",
            "model": os.path.basename(args.model),
            "seed": SEED,
            "count": len(rows),
            "count_ids_raw": n_raw,
            "count_no_round_trip": n_no_rt,
            "spaces_40": tok.convert_ids_to_tokens(tok.encode(" " * 40, add_special_tokens=False)),
            "bos_id": bos,
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "python_unicodedata": unicodedata.unidata_version,
        }
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, ensure_ascii=False) + "\n")
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(rows)} strings, {n_raw} with special tokens, {n_no_rt} that do not "
          f"round-trip, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
