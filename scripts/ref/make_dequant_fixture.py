#!/usr/bin/env python3
"""Independent dequantization reference for tests/test_quant.c.

Reads the real SmolLM2 GGUF with llama.cpp's gguf-py (GGUFReader +
gguf.quants.dequantize, numpy; no attnpred code involved) and stores, for the
first rows of a few tensors:

  - the first 64 float32 values of each row,
  - float64 sum and sum of squares of the whole row (for diagnosis),
  - the SHA-256 of the whole row's little-endian float32 bytes (the exact check:
    dequantization must be bit-identical).

Invocation (from the repository root; the venv has gguf, numpy):

    ${ATTNPRED_REF_PYTHON:-.venv/bin/python} scripts/ref/make_dequant_fixture.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/fixtures/dequant_smollm2.json]
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TENSORS = [
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.ffn_down.weight",
    "output_norm.weight",
]
ROWS = 2
HEAD = 64


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/dequant_smollm2.json")
    args = ap.parse_args()

    reader = GGUFReader(args.model)
    by_name = {t.name: t for t in reader.tensors}
    entries = []
    for name in TENSORS:
        t = by_name.get(name)
        if t is None:
            print(f"{args.model}: tensor {name} not found", file=sys.stderr)
            return 1
        ne0 = int(t.shape[0])
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1, ne0)
        n_rows = min(ROWS, values.shape[0])
        rows = []
        for r in range(n_rows):
            row = values[r]
            rows.append({
                "head": [float(v) for v in row[:HEAD]],
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
        "head_len": HEAD,
        "tensors": entries,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
