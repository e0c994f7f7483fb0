"""PyTorch eager side of the GPU training benchmark: bench/adaptor/bench_torch.py's step (the
reference module of tools/adaptor_reference.py, AdamW with its decay groups, a linear schedule)
on a device, over `--pairs` pooled pairs held there and walked through in epochs of
⌈pairs / batch⌉ steps (the last one smaller), as `bench_train --pairs` does. `--bf16`: the step
under `torch.autocast(dtype=bfloat16)` (matrix products in bf16, the rest and the master weights
in fp32), which the Rust `Precision::Bf16` reproduces by hand. Prints one JSON line.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tools"))
sys.path.insert(0, str(root / "bench"))
from adaptor_reference import Adaptor, param_groups  # noqa: E402
from timing import time_steps  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=392)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    n = a.pairs
    image, text = torch.rand(n, a.dim, device=dev), torch.rand(n, 768, device=dev)
    model = Adaptor(a.dim).to(dev)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, original=False), lr=2e-5, betas=(0.9, 0.999), eps=1e-8)
    total, warm = 1000, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    order = torch.randperm(n, device=dev)
    per_epoch = math.ceil(n / a.batch)

    def step(i):
        start = (i % per_epoch) * a.batch
        rows = order[start:start + a.batch]
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(image[rows], text[rows])[3]
        loss.backward()
        opt.step()
        sched.step()
        loss.item()  # waits for the device, as the Rust loop's loss read does

    times, _ = time_steps(a.warmup, a.steps, step)
    total_s = sum(times)
    print(json.dumps({
        "impl": f"pytorch-eager {torch.__version__}", "device": a.device, "bf16": a.bf16,
        "batch": a.batch, "dim": a.dim, "pairs": n, "steps_per_epoch": per_epoch, "steps": a.steps,
        "steps_per_s": a.steps / total_s, "epochs_per_min": 60 * a.steps / total_s / per_epoch,
        "step_s_min": min(times), "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
