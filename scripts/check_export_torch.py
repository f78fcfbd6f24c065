#!/usr/bin/env python3
"""Check attnpred predictor exports against a plain PyTorch definition.

The module below is written from the architecture description
(docs/predictor.md, "Model"), not taken from any code:
  Conv2d(1->c1, 3x3, pad 1) + ReLU, Conv2d(c1->c2, 3x3, pad 1) + ReLU,
  mean over the time (H) axis, Conv1d(c2->1, kernel 1), squeeze.

Commands
  check --export P.safetensors --io IO.safetensors [--tol 1e-5]
      IO holds cases x.K [N,H,W] and y.K [N,W] (attnpred's outputs) with
      metadata layer.K and n_cases; the export is loaded into the PyTorch
      module (load_state_dict, strict) and its predictions must equal y.K.
  import-selftest --workdir DIR [--importer scripts/import_pth.py]
      Saves a randomly initialised module as DIR/official.pth (a plain
      state_dict, like the published checkpoints), converts it with
      import_pth.py to DIR/converted.safetensors, checks that a corrupt .pth
      is refused without touching the output, and writes DIR/torch_io.safetensors
      (inputs and torch's outputs) for attnpred's runtime to compare against.

Exit status: 0 ok, 1 mismatch or failure, 2 usage.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch
from torch import nn

try:
    from safetensors.numpy import load_file as _st_load
    from safetensors.numpy import save_file as _st_save
except ImportError:  # the tiny reader/writer below is enough for F32 files
    _st_load = None
    _st_save = None


class AttentionPredictorCNN(nn.Module):
    def __init__(self, c1=16, c2=32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv1d(c2, 1, kernel_size=1)

    def forward(self, x):  # x [N, H, W] -> [N, W]
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.relu(self.conv2(h))
        h = h.mean(dim=2)  # over the H time rows: [N, c2, W]
        return self.conv3(h).squeeze(1)


class PerLayerPredictor(nn.Module):
    def __init__(self, n_models, c1, c2):
        super().__init__()
        self.layers = nn.ModuleList(AttentionPredictorCNN(c1, c2) for _ in range(n_models))


def read_safetensors(path):
    """(tensors dict of numpy arrays, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    if _st_load is not None:
        return _st_load(path), meta
    base = 8 + n
    kinds = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + e], dtype=kinds[info["dtype"]]).reshape(
            info["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors, meta):
    tmp = path + ".tmp.%d" % os.getpid()
    if _st_save is not None:
        _st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, tmp,
                 metadata=meta)
    else:
        names = sorted(tensors)
        header, off, blobs = {"__metadata__": meta}, 0, []
        for k in names:
            a = np.ascontiguousarray(tensors[k], dtype="<f4")
            header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
            off += a.nbytes
            blobs.append(a.tobytes())
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


def load_export(path):
    """The export as (module list, layer -> model function, metadata)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "attnpred-predictor":
        raise ValueError("%s: metadata format is %r" % (path, meta.get("format")))
    c1, c2, n_models = int(meta["c1"]), int(meta["c2"]), int(meta["n_models"])
    layer_map = json.loads(meta.get("layer_map", "[]"))
    sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    if not layer_map:
        model = AttentionPredictorCNN(c1, c2)
        model.load_state_dict(sd, strict=True)  # names and shapes must match exactly
        models = [model]
    else:
        wrapper = PerLayerPredictor(n_models, c1, c2)
        wrapper.load_state_dict(sd, strict=True)
        models = list(wrapper.layers)
    for m in models:
        m.eval()

    def model_of(layer):
        return models[0] if not layer_map else models[layer_map[layer]]

    return models, model_of, meta


def cmd_check(args):
    _, model_of, _ = load_export(args.export)
    io, meta = read_safetensors(args.io)
    n_cases = int(meta["n_cases"])
    worst = 0.0
    for k in range(n_cases):
        x = torch.from_numpy(np.asarray(io["x.%d" % k], dtype=np.float32))
        y_ap = np.asarray(io["y.%d" % k], dtype=np.float64)
        layer = int(meta.get("layer.%d" % k, "0"))
        with torch.no_grad():
            y_t = model_of(layer)(x).double().numpy()
        if y_t.shape != y_ap.shape:
            print("case %d: shape %s vs attnpred %s" % (k, y_t.shape, y_ap.shape), file=sys.stderr)
            return 1
        err = float(np.max(np.abs(y_t - y_ap))) if y_t.size else 0.0
        worst = max(worst, err)
        print("case %d: x %s layer %d max |torch - attnpred| = %.3g" % (k, tuple(x.shape), layer, err))
    if not worst <= args.tol:
        print("FAIL: max error %.3g > %.3g" % (worst, args.tol), file=sys.stderr)
        return 1
    print("OK: %d cases, max error %.3g <= %.3g" % (n_cases, worst, args.tol))
    return 0


def cmd_import_selftest(args):
    d = args.workdir
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(1234)
    ref = AttentionPredictorCNN()
    pth = os.path.join(d, "official.pth")
    torch.save(ref.state_dict(), pth)
    out = os.path.join(d, "converted.safetensors")
    imp = [sys.executable, args.importer]
    r = subprocess.run(imp + [pth, out], capture_output=True, text=True)
    if r.returncode != 0:
        print("import failed: %s" % r.stderr, file=sys.stderr)
        return 1
    before = open(out, "rb").read()
    # A corrupt checkpoint: clear message, exit 1, the good output untouched.
    bad = os.path.join(d, "corrupt.pth")
    with open(pth, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    r = subprocess.run(imp + [bad, out, "--force"], capture_output=True, text=True)
    if r.returncode != 1 or bad not in r.stderr:
        print("corrupt .pth: exit %d, stderr %r" % (r.returncode, r.stderr), file=sys.stderr)
        return 1
    if open(out, "rb").read() != before:
        print("corrupt .pth overwrote the output", file=sys.stderr)
        return 1
    # Existing output without --force is refused.
    r = subprocess.run(imp + [pth, out], capture_output=True, text=True)
    if r.returncode != 1:
        print("existing output without --force: exit %d" % r.returncode, file=sys.stderr)
        return 1
    # The converted file loads back into the module with identical weights.
    _, model_of, meta = load_export(out)
    if meta.get("history") != "64" or meta.get("block") != "16":
        print("metadata %r" % meta, file=sys.stderr)
        return 1
    for k, v in ref.state_dict().items():
        if not torch.equal(model_of(0).state_dict()[k], v):
            print("tensor %s changed in conversion" % k, file=sys.stderr)
            return 1
    g = torch.Generator().manual_seed(99)
    io, iometa = {}, {}
    shapes = [(4, 64, 24), (2, 64, 40), (3, 7, 5)]
    for k, (n, h, w) in enumerate(shapes):
        x = torch.rand(n, h, w, generator=g) * (torch.rand(n, h, w, generator=g) < 0.2)
        with torch.no_grad():
            y = ref(x)
        io["x.%d" % k] = x.numpy()
        io["y.%d" % k] = y.numpy()
        iometa["layer.%d" % k] = "0"
    iometa["n_cases"] = str(len(shapes))
    write_safetensors(os.path.join(d, "torch_io.safetensors"), io, iometa)
    print("OK: import self-test in %s" % d)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--export", required=True)
    c.add_argument("--io", required=True)
    c.add_argument("--tol", type=float, default=1e-5)
    s = sub.add_parser("import-selftest")
    s.add_argument("--workdir", required=True)
    s.add_argument("--importer", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "import_pth.py"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        return cmd_check(args) if args.cmd == "check" else cmd_import_selftest(args)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
