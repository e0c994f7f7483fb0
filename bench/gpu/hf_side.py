"""The Python side of the GPU benchmark, the usual way: HF transformers `Dinov2Model` fed by a
PyTorch `DataLoader` (worker processes decode with OpenCV and preprocess as MGCA does: resize_img
to 256, centre crop 224, ImageNet normalisation, gray to 3 channels; bench/encoders/hf_encode.py),
and `BertModel` fed by its fast tokenizer (batches in input order, padded to their longest).

  hf_side.py decode --images DIR --workers N --batch-size B
  hf_side.py image  --model DIR --images DIR --workers N --batch-size B --device D --precision P
  hf_side.py text   --model DIR --input texts.txt --batch-size B --device D --precision P
  hf_side.py parity --kind image|text --model DIR --ours-fp32 T.parquet --ours-bf16 T.parquet
                    (--images DIR --limit N | --input texts.txt --limit N) --device D

Each prints one JSON line. Rates: forward = the model call, inputs moved to the device and the
output copied back included (the copy waits for the GPU); end to end = the DataLoader's workers
started (or the texts read) to the outputs saved; model loading excluded, as on our side.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "encoders"))
from hf_encode import resize_img  # noqa: E402  (MGCA's resize_img, as the CPU benchmark uses)

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Images(torch.utils.data.Dataset):
    """Gray JPEGs → [3, crop, crop] float32, DINOv2's preprocessing in the original."""

    def __init__(self, files, resize=256, crop=224):
        self.files, self.resize, self.crop = files, resize, crop

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import cv2
        x = resize_img(cv2.imread(self.files[i], cv2.IMREAD_GRAYSCALE), self.resize)
        top = int(round((self.resize - self.crop) / 2.0))
        c = x[top:top + self.crop, top:top + self.crop].astype(np.float32) / 255
        return torch.from_numpy((np.repeat(c[None], 3, 0) - MEAN) / STD)


def image_files(folder, limit=0):
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))[:limit or None]


def one_thread(_):
    """Each worker decodes one image at a time on one core (OpenCV and torch not threaded)."""
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def loader(files, a, device):
    return torch.utils.data.DataLoader(
        Images(files), batch_size=a.batch_size, num_workers=a.workers, shuffle=False,
        pin_memory=device.type == "cuda", prefetch_factor=4 if a.workers else None,
        worker_init_fn=one_thread)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_dinov2(path, device, precision):
    from transformers import Dinov2Model
    return Dinov2Model.from_pretrained(path, dtype=DTYPES[precision]).to(device).eval()


def load_bert(path, device, precision):
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(path)
    return tok, BertModel.from_pretrained(path, dtype=DTYPES[precision]).to(device).eval()


def vit_forward(model, x, device, precision):
    x = x.to(device, non_blocking=True).to(DTYPES[precision])
    return model(pixel_values=x).pooler_output.float().cpu()


