"""Writes data/numpy_random/permutations.json: what numpy's legacy generator gives for the
original's pre-training order (reference C.5: `np.random.seed(42); np.random.shuffle(indices)` over
`np.arange(N)`), and `RandomState(seed).permutation(n)` which sklearn's splits draw, for a few
sizes. Each entry holds the first and last eight values and an FNV-1a 64 digest of the whole
permutation (decimal values joined by newlines), so the Rust port
(`artifacts::numpy_random::Mt19937`) is checked value for value without committing large arrays.
Run: .venv/bin/python tools/make_numpy_random_fixture.py
"""
import json
import os
import platform

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SIZES = [1, 2, 10, 1000, 100003]


def fnv1a(values):
    h = 0xCBF29CE484222325
    for b in "\n".join(str(int(v)) for v in values).encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def entry(p):
    return {"n": len(p), "head": p[:8].tolist(), "tail": p[-8:].tolist(), "fnv1a": fnv1a(p)}


def main():
    out = {
        "numpy": np.__version__,
        "machine": platform.machine(),
        # The original's pre-training dataset: the global legacy generator, then shuffle.
        "seed42_shuffle": [],
        # RandomState(seed).permutation(n): the same algorithm through a RandomState object.
        "permutation": [],
    }
    for n in SIZES:
        idx = np.arange(n)
        np.random.seed(42)
        np.random.shuffle(idx)
        out["seed42_shuffle"].append(entry(idx))
        for seed in (0, 42):
            p = np.random.RandomState(seed).permutation(n)
            out["permutation"].append({"seed": seed, **entry(p)})
    # The raw stream: first outputs of RandomState(42) as 32-bit integers.
    out["seed42_uint32"] = np.random.RandomState(42).randint(0, 2**32, size=8, dtype=np.uint64).tolist()
    path = os.path.join(ROOT, "data", "numpy_random", "permutations.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
