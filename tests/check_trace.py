#!/usr/bin/env python3
"""Check an attnpred trace against docs/trace-format.md with h5py, independently
of the C reader: root attributes, every dataset's shape, dtype and storage, and
the numeric contract of the block views.

    python3 tests/check_trace.py TRACE.h5 [--tol 1e-4] [--allow-partial]

Exits 0 and prints a one-line summary if the trace conforms; otherwise exits 1
with "check_trace: TRACE: <what is wrong>". Needs h5py and numpy (Debian:
python3-h5py, for /usr/bin/python3)."""
import argparse
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # the caller decides whether that is a skip
    print(f"check_trace: needs h5py and numpy ({e})", file=sys.stderr)
    sys.exit(77)

FORMAT = "attnpred-trace"
FORMAT_VERSIONS = (1, 2)  # 2 added architecture and layer_window (issue 13)
ROOT_INTS = ["format_version", "n_layer", "n_head", "n_head_kv", "head_dim", "block_size",
             "history"]
ROOT_STRS = ["format", "model_name", "model_sha256", "attnpred_version"]
SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class Bad(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Bad(msg)


def escape(s):
    return "".join(chr(b) if b in SAFE else "%%%02X" % b for b in s.encode("utf-8"))


def as_str(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


def check_ds(g, name, shape, dtype, where):
    expect(name in g, f"{where}: missing dataset {name}")
    d = g[name]
    expect(isinstance(d, h5py.Dataset), f"{where}/{name} is not a dataset")
    expect(d.shape == tuple(shape), f"{where}/{name}: shape {d.shape}, expected {tuple(shape)}")
    expect(d.dtype == np.dtype(dtype), f"{where}/{name}: dtype {d.dtype}, expected {dtype}")
    expect(d.chunks is not None, f"{where}/{name}: not chunked")
    expect(d.compression == "gzip" and d.shuffle,
           f"{where}/{name}: expected shuffle + gzip, got {d.compression}/{d.shuffle}")
    return d[()]


def check_seq(f, gname, g, m, tol):
    L, H, HKV, HD, B = m["n_layer"], m["n_head"], m["n_head_kv"], m["head_dim"], m["block_size"]
    where = f"/sequences/{gname}"
    for a in ["id", "n_prompt", "n_gen", "n_steps", "n_blocks", "complete", "task", "source",
              "chat", "has_query", "has_colsum", "raw_layers"]:
        expect(a in g.attrs, f"{where}: missing attribute {a}")
    sid = as_str(g.attrs["id"])
    expect(int(g.attrs["complete"]) == 1, f"{where}: complete != 1")
    expect(gname == escape(sid), f"{where}: group name is not the escaped id {sid!r}")
    P, G, S, NB = (int(g.attrs[k]) for k in ["n_prompt", "n_gen", "n_steps", "n_blocks"])
    T = P + G
    expect(P >= 1 and G >= 0 and S >= 1, f"{where}: bad sizes n_prompt {P} n_gen {G} S {S}")
    expect(NB == (T + B - 1) // B, f"{where}: n_blocks {NB} != ceil({T}/{B})")
    tokens = check_ds(g, "tokens", [T], "<i4", where)
    pos = check_ds(g, "step_pos", [S], "<i4", where)
    expect(tokens.min() >= 0, f"{where}: negative token id")
    expect(pos.min() >= 0 and pos.max() < T, f"{where}: step_pos outside [0, {T})")
    expect(np.all(np.diff(pos) > 0), f"{where}: step_pos not strictly increasing")
    expect(np.sum(pos < P) <= m["history"], f"{where}: more prefill steps than history")
    has_q, has_c = int(g.attrs["has_query"]), int(g.attrs["has_colsum"])
    raw_layers = [int(x) for x in np.atleast_1d(g.attrs["raw_layers"])]
    expect(raw_layers == sorted(set(raw_layers)), f"{where}: raw_layers not sorted/unique")
    layers = g["layers"]
    expect(sorted(layers.keys(), key=int) == [str(i) for i in range(L)],
           f"{where}/layers: expected groups 0..{L - 1}, got {sorted(layers.keys())}")
    nvalid = pos // B + 1                        # blocks inside each step's causal length
    valid = np.arange(NB)[None, :] < nvalid[:, None]   # [S, NB]
    for li in range(L):
        lw = f"{where}/layers/{li}"
        lg = layers[str(li)]
        bmax = check_ds(lg, "block_max", [S, H, NB], "<f4", lw)
        bsum = check_ds(lg, "block_sum", [S, H, NB], "<f4", lw)
        expect(np.isfinite(bsum).all() and np.isfinite(bmax).all(), f"{lw}: non-finite")
        expect(bmax.min() >= 0 and bsum.min() >= 0, f"{lw}: negative attention")
        rows = bsum.astype(np.float64).sum(axis=2)
        worst = np.abs(rows - 1).max()
        expect(worst <= tol, f"{lw}/block_sum: a row sums to 1 {worst:+.3g} off (tol {tol})")
        past = ~valid[:, None, :].repeat(H, axis=1)
        expect(not bsum[past].any() and not bmax[past].any(),
               f"{lw}: nonzero block past a step's causal length")
        expect((bmax <= bsum).all(), f"{lw}: block_max > block_sum somewhere")
        if has_q:
            check_ds(lg, "query", [S, H, HD], "<f4", lw)
            kmin = check_ds(lg, "key_min", [HKV, NB, HD], "<f4", lw)
            kmax = check_ds(lg, "key_max", [HKV, NB, HD], "<f4", lw)
            expect((kmin <= kmax).all(), f"{lw}: key_min > key_max somewhere")
        else:
            expect(not any(k in lg for k in ["query", "key_min", "key_max"]),
                   f"{lw}: query/key bounds present but has_query is 0")
        if has_c:
            cs = check_ds(lg, "prefill_colsum", [H, P], "<f4", lw).astype(np.float64)
            expect(cs.min() >= 0, f"{lw}/prefill_colsum: negative")
            per_head = cs.sum(axis=1)
            expect(np.allclose(per_head, P, rtol=max(10 * tol, 1e-5)),
                   f"{lw}/prefill_colsum: a head sums to {per_head.min():.6g}, expected {P}")
            # key k is seen by the P - k prompt queries at or after it, each at most 1
            expect((cs <= (P - np.arange(P))[None, :] + tol).all(),
                   f"{lw}/prefill_colsum: a column exceeds its number of queries")
        else:
            expect("prefill_colsum" not in lg, f"{lw}: prefill_colsum present but has_colsum 0")
        w = m["layer_window"][li]
        if w > 0:
            # a sliding-window layer attends keys pos-w+1 .. pos only: every
            # block that ends before the window is exactly 0
            before = (np.arange(NB)[None, :] + 1) * B - 1 < (pos - w + 1)[:, None]   # [S, NB]
            out = before[:, None, :].repeat(H, axis=1)
            expect(not bsum[out].any() and not bmax[out].any(),
                   f"{lw}: attention before the layer's window of {w} keys")
        if li in raw_layers:
            raw = check_ds(lg, "raw", [S, H, T], "<f4", lw).astype(np.float64)
            causal = np.arange(T)[None, :] <= pos[:, None]
            expect(not raw[~causal[:, None, :].repeat(H, axis=1)].any(),
                   f"{lw}/raw: nonzero past the causal length")
            expect(np.abs(raw.sum(axis=2) - 1).max() <= tol, f"{lw}/raw: a row does not sum to 1")
            pad = NB * B - T
            blocks = np.pad(raw, ((0, 0), (0, 0), (0, pad))).reshape(S, H, NB, B)
            expect(np.abs(blocks.sum(axis=3) - bsum).max() <= tol,
                   f"{lw}: block_sum is not the block pooling of raw")
            expect(np.abs(blocks.max(axis=3) - bmax).max() <= tol,
                   f"{lw}: block_max is not the block pooling of raw")
        else:
            expect("raw" not in lg, f"{lw}: raw present for a layer not in raw_layers")
    return T


def check(path, tol, allow_partial):
    with h5py.File(path, "r") as f:
        a = f.attrs
        for k in ROOT_STRS + ROOT_INTS:
            expect(k in a, f"missing root attribute {k}")
        expect(as_str(a["format"]) == FORMAT, f"format is {a['format']!r}")
        version = int(a["format_version"])
        expect(version in FORMAT_VERSIONS,
               f"format_version {version}, this checker knows {FORMAT_VERSIONS}")
        m = {k: int(a[k]) for k in ROOT_INTS}
        for k in ["n_layer", "n_head", "n_head_kv", "head_dim", "block_size"]:
            expect(m[k] >= 1, f"root attribute {k} = {m[k]}")
        if version == 1:
            # version 1 predates them: a llama model, every layer full attention
            m["architecture"], m["layer_window"] = "llama", [0] * m["n_layer"]
        else:
            expect("architecture" in a, "missing root attribute architecture")
            arch = a["architecture"]
            expect(isinstance(arch, (str, bytes)), f"architecture is not a string: {arch!r}")
            m["architecture"] = as_str(arch)
            expect("layer_window" in a, "missing root attribute layer_window")
            lwin = np.asarray(a["layer_window"])
            expect(lwin.dtype == np.dtype("<i4") and lwin.shape == (m["n_layer"],),
                   f"layer_window: {lwin.dtype} {lwin.shape}, expected int32 ({m['n_layer']},)")
            expect((lwin >= 0).all(), f"layer_window has a negative entry: {lwin.tolist()}")
            m["layer_window"] = [int(x) for x in lwin]
        expect(m["n_head"] % m["n_head_kv"] == 0, "n_head not a multiple of n_head_kv")
        complete = int(a.get("complete", 0)) == 1
        expect(complete or allow_partial, "root attribute complete is not 1")
        seqs = f["sequences"]
        n, tokens = 0, 0
        for gname, g in seqs.items():
            if not complete and int(g.attrs.get("complete", 0)) != 1:
                continue
            tokens += check_seq(f, gname, g, m, tol)
            n += 1
        if complete:
            expect(int(a["n_sequences"]) == n, f"n_sequences {a['n_sequences']} but {n} groups")
    return n, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="absolute tolerance of row sums and pooling (default 1e-4, the "
                         "attention tolerance of common/tolerance.h; float32 softmax rows of "
                         "a few thousand keys sum to 1 within ~1e-5)")
    ap.add_argument("--allow-partial", action="store_true",
                    help="accept a .partial file (checks its finished sequences)")
    args = ap.parse_args()
    try:
        n, tokens = check(args.trace, args.tol, args.allow_partial)
    except Bad as e:
        print(f"check_trace: {args.trace}: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError) as e:
        print(f"check_trace: {args.trace}: cannot read: {e}", file=sys.stderr)
        return 1
    print(f"check_trace: {args.trace}: ok ({n} sequences, {tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