def bert_forward(tok, model, texts, max_length, device):
    enc = tok(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return model(**{k: v.to(device) for k, v in enc.items()}).pooler_output.float().cpu()


def decode(a):
    """The decode-only rate of these cores: the same DataLoader, no model."""
    files = image_files(a.images)
    t0 = time.perf_counter()
    n = sum(len(x) for x in loader(files, a, torch.device("cpu")))
    s = time.perf_counter() - t0
    return {"items": n, "end_to_end_s": round(s, 3), "end_to_end_per_s": round(n / s, 1)}


def image(a, device):
    model = load_dinov2(a.model, device, a.precision)
    files = image_files(a.images)
    with torch.inference_mode():
        for _ in range(a.warmup):  # CUDA start-up and kernel selection, untimed as on our side
            vit_forward(model, torch.zeros(a.batch_size, 3, 224, 224), device, a.precision)
        sync(device)
        t0, fwd, outs = time.perf_counter(), 0.0, []
        for x in loader(files, a, device):
            t1 = time.perf_counter()
            outs.append(vit_forward(model, x, device, a.precision))
            fwd += time.perf_counter() - t1
        np.save(a.output, torch.cat(outs).numpy())
    e2e = time.perf_counter() - t0
    return rates(len(files), fwd, e2e)


def read_texts(path, limit=0):
    with open(path) as f:
        return f.read().splitlines()[:limit or None]


def text(a, device):
    tok, model = load_bert(a.model, device, a.precision)
    with torch.inference_mode():
        for _ in range(a.warmup):
            bert_forward(tok, model, read_texts(a.input, a.batch_size), a.max_length, device)
        sync(device)
        t0, fwd = time.perf_counter(), 0.0
        lines = read_texts(a.input)
        out = np.zeros((len(lines), model.config.hidden_size), np.float32)
        for s in range(0, len(lines), a.batch_size):
            t1 = time.perf_counter()
            out[s:s + a.batch_size] = bert_forward(tok, model, lines[s:s + a.batch_size], a.max_length,
                                                   device).numpy()
            fwd += time.perf_counter() - t1
        np.save(a.output, out)
    e2e = time.perf_counter() - t0
    return rates(len(lines), fwd, e2e)


def rates(n, fwd, e2e):
    return {"items": n, "forward_s": round(fwd, 3), "forward_per_s": round(n / fwd, 1),
            "end_to_end_s": round(e2e, 3), "end_to_end_per_s": round(n / e2e, 1)}


def ours(path, keys):
    """Our table's rows in the order of `keys` (file names, or line numbers)."""
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=["key", "embedding"])
    emb = t.column("embedding").combine_chunks()
    m = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(emb), -1)
    at = {k: i for i, k in enumerate(t.column("key").to_pylist())}
    return m[[at[k] for k in keys]]


def min_row_cosine(x, y):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return float((x * y).sum(1).min())


def parity(a, device):
    """fp32: ours against HF on the same inputs and device (max abs difference); bf16: each
    side's rows against its own fp32 rows (the smallest cosine similarity of a row)."""
    out = {}
    with torch.inference_mode():
        for precision in ["fp32", "bf16"]:
            if a.kind == "image":
                model = load_dinov2(a.model, device, precision)
                files = image_files(a.images, a.limit)
                keys = [os.path.basename(f) for f in files]
                a.workers = min(a.workers, 4)
                out[precision] = torch.cat([vit_forward(model, x, device, precision)
                                            for x in loader(files, a, device)]).numpy()
            else:
                tok, model = load_bert(a.model, device, precision)
                lines = read_texts(a.input, a.limit)
                keys = [str(i) for i in range(len(lines))]
                out[precision] = torch.cat([
                    bert_forward(tok, model, lines[s:s + a.batch_size], a.max_length, device)
                    for s in range(0, len(lines), a.batch_size)]).numpy()
    o32, o16 = ours(a.ours_fp32, keys), ours(a.ours_bf16, keys)
    return {"rows": len(keys), "max_abs_diff_fp32": float(np.abs(o32 - out["fp32"]).max()),
            "max_abs_value_fp32": float(np.abs(out["fp32"]).max()),
            "ours_bf16_min_cosine": min_row_cosine(o16, o32),
            "hf_bf16_min_cosine": min_row_cosine(out["bf16"], out["fp32"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["decode", "image", "text", "parity"])
    ap.add_argument("--kind", choices=["image", "text"])
    ap.add_argument("--model")
    ap.add_argument("--images")
    ap.add_argument("--input")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch's intra-op threads")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=112)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=list(DTYPES), default="bf16")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ours-fp32")
    ap.add_argument("--ours-bf16")
    ap.add_argument("--output", default="/tmp/hf_side.npy")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    r = {"decode": lambda: decode(a), "image": lambda: image(a, device),
         "text": lambda: text(a, device), "parity": lambda: parity(a, device)}[a.what]()
    r.update(torch=torch.__version__, device=a.device)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
