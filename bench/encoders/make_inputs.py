"""Writes the encoder benchmark's inputs into a work folder (default .cache/bench-encoders):

- bert-base/: a random-initialised BERT-base (768 hidden, 12 layers, 12 heads, 3072 FFN; the
  size of every text encoder the original uses) with all-MiniLM-L6-v2's uncased vocabulary and
  tokenizer, as model.safetensors;
- dinov2-small/: a random-initialised DINOv2-S/14 (facebook/dinov2-small's config) in the HF
  layout; resnet-ae/: a random-initialised torchxrayvision ResNetAE101, as a state-dict `.pt`;
- texts.txt: report-like texts (10 to 60 words); images/: gray JPEG radiograph-sized images.

Random weights time exactly like real ones. Needs the MiniLM folder (scripts/test-assets-encoders.sh)
and the torchxrayvision wheel (scripts/test-assets.sh). Idempotent: existing outputs are kept.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import types
import zipfile

import cv2
import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

WORDS = """the heart size is normal lungs are clear no focal consolidation pleural effusion or pneumothorax
mild cardiomegaly unchanged compared with prior study left lower lobe opacity may represent atelectasis
or pneumonia right upper lobe nodule stable mediastinal contours within normal limits no acute
cardiopulmonary process interval improvement of pulmonary edema small bilateral effusions""".split()


def texts(path, n, rng):
    with open(path, "w") as f:
        for _ in range(n):
            k = int(rng.integers(10, 61))
            f.write(" ".join(rng.choice(WORDS, size=k)) + ".\n")


def images(folder, n, size, rng):
    os.makedirs(folder, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        p = os.path.join(folder, f"img{i:05d}.jpg")
        if os.path.exists(p):
            continue
        base = 110 + 60 * np.sin(xx / (40.0 + i % 7)) * np.cos(yy / (55.0 + i % 5))
        img = np.clip(base + rng.normal(0, 18, (size, size)), 0, 255).astype(np.uint8)
        cv2.imwrite(p, img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(ROOT, ".cache", "bench-encoders"))
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--image-px", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    from transformers import BertConfig, BertModel, Dinov2Config, Dinov2Model

    minilm = os.path.join(ROOT, ".cache", "test-assets", "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(minilm, "tokenizer.json")):
        sys.exit(f"{minilm} missing: run scripts/test-assets-encoders.sh")
    d = os.path.join(a.work, "bert-base")
    if not os.path.isfile(os.path.join(d, "model.safetensors")):
        BertModel(BertConfig()).eval().save_pretrained(d)
        for f in ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]:
            shutil.copy(os.path.join(minilm, f), d)
    d = os.path.join(a.work, "dinov2-small")
    if not os.path.isfile(os.path.join(d, "model.safetensors")):
        cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                           image_size=518, patch_size=14, layerscale_value=1.0)
        Dinov2Model(cfg).eval().save_pretrained(d)
    d = os.path.join(a.work, "resnet-ae")
    if not os.path.isfile(os.path.join(d, "resnet-ae101.pt")):
        os.makedirs(d, exist_ok=True)
        ae = xrv_autoencoders()
        torch.save(ae.ResNetAE101().eval().state_dict(), os.path.join(d, "resnet-ae101.pt"))
    p = os.path.join(a.work, "texts.txt")
    if not os.path.isfile(p):
        texts(p, a.texts, rng)
    images(os.path.join(a.work, "images"), a.images, a.image_px, rng)
    print(f"bench inputs in {os.path.normpath(a.work)}")


def xrv_autoencoders():
    """torchxrayvision 1.5.7's autoencoders.py, verbatim from the cached wheel."""
    wheels = glob.glob(os.path.join(ROOT, ".cache", "wheels", "torchxrayvision-1.5.7-*.whl"))
    if not wheels:
        sys.exit("torchxrayvision 1.5.7 wheel missing: run scripts/test-assets.sh")
    with zipfile.ZipFile(wheels[0]) as z:
        source = z.read("torchxrayvision/autoencoders.py").decode()
    pkg = types.ModuleType("xrv_stub")
    pkg.__path__ = []
    sys.modules["xrv_stub"] = pkg
    sys.modules["xrv_stub.utils"] = types.ModuleType("xrv_stub.utils")
    mod = types.ModuleType("xrv_stub.autoencoders")
    mod.__package__ = "xrv_stub"
    sys.modules["xrv_stub.autoencoders"] = mod
    exec(compile(source, "torchxrayvision/autoencoders.py", "exec"), mod.__dict__)
    return mod


if __name__ == "__main__":
    main()
