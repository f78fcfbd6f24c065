#!/usr/bin/env python3
"""Reference token ids for a SentencePiece-BPE GGUF that ranks merges by its
scores (Llama 2 / Mistral-style files: tokenizer.ggml.model = "llama" with a
general.architecture other than gemma), for tests/test_tokenizer.c.

    .venv/bin/python scripts/ref/make_tokenizer_fixture_spm.py \
        [--out-gguf tests/fixtures/tokenizer_spm_scores.gguf] \
        [--out tests/fixtures/tokenizer_spm_scores.jsonl]

No real Llama 2 / Mistral tokenizer is available offline, so the vocabulary
is made here, the way SentencePiece's BPE trainer would make one, and then
shuffled so that file order and scores disagree (the point of the test: a
tokenizer ranking merges by file order gives other ids):
  - <unk> 0, <s> 1, </s> 2 (control), the 256 byte tokens <0x00>..<0xFF>
    (type 6, score 0), as in Llama 2's file;
  - every character seen at least MIN_CHAR times in the training text,
    spaces spelled U+2581;
  - N_MERGES pieces learned by greedy BPE over the words of the training text
    (each word with its leading U+2581), scored -rank (first merge highest);
  - the characters scored below every merge, by frequency;
  - those pieces in a seeded random order in the file.
Training text: the prompts of data/prompts/default.jsonl (committed). Test
strings: the SmolLM2 fixture's generator (scripts/ref/make_tokenizer_fixture.py,
same seed: prose, code, numbers, mixed scripts, emoji, whitespace runs, special
tokens) with the specials spelled as this vocabulary's.

Reference: transformers' own GGUF loader (AutoTokenizer.from_pretrained(dir,
gguf_file=...)), which for general.architecture llama builds a LlamaTokenizer
with merges derived from the vocabulary ranked by tokenizer.ggml.scores,
byte fallback and a leading-space prefix. Rows: {"text": str, "ids": [...]}
(add_special_tokens=True, so BOS included). Line 1 is a header ("meta").
"""
import argparse
import collections
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_fixture import generate  # noqa: E402

SEED = 20261207
N_MERGES = 1500
MIN_CHAR = 2
MAX_CHARS = 1200
SP = "\u2581"


def root():
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def training_text():
    path = os.path.join(root(), "data", "prompts", "default.jsonl")
    out = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            for k in ("text", "prompt"):
                if isinstance(rec.get(k), str):
                    out.append(rec[k])
    if not out:
        sys.exit(f"{path}: no prompt texts")
    return "\n".join(out)


def learn_pieces(text):
    """Characters and greedy BPE merges over the text's words."""
    words = collections.Counter()
    for w in text.replace("\n", " ").split(" "):
        if w:
            words[SP + w] += 1
    chars = collections.Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
    keep = {ch for ch, c in chars.items() if c >= MIN_CHAR}
    split = {w: [ch for ch in w] for w in words if all(ch in keep for ch in w)}
    merges = []
    seen = set(keep)
    for _ in range(N_MERGES):
        pairs = collections.Counter()
        for w, syms in split.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        piece = a + b
        for w, syms in split.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(piece)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            split[w] = out
        if piece not in seen:
            seen.add(piece)
            merges.append(piece)
    char_list = sorted(keep, key=lambda ch: (-chars[ch], ch))
    return char_list, merges


def build_vocab(rng):
    chars, merges = learn_pieces(training_text())
    scored = [(m, -float(i)) for i, m in enumerate(merges)]
    base = -float(len(merges))
    scored += [(ch, base - i) for i, ch in enumerate(chars)]
    rng.shuffle(scored)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [2, 3, 3] + [6] * 256
    for p, s in scored:
        tokens.append(p)
        scores.append(s)
        types.append(1)
    return tokens, scores, types, len(merges), len(chars)


def write_gguf(path, tokens, scores, types):
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("attnpred-spm-scores-test")
    # The hyperparameters only make the file a plausible llama header; the
    # test reads the tokenizer.
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-gguf", default=os.path.join(root(), "tests", "fixtures",
                                                       "tokenizer_spm_scores.gguf"))
    ap.add_argument("--out", default=os.path.join(root(), "tests", "fixtures",
                                                  "tokenizer_spm_scores.jsonl"))
    args = ap.parse_args()
    import tokenizers
    import transformers

    rng = random.Random(SEED)
    tokens, scores, types, n_merges, n_chars = build_vocab(rng)
    tmp = args.out_gguf + ".tmp"
    write_gguf(tmp, tokens, scores, types)
    os.replace(tmp, args.out_gguf)

    d, name = os.path.split(os.path.abspath(args.out_gguf))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    texts = [t[:MAX_CHARS] for t in generate(random.Random(SEED))]
    texts = [t.replace("<|endoftext|>", "</s>").replace("<|im_start|>", "<s>") for t in texts]
    texts += ["", " ", "  ", "a", " a", "hello world", "Hello  World", "\n\n", "\t x",
              "<s>hi</s>", "1234567890", "naïve café", "日本語のテキスト", "🙂🙃 ok"]
    seen, rows, differs = set(), [], 0
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        ids = tok.encode(t, add_special_tokens=True)
        rows.append({"text": t, "ids": ids})
    # How many strings a file-order ranking would tokenize differently: the
    # test is only meaningful if that is most of them.
    order_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    try:
        from transformers.tokenization_utils_base import generate_merges
        vocab = {t: i for i, t in enumerate(tokens)}
        by_order = generate_merges(vocab, {t: -float(i) for i, t in enumerate(tokens)})
        bk = order_tok.backend_tokenizer
        js = json.loads(bk.to_str())
        js["model"]["merges"] = [list(m) for m in by_order]
        alt = tokenizers.Tokenizer.from_str(json.dumps(js))
        for r in rows:
            if alt.encode(r["text"], add_special_tokens=True).ids != r["ids"]:
                differs += 1
    except Exception as e:  # the count is informative only
        print(f"file-order comparison skipped: {e}", file=sys.stderr)
        differs = -1
    meta = {"reference": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) "
                         "(LlamaTokenizer rebuilt from the GGUF: merges ranked by "
                         "tokenizer.ggml.scores); ids with add_special_tokens=True",
            "gguf": os.path.basename(args.out_gguf), "seed": SEED, "count": len(rows),
            "n_vocab": len(tokens), "n_merges": n_merges, "n_chars": n_chars,
            "count_differs_by_file_order": differs,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(rows)} strings, vocab {len(tokens)}, "
          f"{differs} would differ ranked by file order", file=sys.stderr)


if __name__ == "__main__":
    main()
