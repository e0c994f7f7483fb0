#!/usr/bin/env python3
"""PyTorch eager side of the Adaptor training benchmark: the reference module
(tools/adaptor_reference.py, nn.MultiheadAttention and all), the same step as the Rust loop
(gather a batch, forward with dropout, backward, AdamW with the no-decay groups, linear
schedule). Prints one JSON line."""

import argparse
import json
import math
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adaptor_reference import Adaptor, param_groups  # noqa: E402
from timing import time_steps  # noqa: E402


def current_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base_rss = current_rss_mib()
    n = 4 * a.batch
    image, text = torch.rand(n, a.dim), torch.rand(n, 768)
    model = Adaptor(a.dim)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, original=False), lr=2e-5, betas=(0.9, 0.999), eps=1e-8)
    total, warm = 1000, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    order = torch.randperm(n)

    def step(i):
        start = (i * a.batch) % n
        rows = order[start:start + a.batch]
        opt.zero_grad()
        loss = model(image[rows], text[rows])[3]
        loss.backward()
        opt.step()
        sched.step()
        loss.item()

    times, cpu_per_step = time_steps(a.warmup, a.steps, step)
    print(json.dumps({
        "impl": f"pytorch-eager {torch.__version__}",
        "batch": a.batch, "dim": a.dim, "threads": a.threads, "steps": a.steps,
        "steps_per_s": a.steps / sum(times),
        "step_s_min": min(times),
        "cpu_s_per_step": cpu_per_step,
        "base_rss_mib": base_rss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
