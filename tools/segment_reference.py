#!/usr/bin/env python3
"""Reference outputs for the segmentation decoders and loss (stages/torch/src/segment).

The decoders are written here in PyTorch layer by layer as the original's `models/seg_models.py`
builds them (reference D.2: `ResNetAEUNet`'s neck/up_conv/double_conv path and `ViTDecoder`), with
the original's state-dict names. Weights and inputs are not stored: both sides draw them from
SplitMix64 streams keyed by (seed, tensor name) — kaiming-normal(fan_out, relu) by Box-Muller for
`nn.Conv2d` weights, PyTorch's default U(±1/sqrt(fan_in)) for biases and `nn.ConvTranspose2d`, BN 1/0
— so only outputs go into the fixture. The loss is MGCA's `MixedLoss` (focal + Dice terms).

    .venv/bin/python tools/segment_reference.py            # writes data/segment/
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from machine import machine

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "segment")
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SEED = 5


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def derive_seed(seed, tag, index):
    """train::rng::derive_seed: FNV-1a over the tag, then two rounds of mixing."""
    h = 0xCBF29CE484222325
    for b in tag.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return mix((mix(seed ^ h) + index * GOLDEN) & M64)


def unit24(seed, n):
    """n values in [0, 1): the top 24 bits of splitmix64(seed + (i + 1) * golden)."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(seed & M64) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def uniform(seed, name, shape, bound, center=0.0):
    n = int(np.prod(shape))
    u = unit24(derive_seed(seed, name, 0), n)
    return torch.from_numpy((center + (2.0 * u - 1.0) * bound).astype(np.float32).reshape(shape))


def normal(seed, name, shape, std):
    n = int(np.prod(shape))
    u = unit24(derive_seed(seed, name, 0), 2 * n)
    z = np.sqrt(-2.0 * np.log(1.0 - u[0::2])) * np.cos(2.0 * math.pi * u[1::2])
    return torch.from_numpy((std * z).astype(np.float32).reshape(shape))


