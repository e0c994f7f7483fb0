#!/usr/bin/env python3
"""PyTorch reference of the original Adaptor module (reference/adaptor-method.md, section A).

Written from the description in section A (not copied from the original code), with the original's
module and parameter names so that `state_dict()` has exactly the names of A.6. Two uses:

  fixtures   writes data/adaptor/parity.{safetensors,json}: inputs, expected outputs (eval mode,
             dropout off), per-tensor gradient checksums, and three AdamW steps under both
             weight-decay policies. The weights themselves (12 M floats, 48 MB) are not stored:
             both sides generate them with the counter-based generator below (integer arithmetic,
             exact in numpy and Rust), and the JSON records a checksum per tensor.
  verify     loads a checkpoint written by the Rust side with `load_state_dict(strict=True)`,
             recomputes embeddings and loss for the inputs stored beside it, and compares.

Run with the project venv: `.venv/bin/python tools/adaptor_reference.py fixtures`.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from machine import machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "adaptor"


# ---------------------------------------------------------------------------------------------
# The module (section A.2 - A.4)


class TransformerEncoderLayerWithCrossAttention(nn.Module):
    """Post-LN layer: x = LN1(src + drop(MHA)); x = LN2(x + drop(W2 drop(relu(W1 x))))."""

    def __init__(self, d_model=768, nhead=12, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, query=None, run_cross_attn=True):
        if run_cross_attn:
            # Query from the other modality, key and value from the updated one (A.2).
            a = self.attn(query, src, src)[0]
        else:
            a = self.attn(src, src, src)[0]
        x = self.norm1(src + self.dropout1(a))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x


class AdaptorModule(nn.Module):
    def __init__(self, d_model=768, num_layers=2, nhead=12):
        super().__init__()
        self.encoder = nn.ModuleList(
            [TransformerEncoderLayerWithCrossAttention(d_model, nhead) for _ in range(num_layers)]
        )

    def forward(self, image, text):
        squeeze = image.dim() == 2
        if squeeze:
            image, text = image.unsqueeze(1), text.unsqueeze(1)
        for layer in self.encoder:
            # The same layer for both modalities; text uses the already-updated image (A.2).
            image = layer(image, text)
            text = layer(text, image)
        if squeeze:
            image, text = image.squeeze(1), text.squeeze(1)
        return image, text

    def image_only(self, x):
        for layer in self.encoder:
            x = layer(x, run_cross_attn=False)
        return x


class Project(nn.Module):
    def __init__(self, vision_dim, text_dim=768, projection_dim=768):
        super().__init__()
        self.visual_projection = nn.Linear(vision_dim, projection_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, projection_dim, bias=False)


def clip_loss(logits_per_text, image_weight=0.75):
    """A.3: caption loss normalises over texts (dim 0), image loss over images (dim 1)."""
    n = logits_per_text.shape[0]
    idx = torch.arange(n)
    caption = -F.log_softmax(logits_per_text, dim=0)[idx, idx].mean()
    image = -F.log_softmax(logits_per_text, dim=1)[idx, idx].mean()
    return (1 - image_weight) * caption + image_weight * image


class Adaptor(nn.Module):
    def __init__(self, vision_dim, text_dim=768, projection_dim=768, num_layers=2):
        super().__init__()
        self.projection = Project(vision_dim, text_dim, projection_dim)
        self.adaptor_module = AdaptorModule(projection_dim, num_layers)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_weight = 0.75

    def forward(self, image_raw, text_raw):
        v = self.projection.visual_projection(image_raw)
        v = v / v.norm(dim=-1, keepdim=True)
        t = self.projection.text_projection(text_raw)
        t = t / t.norm(dim=-1, keepdim=True)
        v, t = self.adaptor_module(v, t)
        v = v / v.norm(dim=-1, keepdim=True)
        t = t / t.norm(dim=-1, keepdim=True)
        logits_per_text = t @ v.t() * self.logit_scale.exp()
        loss = clip_loss(logits_per_text, self.image_weight)
        return v, t, logits_per_text, loss

    def image_embed(self, x):
        """A.4. A 2-D input is one unbatched sequence of length B (samples attend to each other);
        pass [B, 1, Dv] for per-sample outputs, [B, N, Dv] for patch tokens."""
        x = self.projection.visual_projection(x)
        x = x / x.norm(dim=-1, keepdim=True)
        x = self.adaptor_module.image_only(x)
        return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Deterministic weights without storing them: splitmix64 over a counter (exact in numpy and Rust).

M64 = (1 << 64) - 1


def splitmix_uniform(seed, n):
    """n values in [0, 1): the top 24 bits of splitmix64(seed + (i + 1) * golden), i = 0..n-1."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(seed & M64) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def synthetic_spec(model, base_seed):
    """(name, shape, seed, center, bound) per tensor, in state_dict order."""
    spec = []
    for idx, (name, p) in enumerate(model.state_dict().items()):
        shape = list(p.shape)
        if name == "logit_scale":
            center, bound = math.log(1 / 0.07), 0.0
        elif name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            center, bound = 1.0, 0.1
        elif "norm" in name:
            center, bound = 0.0, 0.05
        elif name.endswith("in_proj_weight"):
            center, bound = 0.0, math.sqrt(6.0 / (shape[0] + shape[1]))
        elif name.endswith("in_proj_bias") or name.endswith("out_proj.bias"):
            center, bound = 0.0, 0.02
        elif name.endswith(".weight"):
            center, bound = 0.0, 1.0 / math.sqrt(shape[1])
        else:  # linear biases
            fan_in = dict(model.named_parameters())[name.replace(".bias", ".weight")].shape[1]
            center, bound = 0.0, 1.0 / math.sqrt(fan_in)
        spec.append(dict(name=name, shape=shape, seed=base_seed + idx, center=center, bound=bound))
    return spec


