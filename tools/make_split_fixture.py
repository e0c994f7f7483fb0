"""Writes data/split_parity.json: what scikit-learn's train_test_split(random_state=0) gives on the
real RSNA stage-2 labels with the original's code (MGCA preprocess/rsna.py, reference E.2),
summarised as sizes and FNV-1a 64 hashes of the member ids in sklearn's order, so no data is
committed. Needs scripts/test-assets.sh and `pip install numpy pandas scikit-learn` in .venv.
"""
import json
import os

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ASSETS = os.environ.get("ADAPTOR_TEST_ASSETS", os.path.join(ROOT, ".cache", "test-assets"))


def fnv1a(ids):
    h = 0xCBF29CE484222325
    for b in "\n".join(ids).encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    df = pd.read_csv(os.path.join(ASSETS, "kaggle_stage_2_train_labels.csv.zip"))
    df = df[["patientId"]].groupby("patientId").agg(list).reset_index()  # sorted ids, as groupby does
    out = {"patients": len(df), "numpy": np.__version__}
    for name, first in [("classification", 0.30), ("segmentation", 5337 * 2)]:
        train, rest = train_test_split(df, test_size=first, random_state=0)
        test, valid = train_test_split(rest, test_size=0.5, random_state=0)
        out[name] = {
            part: {"n": len(d), "fnv1a": fnv1a(list(d["patientId"]))}
            for part, d in [("train", train), ("valid", valid), ("test", test)]
        }
    perm = np.random.RandomState(0).permutation(26684)
    out["permutation_26684_seed0_head"] = perm[:8].tolist()
    with open(os.path.join(ROOT, "data", "split_parity.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
