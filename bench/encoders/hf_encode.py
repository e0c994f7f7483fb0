"""The reference side of the encoder benchmark: the same work as `adaptor-torch embed` done with
HF transformers + PyTorch (+ OpenCV for decoding), with the same thread count, as the original's
`get_pretrained_embeddings.py` does it (tokenise a batch, pad to its longest, forward; images:
decode, MGCA resize_img, crop, normalise, forward), in one process (DataLoader num_workers=0).

Prints one JSON line: load seconds, forward-only seconds and items/s, end-to-end seconds and
items/s (reading inputs to writing the .npy; imports and model loading excluded, as in the Rust
numbers).

  hf_encode.py text  --model DIR --input texts.txt --threads 2 [--batch-size 64] [--pooling pooler]
  hf_encode.py image --kind dinov2|resnet-ae --model DIR_OR_PT --input-dir DIR --threads 2
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def resize_img(img, scale):
    """MGCA datasets/utils.py resize_img."""
    import cv2
    size = img.shape
    max_dim = max(size)
    max_ind = size.index(max_dim)
    if max_ind == 0:
        wpercent = scale / float(size[0])
        hsize = int((float(size[1]) * float(wpercent)))
        desireable_size = (scale, hsize)
    else:
        hpercent = scale / float(size[1])
        wsize = int((float(size[0]) * float(hpercent)))
        desireable_size = (wsize, scale)
    resized = cv2.resize(img, desireable_size[::-1], interpolation=cv2.INTER_AREA)
    if max_ind == 0:
        pad = scale - resized.shape[1]
        pads = [(0, 0), (int(np.floor(pad / 2)), int(np.ceil(pad / 2)))]
    else:
        pad = scale - resized.shape[0]
        pads = [(int(np.floor(pad / 2)), int(np.ceil(pad / 2))), (0, 0)]
    return np.pad(resized, pads, "constant", constant_values=0)


def text(a):
    from transformers import AutoTokenizer, BertModel
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = BertModel.from_pretrained(a.model).eval()
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(a.input) as f:
        lines = f.read().splitlines()
    out = np.zeros((len(lines), model.config.hidden_size), np.float32)
    fwd = 0.0
    with torch.inference_mode():
        for s in range(0, len(lines), a.batch_size):
            enc = tok(lines[s:s + a.batch_size], padding="longest", truncation=True, max_length=a.max_length,
                      return_tensors="pt")
            t1 = time.perf_counter()
            o = model(**enc)
            if a.pooling == "pooler":
                v = o.pooler_output
            else:
                m = enc["attention_mask"].unsqueeze(-1).float()
                v = (o.last_hidden_state * m).sum(1) / m.sum(1)
            out[s:s + len(v)] = v.numpy()
            fwd += time.perf_counter() - t1
    np.save(a.output, out)
    e2e = time.perf_counter() - t0
    return len(lines), load, fwd, e2e


def image(a):
    import cv2
    files = sorted(glob.glob(os.path.join(a.input_dir, "*.jpg")))[:a.limit or None]
    t0 = time.perf_counter()
    if a.kind == "dinov2":
        from transformers import Dinov2Model
        model = Dinov2Model.from_pretrained(a.model).eval()
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    else:
        from make_inputs import xrv_autoencoders
        model = xrv_autoencoders().ResNetAE101()
        model.load_state_dict(torch.load(a.model, map_location="cpu", weights_only=True))
        model.eval()
    load = time.perf_counter() - t0

    def prep(path):
        x = resize_img(cv2.imread(path, 0), a.resize)
        top = int(round((a.resize - a.crop) / 2.0))
        if a.kind == "dinov2":
            c = x[top:top + a.crop, top:top + a.crop].astype(np.float32) / 255
            return (np.repeat(c[None], 3, 0) - mean) / std
        f = (2 * (x.astype(np.float32) / 255) - 1.0) * 1024
        return cv2.resize(f, (a.crop, a.crop), interpolation=cv2.INTER_AREA)[None]

    t0 = time.perf_counter()
    outs, fwd = [], 0.0
    with torch.inference_mode():
        for s in range(0, len(files), a.batch_size):
            x = torch.from_numpy(np.stack([prep(p) for p in files[s:s + a.batch_size]]))
            t1 = time.perf_counter()
            if a.kind == "dinov2":
                v = model(pixel_values=x).pooler_output
            else:
                v = model.encode(x).flatten(2).mean(2)
            outs.append(v.numpy())
            fwd += time.perf_counter() - t1
    np.save(a.output, np.concatenate(outs))
    e2e = time.perf_counter() - t0
    return len(files), load, fwd, e2e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["text", "image"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", default="dinov2")
    ap.add_argument("--input")
    ap.add_argument("--input-dir")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by name)")
    ap.add_argument("--output", default="/tmp/hf_encode.npy")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=112)
    ap.add_argument("--pooling", default="pooler")
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n, load, fwd, e2e = text(a) if a.what == "text" else image(a)
    print(json.dumps({"items": n, "load_s": round(load, 3), "forward_s": round(fwd, 3),
                      "forward_per_s": round(n / fwd, 2), "end_to_end_s": round(e2e, 3),
                      "end_to_end_per_s": round(n / e2e, 2), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