def double_conv(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
        nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    """ResNetAEUNet minus its frozen encoder and adaptor: `decode(vector, features)`."""

    def __init__(self, vector_dim, skips, size=224):
        super().__init__()
        reps = int(math.log2(size // 224))
        self.neck = nn.Sequential(
            nn.ConvTranspose2d(vector_dim, 512, 3, stride=1, bias=False),
            nn.ConvTranspose2d(512, 512, 3, stride=2, bias=False),
            *[nn.ConvTranspose2d(512, 512, 2, stride=2, bias=False)] * reps,  # shared, as the original
        )
        self.up_conv6 = nn.ConvTranspose2d(512, 512, 2, 2)
        self.conv6 = double_conv(512 + skips[3], 512)
        self.up_conv7 = nn.ConvTranspose2d(512, 256, 2, 2)
        self.conv7 = double_conv(256 + skips[2], 256)
        self.up_conv8 = nn.ConvTranspose2d(256, 128, 2, 2)
        self.conv8 = double_conv(128 + skips[1], 128)
        self.up_conv9 = nn.ConvTranspose2d(128, 64, 2, 2)
        self.conv9 = double_conv(64 + skips[0], 64)
        self.up_conv10 = nn.ConvTranspose2d(64, 32, 2, 2)
        self.conv10 = nn.Conv2d(32, 1, kernel_size=1)

    def forward(self, vector, block1, block2, block3, block4):
        x = self.neck(vector.unsqueeze(2).unsqueeze(3))
        x = self.conv6(torch.cat([self.up_conv6(x), block4], 1))
        x = self.conv7(torch.cat([self.up_conv7(x), block3], 1))
        x = self.conv8(torch.cat([self.up_conv8(x), block2], 1))
        x = self.conv9(torch.cat([self.up_conv9(x), block1], 1))
        return self.conv10(self.up_conv10(x))


class ViTDecoder(nn.Module):
    def __init__(self, c, features=(512, 256, 128, 64), input_size=224):
        super().__init__()
        if input_size == 224:
            self.decoder_0 = nn.Sequential(nn.Conv2d(c, c, 3, padding=0), nn.BatchNorm2d(c), nn.ReLU(True))
        else:
            self.decoder_0 = nn.Sequential(
                nn.Conv2d(c, c, 3, stride=1, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
                nn.Upsample(scale_factor=14 / 16),
            )
        prev = c
        for i, f in enumerate(features):
            setattr(self, f"decoder_{i + 1}", nn.Sequential(
                nn.Conv2d(prev, f, 3, padding=1), nn.BatchNorm2d(f), nn.ReLU(True), nn.Upsample(scale_factor=2)))
            prev = f
        self.final_out = nn.Conv2d(features[-1], 1, 3, padding=1)

    def forward(self, x):
        for i in range(5):
            x = getattr(self, f"decoder_{i}")(x)
        return self.final_out(x)


def init_like_rust(model, seed):
    """The Rust decoders' initialisation, tensor by tensor (state-dict names)."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, p in model.named_parameters():
            mod_name, leaf = name.rsplit(".", 1)
            m = mods[mod_name]
            if isinstance(m, nn.BatchNorm2d):
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif isinstance(m, nn.Conv2d):
                out, inp, k, _ = m.weight.shape
                if leaf == "weight":
                    p.copy_(normal(seed, name, p.shape, math.sqrt(2.0 / (out * k * k))))
                else:
                    p.copy_(uniform(seed, name, p.shape, 1.0 / math.sqrt(inp * k * k)))
            elif isinstance(m, nn.ConvTranspose2d):
                _, out, k, _ = m.weight.shape
                p.copy_(uniform(seed, name, p.shape, 1.0 / math.sqrt(out * k * k)))
            else:
                raise ValueError(name)


def inputs(tag, shape):
    return uniform(SEED, tag, shape, 1.0)


def focal(x, t, gamma=2.0):
    max_val = (-x).clamp(min=0)
    loss = x - x * t + max_val + ((-max_val).exp() + (-x - max_val).exp()).log()
    invprobs = F.logsigmoid(-x * (t * 2.0 - 1.0))
    return ((invprobs * gamma).exp() * loss).mean()


def dice_original(x, t):
    p = torch.sigmoid(x).view(-1)
    tf = t.view(-1)
    return -torch.log((2.0 * (p * tf).sum() + 1.0) / (p.sum() + tf.sum() + 1.0))


def dice_modified(p, t):
    p = p.contiguous().view(p.shape[0], -1)
    t = t.contiguous().view(t.shape[0], -1)
    num = torch.sum(p * t, dim=1) + 1.0
    den = torch.sum(p.pow(2) + t.pow(2), dim=1) + 1.0
    return (1 - num / den).sum()


def losses(x, t, alpha=10.0):
    f = focal(x, t).item()
    return {
        "focal": f,
        "original": alpha * f + dice_original(x, t).item(),
        "modified": alpha * f + dice_modified(torch.sigmoid(x), t).item(),
        "modified_on_logits": alpha * f + dice_modified(x, t).item(),
    }


def sub(t):
    """What the fixture keeps of an output: every 8th row and column."""
    return t[:, :, ::8, ::8].contiguous()


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    tensors, info = {}, {"seed": SEED, "cases": {}}

    def case(key, model, args, size):
        init_like_rust(model, SEED)
        b = args[0].shape[0]
        target = (inputs(f"{key}.target", (b, 1, size, size)) > 0.4).float()
        out = {}
        for mode in ["eval", "train"]:
            model.train(mode == "train")
            with torch.no_grad():
                y = model(*args)
            tensors[f"{key}.{mode}"] = sub(y)
            out[mode] = {"sum": y.double().sum().item(), "abs_sum": y.double().abs().sum().item(),
                         "losses": losses(y, target)}
        out["params"] = sum(p.numel() for p in model.parameters())
        info["cases"][key] = out

    skips = [2, 3, 4, 5]
    b = 2
    args = [inputs("unet.vector", (b, 6))] + [
        inputs(f"unet.block{i + 1}", (b, c, 224 >> (i + 1), 224 >> (i + 1))) for i, c in enumerate(skips)]
    case("unet224", UNetDecoder(6, skips), args, 224)
    case("vit224", ViTDecoder(8), [inputs("vit.grid224", (b, 8, 16, 16))], 224)
    case("vit896", ViTDecoder(8, input_size=896), [inputs("vit.grid896", (1, 8, 64, 64))], 896)
    info["machine"] = machine()
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps({k: v["eval"]["losses"] for k, v in info["cases"].items()}, indent=1))


if __name__ == "__main__":
    main()
