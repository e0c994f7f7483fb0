#!/usr/bin/env python3
"""PyTorch eager counterpart of stages/train/examples/bench_heads.rs: the same head
(`SSLEvaluator` from tools/heads_reference.py), batch, data size, AdamW decay groups and step
(gather by index, forward in training mode, loss, backward, AdamW, loss.item()). One JSON line."""

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heads_reference import SSLEvaluator, loss_fn, optimizer  # noqa: E402
from timing import time_steps  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("batch", 512), ("dim", 768), ("classes", 1), ("steps", 50),
                          ("warmup", 5), ("threads", 1)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--linear", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = 16 * a.batch
    features = torch.rand(n, a.dim) * 2 - 1
    k = max(a.classes, 2)
    labels = torch.tensor([(i * 7 + i // 3) % k for i in range(n)])
    head = SSLEvaluator(a.dim, a.classes, None if a.linear else 512, 0.1)
    head.train()
    opt = optimizer(head, 5e-4, 1e-4)
    order = torch.randperm(n)

    def step(i):
        lo = (i * a.batch) % n
        idx = order[lo:lo + a.batch]
        x, y = features.index_select(0, idx), labels.index_select(0, idx)
        opt.zero_grad()
        loss = loss_fn(head(x), y, a.classes)
        loss.backward()
        opt.step()
        loss.item()

    times, cpu_per_step = time_steps(a.warmup, a.steps, step)
    total = sum(times)
    print(json.dumps({
        "impl": "pytorch-eager", "head": "linear" if a.linear else "mlp", "device": "Cpu",
        "batch": a.batch, "dim": a.dim, "classes": a.classes, "threads": a.threads,
        "steps": a.steps, "steps_per_s": a.steps / total,
        "examples_per_s": a.steps * a.batch / total, "step_ms_min": 1e3 * min(times),
        "cpu_ms_per_step": 1e3 * cpu_per_step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in head.parameters()),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
