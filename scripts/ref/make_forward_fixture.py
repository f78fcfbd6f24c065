#!/usr/bin/env python3
"""Reference forward-pass fixtures for tests/test_model.c.

The independent reference is transformers loading the same GGUF file: it
dequantizes every tensor to float32 and runs LlamaForCausalLM with eager
attention, so attention maps come back post-softmax. We store a small slice of
what it computes (token ids, argmax and top-2 margin at every position, a few
logit rows, full attention rows for a few layer/head/position triples) as raw
little-endian .f32/.i32 files plus a JSON index, so the C test needs neither
Python nor our tokenizer.

Usage: .venv/bin/python scripts/ref/make_forward_fixture.py \
           [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--out tests/fixtures/forward]
       .venv/bin/python scripts/ref/make_forward_fixture.py \
           --model models/gemma-3-270m-q4_k_m.gguf --out tests/fixtures/forward-gemma3

The prompts and the layers whose attention rows are stored depend on the
file's general.architecture (PRESETS): the chat model SmolLM2 gets its chat
template, the base model Gemma 3 plain text with BOS, and rows of both its
sliding-window and its global layers.
Pinned versions: scripts/ref/requirements.txt.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

# Per general.architecture: the layers whose attention rows are stored, and
# whether prompts go through the chat template and get BOS.
PRESETS = {
    "llama": {"attn_layers": [0, 14, 29], "chat": True, "bos": False},
    # gemma3 270M: layers 5, 11, 17 are global, the rest sliding (window 512).
    "gemma3": {"attn_layers": [0, 5, 16, 17], "chat": False, "bos": True},
}
N_LOGIT_IDX = 2048
SEED = 1234


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_prompts(tok, preset):
    """Prompts from texts every Debian bookworm system ships; the ids are
    stored, so the sources only document where they came from."""
    prompts = []
    if preset["chat"]:
        chat = tok.apply_chat_template(
            [{"role": "user", "content": "Explain in two sentences why the sky is blue. "
                                         "Then list 3 colours and the year 1969."}],
            add_generation_prompt=True, tokenize=False)
        prompts.append(("chat", "chat template around a short question", chat, None))

    with open("/usr/lib/python3.11/textwrap.py", encoding="utf-8") as f:
        code = f.read()
    prompts.append(("code", "/usr/lib/python3.11/textwrap.py, first 600 tokens", code, 600))

    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        gpl = f.read()
    prompts.append(("gpl3", "/usr/share/common-licenses/GPL-3, first 2100 tokens", gpl, 2100))
    out = []
    for name, source, text, limit in prompts:
        ids = tok(text, add_special_tokens=False).input_ids
        if preset["bos"]:
            ids = [tok.bos_token_id] + ids
        if limit is not None:
            if len(ids) < limit:
                sys.exit(f"{name}: only {len(ids)} tokens, need {limit}")
            ids = ids[:limit]
        out.append((name, source, ids))
    return out


def check_weights(model, gguf_path):
    """transformers must tie lm_head to the embeddings for this file (no
    output.weight) and its dequantization must agree with gguf-py's."""
    emb = model.model.embed_tokens.weight
    tied = model.lm_head.weight.data_ptr() == emb.data_ptr() or torch.equal(model.lm_head.weight, emb)
    if not tied:
        sys.exit("transformers did not tie lm_head to token_embd: use transformers >= 4.48 "
                 "(scripts/ref/requirements.txt)")
    import gguf
    r = gguf.GGUFReader(gguf_path)
    names = {t.name for t in r.tensors}
    if "output.weight" in names:
        sys.exit("this file has output.weight; the fixture expects tied embeddings")
    t = next(t for t in r.tensors if t.name == "token_embd.weight")
    ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(emb.shape)
    diff = float(np.max(np.abs(ref - emb.detach().numpy())))
    if diff != 0.0:
        sys.exit(f"token_embd dequantization differs from gguf-py by {diff}")
    return {"lm_head_tied": True, "token_embd_type": t.tensor_type.name,
            "token_embd_max_abs_diff_vs_gguf_py": diff}


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", ".."))
    ap.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "forward"))
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import gguf
    arch = str(gguf.GGUFReader(args.model).fields["general.architecture"].contents())
    if arch not in PRESETS:
        sys.exit(f"{args.model}: no fixture preset for architecture {arch}")
    preset = PRESETS[arch]
    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    checks = check_weights(model, args.model)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    n_head = model.config.num_attention_heads
    vocab = model.config.vocab_size

    index = {
        "model_file": f,
        "model_sha256": sha256_file(args.model),
        "generator": "scripts/ref/make_forward_fixture.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "checks": checks,
        "architecture": arch,
        "n_vocab": vocab,
        "prompts": [],
    }
    for name, source, ids in build_prompts(tok, preset):
        T = len(ids)
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
        logits = out.logits[0].float().numpy()  # [T, V]
        top2 = np.partition(logits, -2, axis=1)[:, -2:]
        argmax = logits.argmax(axis=1).astype(np.int32)
        margin = (top2.max(axis=1) - top2.min(axis=1)).astype(np.float32)

        # Logit slice: the top-256 of the last row plus random indices, at a
        # few positions; and the whole last row.
        top = np.argsort(-logits[-1])[:256]
        rest = np.setdiff1d(np.arange(vocab), top)
        idx = np.sort(np.concatenate([top, rng.choice(rest, N_LOGIT_IDX - 256, replace=False)]))
        lpos = sorted({0, 1, T // 3, (2 * T) // 3, T - 2, T - 1})
        sub = logits[lpos][:, idx].astype(np.float32)

        # Attention rows: every head of a few layers at a few query positions
        # (always the last two: those are what a capture records).
        apos = sorted({min(5, T - 1), T // 2, T - 2, T - 1})
        rows, entries, off = [], [], 0
        for layer in preset["attn_layers"]:
            a = out.attentions[layer][0]  # [H, T, T]
            for h in range(n_head):
                for p in apos:
                    row = a[h, p, : p + 1].float().numpy()
                    rows.append(row)
                    entries.append({"layer": layer, "head": h, "pos": p, "offset": off})
                    off += p + 1
        del out

        files = {
            "tokens": f"{name}.tokens.i32",
            "argmax": f"{name}.argmax.i32",
            "margin": f"{name}.margin.f32",
            "logits_last": f"{name}.logits_last.f32",
            "logits_idx": f"{name}.logits_idx.i32",
            "logits_sub": f"{name}.logits_sub.f32",
            "attn": f"{name}.attn.f32",
        }
        np.asarray(ids, dtype="<i4").tofile(os.path.join(args.out, files["tokens"]))
        argmax.astype("<i4").tofile(os.path.join(args.out, files["argmax"]))
        margin.astype("<f4").tofile(os.path.join(args.out, files["margin"]))
        logits[-1].astype("<f4").tofile(os.path.join(args.out, files["logits_last"]))
        idx.astype("<i4").tofile(os.path.join(args.out, files["logits_idx"]))
        sub.astype("<f4").tofile(os.path.join(args.out, files["logits_sub"]))
        np.concatenate(rows).astype("<f4").tofile(os.path.join(args.out, files["attn"]))
        index["prompts"].append({
            "name": name, "source": source, "n_tokens": T, "files": files,
            "logits_pos": lpos, "n_logits_idx": int(len(idx)),
            "attn_rows": entries,
            "min_margin": float(margin.min()),
        })
        print(f"{name}: {T} tokens, min top-2 margin {margin.min():.3g}", file=sys.stderr)
    with open(os.path.join(args.out, "index.json"), "w") as fo:
        json.dump(index, fo, indent=1)
        fo.write("\n")


if __name__ == "__main__":
    main()
