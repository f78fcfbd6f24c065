#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_trace (tests/fuzz/corpus/trace by default).

The seeds are programs in fuzz_trace's format (see tests/fuzz/fuzz_trace.c),
not HDF5 files: 5 bytes of dimensions and flags, one op byte per root
attribute, then per sequence its flags, n_prompt, n_gen and one op byte per
attribute and dataset. Op 0 writes the valid value and a missing byte reads
as 0, so most seeds are a few bytes. Run from the repository root:

    python3 tests/fuzz/make_trace_seeds.py [DIR]
"""
import os
import sys

ROOT_ATTRS = 12  # format .. complete
SEQ_ATTRS = 11   # id .. raw_layers


def seq_ops(n_layer, query, colsum, raw):
    """Op bytes of one sequence, all valid: attributes, tokens, step_pos,
    each layer's datasets, complete."""
    per_layer = 2 + (3 if query else 0) + (1 if colsum else 0)
    return SEQ_ATTRS + 2 + n_layer * per_layer + (1 if raw else 0) + 1


def dims(n_layer, n_head, kv_index, head_dim, block):
    g1 = (n_layer - 1) + ((n_head - 1) << 2) + (kv_index << 4)
    g2 = (head_dim - 1) + ((block - 1) << 2)
    return bytes([g1, g2])


def seq(flags, n_prompt, n_gen, n_layer, ops=None):
    q, c, r = flags & 1, flags & 2, flags & 4
    body = ops if ops is not None else bytes(seq_ops(n_layer, q, c, r))
    return bytes([flags, n_prompt - 1, n_gen]) + body


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/trace"
    os.makedirs(out, exist_ok=True)
    seeds = {}
    # 1 layer, 1 head, head_dim 1, block 1, history 0, one sequence.
    seeds["minimal"] = bytes(5)
    # 3 layers, 4 heads over 2 KV heads, head_dim 4, block 4, history 4, two
    # sequences with every optional dataset; the first chunked with filters.
    rich = dims(3, 4, 1, 4, 4) + bytes([4, 1, 0]) + bytes(ROOT_ATTRS)
    rich += seq(1 | 2 | 4 | 128, 20, 3, 3) + seq(1 | 2 | 4, 10, 2, 3)
    seeds["rich"] = rich
    # The same file cut short: at half its size, and 6/256 before its end.
    cut = bytearray(rich)
    cut[3] |= 128
    seeds["truncated_half"] = bytes(cut) + bytes([128])
    seeds["truncated_tail"] = bytes(cut) + bytes([250])
    # No sequences at all.
    seeds["empty"] = dims(2, 2, 0, 2, 2) + bytes([2, 3, 0])
    # A .partial file whose journal ends clean, then one whose last group
    # was never confirmed (refused until --resume repairs it).
    head = dims(1, 2, 0, 2, 4) + bytes([3, 0, 1]) + bytes(ROOT_ATTRS)
    body = seq(0, 12, 2, 1)
    j1 = b"4096 s0%20x\n+\n"
    j1 += b" " * (-len(j1) % 4)
    seeds["partial_clean"] = head + body + bytes([len(j1) // 4]) + j1
    j2 = b"4096 s0%20x\n+\n8192 s1\n"
    j2 += b"\n" * (-len(j2) % 4)
    seeds["partial_torn"] = head + body + bytes([len(j2) // 4]) + j2
    # Root n_head as a string, history as int64, model_name fixed-length
    # without a NUL, a sequence id as a fixed-length NULPAD string.
    bad = dims(1, 2, 0, 2, 4) + bytes([2, 0, 0])
    bad += bytes([0, 0, 0])                      # format, format_version, n_layer
    bad += bytes([0x83, 2]) + b"two\x00"         # n_head: vlen string "two"
    bad += bytes([0, 0, 0])                      # n_head_kv, head_dim, block_size
    bad += bytes([0x85, 1, 0, 0, 0, 33])         # history: int64 1 << 33
    bad += bytes([0x82, 0, 0, 0])                # model_name .. complete
    seeds["bad_types"] = bad
    fixed_id = bytes([0x84, 6]) + b"s0 x\x00\x00" + bytes([1])
    seeds["fixed_id"] = (dims(1, 1, 0, 1, 2) + bytes([2, 0, 0]) + bytes(ROOT_ATTRS) +
                         bytes([0, 7, 1]) + fixed_id)
    # Index oddities: no creation-order index, a dangling soft link, a
    # dataset, the first group linked twice, an external link.
    seeds["links"] = (dims(2, 1, 0, 2, 3) + bytes([1, 1, 2 | 16 | 32 | 64 | 128]) +
                      bytes(ROOT_ATTRS) + seq(0, 5, 1, 2) + seq(0, 6, 2, 2))
    # A corrupted fletcher32 chunk: block_max of layer 0 (op 13 of the sequence).
    ops = bytes(seq_ops(1, 0, 0, 0))
    corrupt = ops[:13] + bytes([0x8C, 9]) + ops[14:]
    seeds["corrupt_chunk"] = (dims(1, 2, 0, 2, 4) + bytes([2, 0, 0]) + bytes(ROOT_ATTRS) +
                              seq(128, 9, 1, 1, corrupt))
    # n_blocks one more than ceil(T / block).
    ops = bytes(seq_ops(1, 0, 0, 0))
    seeds["n_blocks_off"] = (dims(1, 1, 0, 1, 4) + bytes([1, 0, 0]) + bytes(ROOT_ATTRS) +
                             seq(0, 9, 1, 1, ops[:7] + bytes([0x82, 1]) + ops[8:]))
    for name, b in seeds.items():
        with open(os.path.join(out, name + ".bin"), "wb") as f:
            f.write(b)
        print(f"{name}: {len(b)} bytes")


if __name__ == "__main__":
    main()
