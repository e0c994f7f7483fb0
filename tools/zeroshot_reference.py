#!/usr/bin/env python3
"""PyTorch/numpy reference of `zero-shot` and `retrieve` (stages/torch/src/{zeroshot,retrieve}.rs).

Writes data/zeroshot/: a small original-variant adaptor (vision 8, text 12, projection 16, two
layers of two heads, feed-forward 32; the module of tools/adaptor_reference.py at a small size) as
adaptor.{safetensors,json} in the Rust checkpoint layout, and parity.json with its inputs (raw image
and prompt/report vectors, labels, study ids) and what both stages compute from them:

  zero-shot  prompts through the text path, L2-normalised, averaged per class, L2-normalised
             again; images through the image path (per sample); softmax over classes of
             exp(logit_scale) * cosine; AUROC (binary), accuracy and macro-F1 (multiclass)
  retrieve   cosine ranks both ways (numpy's stable argsort of -similarity: ties by index), the
             1-based rank of the first report of the image's study (and of the first image of the
             report's study), recall@1/5/10, median rank, and a random ranking's expected levels

stages/torch/tests/zeroshot.rs compares the Rust side to these numbers within 1e-5.
Run with the project venv: `.venv/bin/python tools/zeroshot_reference.py`.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptor_reference import Project, TransformerEncoderLayerWithCrossAttention  # noqa: E402
from machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "zeroshot"
VISION, TEXT, PROJ, LAYERS, HEADS, FF = 8, 12, 16, 2, 2, 32


class SmallAdaptor(nn.Module):
    """The original module (tools/adaptor_reference.py) at a small size, same state-dict names."""

    def __init__(self):
        super().__init__()
        self.projection = Project(VISION, TEXT, PROJ)
        self.adaptor_module = nn.Module()
        self.adaptor_module.encoder = nn.ModuleList(
            [TransformerEncoderLayerWithCrossAttention(PROJ, HEADS, FF) for _ in range(LAYERS)]
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07) + 0.4))

    def _path(self, x):
        x = x / x.norm(dim=-1, keepdim=True)
        x = x.unsqueeze(1)  # each vector its own length-one sequence
        for layer in self.adaptor_module.encoder:
            x = layer(x, run_cross_attn=False)
        x = x.squeeze(1)
        return x / x.norm(dim=-1, keepdim=True)

    def image(self, x):
        return self._path(self.projection.visual_projection(x))

    def text(self, x):
        return self._path(self.projection.text_projection(x))


def l2(x):
    return x / x.norm(dim=-1, keepdim=True)


def zero_shot(model, images, prompts, counts):
    t = model.text(prompts)
    classes, start = [], 0
    for n in counts:
        classes.append(t[start:start + n].mean(0))
        start += n
    classes = l2(torch.stack(classes))
    logits = model.logit_scale.exp() * model.image(images) @ classes.T
    return logits.softmax(1)


def auroc(labels, scores):
    """Mann-Whitney: P(score of a positive > a negative), ties counted one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def macro_f1(labels, predicted):
    f1 = []
    for c in sorted(set(labels.tolist()) | set(predicted.tolist())):
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def first_hits(sim, query_study, candidate_study):
    ranks = []
    for q in range(sim.shape[0]):
        order = np.argsort(-sim[q], kind="stable")
        ranks.append(int(np.nonzero(candidate_study[order] == query_study[q])[0][0]) + 1)
    return ranks


def scores(ranks):
    r = np.array(ranks)
    return {"r1": float((r <= 1).mean()), "r5": float((r <= 5).mean()),
            "r10": float((r <= 10).mean()), "median_rank": float(np.median(r))}


def chance(hits, n):
    def recall(k):
        out = []
        for m in hits:
            miss = 1.0
            for t in range(min(k, n)):
                miss *= max((n - m - t) / (n - t), 0.0)
            out.append(1.0 - miss)
        return float(np.mean(out))
    return {"r1": recall(1), "r5": recall(5), "r10": recall(10),
            "median_rank": float(np.median([(n + 1) / (m + 1) for m in hits]))}


def main():
    torch.manual_seed(16)
    torch.set_num_threads(1)
    model = SmallAdaptor().eval()
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "adaptor.safetensors")
    config = {"variant": "original", "vision_dim": VISION, "text_dim": TEXT, "projection_dim": PROJ,
              "layers": LAYERS, "heads": HEADS, "ff": FF, "dropout": 0.1, "layer_norm_eps": 1e-5,
              "logit_scale_init": math.log(1 / 0.07), "image_weight": 0.75}
    (OUT / "adaptor.json").write_text(json.dumps(
        {"format": "adaptor-checkpoint/1", "model": config}, indent=2) + "\n")

    g = torch.Generator().manual_seed(7)
    n = 14
    images = torch.randn(n, VISION, generator=g)
    binary_prompts = torch.randn(5, TEXT, generator=g)  # normal 2, pneumonia 3
    multi_prompts = torch.randn(7, TEXT, generator=g)  # normal 2, pneumonia 2, COVID-19 3
    binary_labels = np.array([0, 1] * (n // 2))
    multi_labels = np.arange(n) % 3
    # Studies: some with two images; one report per study, in order of first appearance.
    image_study = np.array([5, 5, 8, 13, 13, 21, 34, 34, 55, 89, 144, 233, 233, 377])
    report_study = np.array(list(dict.fromkeys(image_study.tolist())))
    reports = torch.randn(len(report_study), TEXT, generator=g)

    with torch.no_grad():
        pb = zero_shot(model, images, binary_prompts, [2, 3]).double().numpy()
        pm = zero_shot(model, images, multi_prompts, [2, 2, 3]).double().numpy()
        vi, vt = model.image(images), model.text(reports)
        sim = (vi @ vt.T).numpy()
    i2t = first_hits(sim, image_study, report_study)
    t2i = first_hits(sim.T, report_study, image_study)
    per_study = {s: int((image_study == s).sum()) for s in report_study}
    predicted = pm.argmax(1)
    fixture = {
        "generated_by": "tools/zeroshot_reference.py",
        "torch": torch.__version__,
        "machine": machine(),
        "logit_scale": float(model.logit_scale.detach()),
        "images": images.tolist(),
        "binary": {"prompts": binary_prompts.tolist(), "counts": [2, 3],
                   "labels": binary_labels.tolist(), "probs": pb.tolist(),
                   "auroc": auroc(binary_labels, pb[:, 1])},
        "multiclass": {"prompts": multi_prompts.tolist(), "counts": [2, 2, 3],
                       "labels": multi_labels.tolist(), "probs": pm.tolist(),
                       "accuracy": float((predicted == multi_labels).mean()),
                       "macro_f1": macro_f1(multi_labels, predicted)},
        "retrieval": {"image_study": image_study.tolist(), "report_study": report_study.tolist(),
                      "reports": reports.tolist(), "image_to_text_ranks": i2t,
                      "text_to_image_ranks": t2i, "image_to_text": scores(i2t),
                      "text_to_image": scores(t2i),
                      "chance_image_to_text": chance([1] * n, len(report_study)),
                      "chance_text_to_image": chance([per_study[s] for s in report_study], n)},
    }
    (OUT / "parity.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}: i2t ranks {i2t}, t2i ranks {t2i}, AUROC {fixture['binary']['auroc']:.4f}")


if __name__ == "__main__":
    main()
