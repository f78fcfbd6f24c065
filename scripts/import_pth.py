#!/usr/bin/env python3
"""Convert a published AttentionPredictor checkpoint (.pth) to attnpred's
predictor export (safetensors, train/runtime.h).

The official checkpoints are plain state_dicts: conv1.weight [16,1,3,3],
conv1.bias [16], conv2.weight [32,16,3,3], conv2.bias [32], conv3.weight
[1,32,1], conv3.bias [1] (float32, saved from a CUDA device). Their run names
say look-back 64 and pooling 16, which become the history/block metadata
(override with --history/--block). A "module." prefix (DataParallel) or a
{"state_dict": ...} wrapper is accepted.

usage: import_pth.py IN.pth OUT.safetensors [--history 64] [--block 16] [--force]
Exit status: 0 ok, 1 bad input or write failure (message names the file),
2 usage. OUT is written to a temporary name and renamed, so a failure never
leaves a half-written or overwritten OUT.
"""
import argparse
import json
import os
import sys

import torch

try:
    from safetensors.torch import save_file
except ImportError:
    save_file = None

NAMES = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias"]


def expected_shapes(c1, c2):
    return {"conv1.weight": (c1, 1, 3, 3), "conv1.bias": (c1,), "conv2.weight": (c2, c1, 3, 3),
            "conv2.bias": (c2,), "conv3.weight": (1, c2, 1), "conv3.bias": (1,)}


def load_state_dict(path):
    try:
        # weights_only: a checkpoint is data; never run pickled code from it.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt zip/pickle
        raise ValueError("%s: cannot read the checkpoint (%s: %s)" % (path, type(e).__name__, e))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("%s: not a state_dict (got %s)" % (path, type(obj).__name__))
    sd = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise ValueError("%s: entry %r is not a named tensor" % (path, k))
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    missing = [n for n in NAMES if n not in sd]
    extra = sorted(set(sd) - set(NAMES))
    if missing or extra:
        raise ValueError("%s: not an AttentionPredictor state_dict (missing %s, unexpected %s)"
                         % (path, missing, extra))
    c1, c2 = sd["conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
    for n, shape in expected_shapes(c1, c2).items():
        if tuple(sd[n].shape) != shape:
            raise ValueError("%s: %s has shape %s, expected %s" % (path, n, tuple(sd[n].shape), shape))
        if not torch.isfinite(sd[n]).all():
            raise ValueError("%s: %s holds non-finite values" % (path, n))
    return {n: sd[n].detach().to(torch.float32).contiguous() for n in NAMES}, c1, c2


def main():
    ap = argparse.ArgumentParser(description="convert an AttentionPredictor .pth to attnpred safetensors")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--history", type=int, default=64)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = ap.parse_args()
    if save_file is None:
        print("import_pth: the safetensors package is required (pip install safetensors)", file=sys.stderr)
        return 1
    if os.path.exists(args.output) and not args.force:
        print("import_pth: %s exists (use --force to overwrite)" % args.output, file=sys.stderr)
        return 1
    try:
        sd, c1, c2 = load_state_dict(args.input)
    except (ValueError, OSError) as e:
        print("import_pth: %s" % e, file=sys.stderr)
        return 1
    n_params = sum(t.numel() for t in sd.values())
    meta = {"format": "attnpred-predictor", "version": "1", "history": str(args.history),
            "block": str(args.block), "sink_blocks": "4", "local_blocks": "4", "c1": str(c1),
            "c2": str(c2), "n_models": "1", "n_layers": "0", "layer_map": "[]",
            "param_count": str(n_params), "source": os.path.basename(args.input)}
    tmp = "%s.tmp.%d" % (args.output, os.getpid())
    try:
        save_file(sd, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
        cfg = dict(meta, layer_map=[], format="attnpred-predictor")
        jpath = (args.output[:-len(".safetensors")] if args.output.endswith(".safetensors")
                 else args.output) + ".json"
        with open(jpath + ".tmp", "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(jpath + ".tmp", jpath)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        print("import_pth: %s: %s" % (args.output, e), file=sys.stderr)
        return 1
    print("converted %s -> %s (%d parameters, c1 %d, c2 %d)" % (args.input, args.output, n_params, c1, c2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
