#!/usr/bin/env python3
"""PyTorch counterpart of bench/bench_train.c (CPU, or CUDA with --device cuda): the same CNN
(docs/predictor.md, "Model": Conv2d 1->16 3x3, ReLU, Conv2d 16->32 3x3, ReLU, mean over
time, Conv1d 32->1), the same batch shape and the same step (forward, MSE,
backward, Adam), timed after two warm-up steps.

    .venv/bin/python scripts/bench_train_torch.py [--H 64] [--W 256]
        [--batch 64] [--steps 20] [--threads 2] [--device cpu|cuda] [--json OUT.json]

On CUDA the model and data live on the GPU, TF32 is off (float32 products,
as attnpred's cuDNN path) and the timer reads after a synchronisation.

Prints samples/s; scripts/bench_train.sh divides attnpred's by it.
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--W", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import torch
        from torch import nn
    except ImportError as e:
        print(f"bench_train_torch: PyTorch is not installed ({e})", file=sys.stderr)
        return 77

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_train_torch: --device cuda, but torch sees no GPU", file=sys.stderr)
            return 77
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    class Predictor(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.conv3 = nn.Conv1d(32, 1, 1)

        def forward(self, x):  # x [N, H, W]
            h = torch.relu(self.conv1(x.unsqueeze(1)))
            h = torch.relu(self.conv2(h))
            return self.conv3(h.mean(dim=2)).squeeze(1)

    model = Predictor().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # window-like values, as bench-train (the work does not depend on them)
    g = torch.Generator().manual_seed(7)
    x = torch.empty(a.batch, a.H, a.W).exponential_(1000.0, generator=g)
    hot = torch.rand(a.batch, a.H, a.W, generator=g) < 0.03
    x = x + hot * 0.05 * torch.rand(a.batch, a.H, a.W, generator=g)
    y = x[:, -1, :].clone()
    x, y = x.to(dev), y.to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    sps = a.batch * a.steps / dt
    n_params = sum(p.numel() for p in model.parameters())
    where = (f"cuda ({torch.cuda.get_device_name()})" if a.device == "cuda"
             else f"cpu, {a.threads} threads")
    print(f"pytorch {torch.__version__} {where}: {sps:.1f} samples/s "
          f"({1e3 * dt / a.steps:.2f} ms/step; N {a.batch}, H {a.H}, W {a.W}, "
          f"{n_params} parameters)")
    if a.json:
        out = {"bench": "train_torch", "torch": torch.__version__, "threads": a.threads,
               "device": a.device,
               "N": a.batch, "H": a.H, "W": a.W, "steps": a.steps, "params": n_params,
               "samples_per_s": sps, "ms_per_step": 1e3 * dt / a.steps, "final_loss": loss}
        tmp = f"{a.json}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
