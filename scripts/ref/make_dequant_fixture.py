#!/usr/bin/env python3
"""Independent dequantization reference for tests/test_quant.c.

Reads a real GGUF with llama.cpp's gguf-py (GGUFReader +
gguf.quants.dequantize, numpy; no attnpred code involved) and stores, for the
first rows of a few tensors:

  - the first HEAD float32 values of each row,
  - float64 sum and sum of squares of the whole row (for diagnosis),
  - the SHA-256 of the whole row's little-endian float32 bytes (the exact check:
    dequantization must be bit-identical).

Each known model file has a preset (tensor list, rows, head length) chosen to
cover every quantized type the file holds; --tensors/--rows/--head override it.
The presets are part of the fixtures' definition: regenerating with the same
model must reproduce the committed file byte for byte.

Invocation (from the repository root; the venv has gguf, numpy):

    ${ATTNPRED_REF_PYTHON:-.venv/bin/python} scripts/ref/make_dequant_fixture.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/fixtures/dequant_smollm2.json]

    ${ATTNPRED_REF_PYTHON:-.venv/bin/python} scripts/ref/make_dequant_fixture.py \
        --model models/gemma-3-270m-q4_k_m.gguf --out tests/fixtures/dequant_gemma3.json
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# Keyed by the model file's base name.
PRESETS = {
    # Q8_0 embedding, Q4_1 matrices, F32 norm.
    "SmolLM2-135M-Instruct.Q4_1.gguf": {
        "tensors": [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.0.ffn_down.weight",
            "output_norm.weight",
        ],
        "rows": 2,
        "head": 64,
    },
    # Q4_K_M mix: Q5_0 where ne0 = 640 is not a multiple of 256 (attn_q/k,
    # ffn_gate/up, some attn_v), Q8_0 (embedding, other attn_v), Q4_K
    # (attn_output, some ffn_down), Q6_K (other ffn_down), F32 norms. The
    # whole row is checked through its hash; a short head keeps the file small.
    "gemma-3-270m-q4_k_m.gguf": {
        "tensors": [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.0.attn_v.weight",
            "blk.2.attn_v.weight",
            "blk.0.attn_output.weight",
            "blk.0.ffn_down.weight",
            "blk.2.ffn_down.weight",
            "output_norm.weight",
        ],
        "rows": 2,
        "head": 8,
    },
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/dequant_smollm2.json")
    ap.add_argument("--tensors", help="comma-separated tensor names (default: the model's preset)")
    ap.add_argument("--rows", type=int, help="leading rows per tensor (default: preset)")
    ap.add_argument("--head", type=int, help="values stored per row (default: preset)")
    args = ap.parse_args()

    preset = PRESETS.get(os.path.basename(args.model))
    if preset is None and args.tensors is None:
        print(f"{args.model}: no preset for this file; pass --tensors", file=sys.stderr)
        return 2
    preset = preset or {"rows": 2, "head": 64}
    tensors = args.tensors.split(",") if args.tensors else preset["tensors"]
    n_rows_max = args.rows if args.rows is not None else preset["rows"]
    head = args.head if args.head is not None else preset["head"]
    if n_rows_max < 1 or head < 1:
        print("--rows and --head must be positive", file=sys.stderr)
        return 2

    reader = GGUFReader(args.model)
    by_name = {t.name: t for t in reader.tensors}
    entries = []
    for name in tensors:
        t = by_name.get(name)
        if t is None:
            print(f"{args.model}: tensor {name} not found", file=sys.stderr)
            return 1
        ne0 = int(t.shape[0])
        # Only the leading rows: Gemma 3's embedding alone would be 670 MB of
        # float32. gguf-py gives quantized data as [rows, row bytes] and
        # plain data as [.., ne0], so the last axis is always one row.
        data = t.data
        if data.ndim >= 2:
            data = data.reshape(-1, data.shape[-1])[:n_rows_max]
        values = np.asarray(dequantize(data, t.tensor_type), dtype=np.float32).reshape(-1, ne0)
        n_rows = min(n_rows_max, values.shape[0])
        rows = []
        for r in range(n_rows):
            row = values[r]
            rows.append({
                "head": [float(v) for v in row[:head]],
                "sum": float(np.sum(row, dtype=np.float64)),
                "sum_sq": float(np.sum(row.astype(np.float64) ** 2)),
                "sha256_f32le": hashlib.sha256(row.astype("<f4").tobytes()).hexdigest(),
            })
        entries.append({
            "name": name,
            "type": t.tensor_type.name,
            "ne": [int(x) for x in t.shape],
            "row_len": ne0,
            "rows": n_rows,
            "values": rows,
        })

    doc = {
        "generator": "scripts/ref/make_dequant_fixture.py (gguf-py dequantize)",
        "model": os.path.basename(args.model),
        "head_len": head,
        "tensors": entries,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