def synthetic_state_dict(spec):
    sd = {}
    for s in spec:
        n = int(np.prod(s["shape"])) if s["shape"] else 1
        u = splitmix_uniform(s["seed"], n)
        vals = (s["center"] + (2.0 * u - 1.0) * s["bound"]).astype(np.float32)
        sd[s["name"]] = torch.from_numpy(vals.reshape(s["shape"]))
    return sd


# ---------------------------------------------------------------------------------------------


def param_groups(model, original):
    if original:
        return [{"params": list(model.parameters()), "weight_decay": 0.01}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def checksums(t):
    t = t.detach().double()
    return {"sum": t.sum().item(), "sumsq": (t * t).sum().item()}


def make_fixtures(args):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dv, b = 512, 6
    model = Adaptor(dv)
    spec = synthetic_spec(model, base_seed=20240101)
    sd = synthetic_state_dict(spec)
    model.load_state_dict(sd, strict=True)
    model.eval()
    for s in spec:
        s.update(checksums(sd[s["name"]]))

    image = torch.randn(b, dv)
    text = torch.randn(b, 768)
    tokens = torch.randn(2, 5, dv)
    tensors = {"input.image": image, "input.text": text, "input.image_tokens": tokens}

    with torch.no_grad():
        v, t, logits, loss = model(image, text)
        tensors.update({
            "expected.image_embeds": v,
            "expected.text_embeds": t,
            "expected.logits_per_text": logits,
            "expected.loss": loss.reshape([]),
            # A.4: per sample ([B,1,Dv]) and the original's batch-attending 2-D call.
            "expected.image_only": model.image_embed(image.unsqueeze(1)).squeeze(1),
            "expected.image_only_batch_attending": model.image_embed(image),
            "expected.image_tokens": model.image_embed(tokens),
        })

    # Gradients of the loss (eval mode: no dropout).
    model.zero_grad()
    model(image, text)[3].backward()
    grads = {name: checksums(p.grad) for name, p in model.named_parameters()}
    tensors["expected.grad.logit_scale"] = model.logit_scale.grad.detach().clone().reshape([])
    tensors["expected.grad.encoder.1.norm2.weight"] = model.adaptor_module.encoder[1].norm2.weight.grad.clone()

    # Three AdamW steps on the same batch at constant lr, under both weight-decay policies.
    adamw = {}
    for policy in ["original", "fixed"]:
        model.load_state_dict(sd, strict=True)
        opt = torch.optim.AdamW(param_groups(model, policy == "original"), lr=1e-3,
                                betas=(0.9, 0.999), eps=1e-8, foreach=False)
        for _ in range(3):
            opt.zero_grad()
            model(image, text)[3].backward()
            opt.step()
        adamw[policy] = {name: checksums(p) for name, p in model.named_parameters()}
        for name in ["projection.text_projection.weight", "adaptor_module.encoder.0.attn.in_proj_weight",
                     "adaptor_module.encoder.0.linear1.weight"]:
            # Rows 0-1 (query part of in_proj: zero gradient, so only decay moves them) and the
            # first value-part rows.
            p = dict(model.named_parameters())[name].detach()
            tensors[f"adamw.{policy}.{name}.rows0"] = p[:2].clone()
            if name.endswith("in_proj_weight"):
                tensors[f"adamw.{policy}.{name}.rows_v"] = p[1536:1538].clone()
        tensors[f"adamw.{policy}.logit_scale"] = model.logit_scale.detach().clone().reshape([])
        tensors[f"adamw.{policy}.adaptor_module.encoder.1.norm1.bias"] = (
            model.adaptor_module.encoder[1].norm1.bias.detach().clone())

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "parity.safetensors"))
    meta = {
        "generated_by": "tools/adaptor_reference.py fixtures",
        "torch": torch.__version__,
        "machine": machine(),
        "vision_dim": dv,
        "batch": b,
        "weights": spec,
        "grads": grads,
        "adamw": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "steps": 3,
                  "params": adamw},
    }
    (OUT / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT / 'parity.safetensors'} and parity.json")


