#!/usr/bin/env python3
"""PyTorch reference of the classification heads (reference/adaptor-method.md, D.1), for the
parity test `stages/train/tests/heads.rs`.

`SSLEvaluator` is written here from the description in D.1 (the pl_bolts/MGCA module: its layers in
`block_forward = nn.Sequential(Flatten, Dropout, Linear, BatchNorm1d, ReLU, Dropout, Linear)`, or
`Flatten, Dropout, Linear` for the linear probe). For each case the fixture stores the initial
state dict (running statistics moved away from their defaults), a batch, the evaluation-mode
logits, and the state dict, loss and evaluation logits after one AdamW step in training mode
(decay on weight matrices only, as the Rust side does by default). The `dropout` case seeds
libtorch's generator right before the training forward: the Rust side, linking the same libtorch,
draws the same masks.

  .venv/bin/python tools/heads_reference.py fixtures   # writes data/heads/parity.{safetensors,json}
  .venv/bin/python tools/heads_reference.py verify DIR # loads DIR/head.safetensors (strict) and
                                                       # checks its keys and shapes
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from machine import machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "heads"


class SSLEvaluator(nn.Module):
    def __init__(self, n_input, n_classes, n_hidden=512, p=0.1):
        super().__init__()
        if n_hidden is None:
            self.block_forward = nn.Sequential(
                nn.Flatten(), nn.Dropout(p=p), nn.Linear(n_input, n_classes, bias=True)
            )
        else:
            self.block_forward = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(p=p),
                nn.Linear(n_input, n_hidden, bias=False),
                nn.BatchNorm1d(n_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(p=p),
                nn.Linear(n_hidden, n_classes, bias=True),
            )

    def forward(self, x):
        return self.block_forward(x)


def loss_fn(logits, y, classes):
    if classes == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())
    return nn.functional.cross_entropy(logits, y)


def optimizer(model, lr, wd):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8,
    )


CASES = [
    # name, head, n_input, hidden, classes, dropout
    ("mlp_binary", "mlp", 24, 16, 1, 0.0),
    ("mlp_three", "mlp", 24, 16, 3, 0.0),
    ("linear_three", "linear", 24, None, 3, 0.0),
    ("mlp_three_dropout", "mlp", 24, 16, 3, 0.1),
]
BATCH, LR, WD, DROPOUT_SEED = 10, 1e-2, 0.05, 1234


def fixtures():
    tensors, meta = {}, {"generator": "tools/heads_reference.py", "torch": torch.__version__, "machine": machine(),
                         "lr": LR, "weight_decay": WD, "dropout_seed": DROPOUT_SEED, "cases": []}
    for i, (name, head, n_input, hidden, classes, p) in enumerate(CASES):
        torch.manual_seed(100 + i)
        m = SSLEvaluator(n_input, classes, hidden, p)
        if hidden is not None:
            bn = m.block_forward[3]
            bn.running_mean.copy_(torch.randn(hidden) * 0.3)
            bn.running_var.copy_(torch.rand(hidden) + 0.5)
            bn.num_batches_tracked.fill_(3)
        x = torch.randn(BATCH, n_input)
        y = torch.randint(0, 2 if classes == 1 else classes, (BATCH,))
        for k, v in m.state_dict().items():
            tensors[f"{name}.init.{k}"] = v.clone()
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y
        m.eval()
        with torch.no_grad():
            tensors[f"{name}.eval_logits"] = m(x)
        m.train()
        opt = optimizer(m, LR, WD)
        opt.zero_grad()
        torch.manual_seed(DROPOUT_SEED)
        loss = loss_fn(m(x), y, classes)
        loss.backward()
        opt.step()
        for k, v in m.state_dict().items():
            tensors[f"{name}.after.{k}"] = v.clone()
        m.eval()
        with torch.no_grad():
            tensors[f"{name}.after_eval_logits"] = m(x)
        meta["cases"].append({"name": name, "head": head, "n_input": n_input,
                              "hidden": hidden or 0, "classes": classes, "dropout": p,
                              "loss": loss.item()})
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "parity.safetensors")
    (OUT / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{OUT}: {len(CASES)} cases, {len(tensors)} tensors")


def verify(out_dir):
    """Loads a Rust-written head into SSLEvaluator with strict=True (the checkpoint names match)."""
    path = Path(out_dir) / "head.safetensors"
    sd = load_file(path)
    n_input = int(sd.get("block_forward.2.weight").shape[1])
    if "block_forward.6.weight" in sd:
        hidden, classes = sd["block_forward.2.weight"].shape[0], sd["block_forward.6.weight"].shape[0]
    else:
        hidden, classes = None, sd["block_forward.2.weight"].shape[0]
    m = SSLEvaluator(n_input, classes, hidden)
    m.load_state_dict(sd, strict=True)
    m.eval()
    print(f"{path}: loads into SSLEvaluator({n_input}, {classes}, {hidden}) with strict=True")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixtures")
    v = sub.add_parser("verify")
    v.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "fixtures":
        fixtures()
    else:
        verify(a.dir)


if __name__ == "__main__":
    sys.exit(main())
