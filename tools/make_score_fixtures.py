#!/usr/bin/env python3
"""Writes data/scores/fixtures.json: classification scores computed by scikit-learn, which the
Rust `scores` module must reproduce to 1e-12 (stages/train/tests/scores.rs).

Cases cover ties, all-tied scores, one class only (AUROC undefined: sklearn raises, recorded as
null), imbalance, three classes, and predictions that miss a class or invent one. For binary cases
`scores` are sigmoid probabilities and the decision is `p > 0.5`; for multiclass cases `probs` are
softmax rows and the decision is the arg-max (first on ties).

Run with the project venv: `.venv/bin/python tools/make_score_fixtures.py`.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "scores" / "fixtures.json"


def auroc_or_none(y, s):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = roc_auc_score(y, s)
    except ValueError:
        return None
    return None if np.isnan(v) else float(v)


def f1_macro(y, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division="warn" (the default) returns 0
        return float(f1_score(y, p, average="macro"))


def binary_case(name, y, s):
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(s, dtype=np.float64)
    pred = (s > 0.5).astype(np.int64)
    return {
        "name": name,
        "classes": 1,
        "labels": y.tolist(),
        "probs": s.tolist(),
        "expected": {
            "auroc": auroc_or_none(y, s),
            "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": f1_macro(y, pred),
        },
    }


def multiclass_case(name, y, probs):
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    per_class = [auroc_or_none((y == k).astype(np.int64), probs[:, k]) for k in range(c)]
    expected = {
        "auroc_per_class": per_class,
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": f1_macro(y, pred),
        "auroc": None,
    }
    if all(v is not None for v in per_class):
        # sklearn's own one-vs-rest macro average (needs every class present).
        expected["auroc"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    return {
        "name": name,
        "classes": c,
        "labels": y.tolist(),
        "probs": probs.ravel().tolist(),
        "expected": expected,
    }


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    rng = np.random.default_rng(20261106)
    cases = []
    cases.append(binary_case("perfect", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]))
    cases.append(binary_case("reversed", [1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]))
    cases.append(binary_case("tie_across_classes", [0, 1, 0, 1, 1], [0.3, 0.3, 0.6, 0.6, 0.9]))
    cases.append(binary_case("all_tied", [0, 1, 1, 0, 1], [0.5] * 5))
    cases.append(binary_case("single_class_positive", [1, 1, 1], [0.2, 0.7, 0.9]))
    cases.append(binary_case("single_class_negative", [0, 0, 0, 0], [0.2, 0.7, 0.9, 0.4]))
    cases.append(binary_case("threshold_exactly_half", [0, 1, 1, 0], [0.5, 0.5, 0.51, 0.49]))
    cases.append(binary_case("all_predicted_negative", [0, 1, 0, 1, 0], [0.1, 0.4, 0.2, 0.3, 0.05]))
    y = (rng.random(200) < 0.07).astype(np.int64)
    y[0] = 1
    cases.append(binary_case("imbalanced_7pct", y, np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)))
    y = rng.integers(0, 2, 300)
    cases.append(binary_case("coarse_scores_many_ties", y, np.round(0.4 * y + 0.6 * rng.random(300), 1)))
    y = rng.integers(0, 2, 1000)
    cases.append(binary_case("random_1000", y, 1 / (1 + np.exp(-(y - 0.5 + rng.normal(0, 1.2, 1000))))))

    cases.append(multiclass_case("three_classes_perfect", [0, 1, 2, 2],
                                 [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7], [0.0, 0.3, 0.7]]))
    y = rng.integers(0, 3, 150)
    cases.append(multiclass_case("three_classes_noisy", y, softmax(np.eye(3)[y] * 1.5 + rng.normal(0, 1, (150, 3)))))
    y = rng.integers(0, 3, 90)
    z = np.round(np.eye(3)[y] + rng.normal(0, 0.8, (90, 3)), 0)
    cases.append(multiclass_case("three_classes_ties", y, softmax(z)))
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1],
                      [0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6]])
    cases.append(multiclass_case("class_absent_from_labels_but_predicted", y, probs))
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1],
                      [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.2, 0.5, 0.3]])
    cases.append(multiclass_case("predictions_miss_a_class", y, probs))
    cases.append(multiclass_case("argmax_ties_take_first", [0, 1, 2, 1],
                                 [[1 / 3] * 3, [0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.1, 0.45, 0.45]]))
    y = np.concatenate([np.zeros(80, int), np.ones(15, int), np.full(5, 2)])
    cases.append(multiclass_case("imbalanced_three", y, softmax(np.eye(3)[y] + rng.normal(0, 1, (100, 3)))))

    doc = {
        "generator": "tools/make_score_fixtures.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