def verify(args):
    """Strict load of a Rust checkpoint; recompute the outputs stored in --io and compare."""
    torch.set_num_threads(1)
    config = json.loads(Path(args.config).read_text())
    dv = config["model"]["vision_dim"] if "model" in config else config["vision_dim"]
    model = Adaptor(dv)
    sd = load_file(args.checkpoint)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    model.eval()
    io = load_file(args.io)
    with torch.no_grad():
        v, t, logits, loss = model(io["input.image"], io["input.text"])
        image_only = model.image_embed(io["input.image"].unsqueeze(1)).squeeze(1)
    # The parity rule of the Rust tests (stages/train/tests/common/parity.rs): max |a - b| within
    # atol + rtol * max |reference|, the reference being PyTorch's output here.
    def within(name, ours, ref):
        diff = (ref - ours).abs().max().item()
        allowed = args.atol + args.rtol * ref.abs().max().item()
        report[name] = diff
        return diff <= allowed

    report = {"tensors": len(sd)}
    ok = all([
        within("image_embeds", io["rust.image_embeds"], v),
        within("text_embeds", io["rust.text_embeds"], t),
        within("loss", io["rust.loss"].reshape([]), loss.reshape([])),
        within("image_only", io["rust.image_only"], image_only),
    ])
    report["ok"] = ok
    if args.resave:
        # The other direction: PyTorch's own state_dict, for the Rust side to load.
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.resave)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixtures")
    v = sub.add_parser("verify")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--config", required=True)
    v.add_argument("--io", required=True)
    # The budget of the Rust forward-parity test (FORWARD in stages/train/tests/original.rs).
    v.add_argument("--rtol", type=float, default=5e-5)
    v.add_argument("--atol", type=float, default=1e-7)
    v.add_argument("--resave", help="also save the loaded model's state_dict here (safetensors)")
    args = ap.parse_args()
    {"fixtures": make_fixtures, "verify": verify}[args.cmd](args)


if __name__ == "__main__":
    main()
