"""The scale benchmark's table and pass rules, from bench/scale/run.sh's results.tsv.

Rows: stage; columns: N; cells: wall seconds / peak RSS MiB. Pass rules, between the smallest and
each larger N (ratio r = N / N_min):
  - time at most linear: wall <= r * wall(N_min) * 1.25 + 2 s (start-up and noise);
  - memory flat: peak RSS <= peak(N_min) * 1.25 + 64 MiB, except what a stage documents holding
    per row (docs/scale.md): classify its pooled features (DIM floats per image of the downstream
    dataset, N/10 images here), so its allowance grows by N/10 * DIM * 4 bytes; ingest its
    MIMIC-CXR join indexes (76 bytes per image, about 1.75 images per synthetic study, and about
    100 bytes per study), so its allowance grows by N * (1.75 * 76 + 100) bytes;
  - the synthetic data (`synth ...` rows) are the benchmark's input, shown, not ruled;
  - the no-ops and the first fingerprint are shown, not ruled: they list or stat every file of the
    dataset folders (linear by design; the runner holds one entry per file while it fingerprints).
"""
import sys
from collections import defaultdict

DIM = 768  # the widest pooled feature a real backbone gives (DINOv2-B, BERT-base)
# ingest's MIMIC-CXR join indexes (docs/scale.md): split index per image, labels per study.
INGEST_BYTES_PER_STUDY = 1.75 * 76 + 100
rows = defaultdict(dict)
files = {}
order = []
for line in open(sys.argv[1]):
    n, stage, wall, rss = line.rstrip("\n").split("\t")
    n = int(n)
    if stage == "files":
        files[n] = int(wall)
        continue
    if stage not in order:
        order.append(stage)
    rows[stage][n] = (float(wall), int(rss))
sizes = sorted({n for r in rows.values() for n in r})

print("| stage | " + " | ".join(f"N = {n:,}" for n in sizes) + " |")
print("|---|" + "---|" * len(sizes))
for stage in order:
    cells = []
    for n in sizes:
        w, m = rows[stage].get(n, (None, None))
        if w is None:
            cells.append("—")
        elif stage.startswith("no-op"):
            cells.append(f"{w * 1000:.0f} ms, {m} MiB")
        else:
            cells.append(f"{w:.1f} s, {m} MiB")
    print(f"| {stage} | " + " | ".join(cells) + " |")
print("| files in the dataset folders | " + " | ".join(f"{files.get(n, 0):,}" for n in sizes) + " |")

failures = []
n0 = sizes[0]
for stage in order:
    if stage.startswith(("no-op", "fingerprint", "synth")) or n0 not in rows[stage]:
        continue
    w0, m0 = rows[stage][n0]
    for n in sizes[1:]:
        if n not in rows[stage]:
            continue
        w, m = rows[stage][n]
        r = n / n0
        if w > r * w0 * 1.25 + 2:
            failures.append(f"{stage}: {w:.1f} s at N = {n:,} is more than linear ({w0:.1f} s at {n0:,})")
        allowance = m0 * 1.25 + 64
        if stage == "classify":
            allowance += (n - n0) / 10 * DIM * 4 / 2**20
        if stage == "ingest":
            allowance += (n - n0) * INGEST_BYTES_PER_STUDY / 2**20
        if m > allowance:
            failures.append(f"{stage}: {m} MiB at N = {n:,} grows with N ({m0} MiB at {n0:,}; allowed {allowance:.0f})")
print()
if len(sizes) < 2:
    print("pass rules: need two sizes or more")
elif failures:
    print("FAIL:\n" + "\n".join(f"- {f}" for f in failures))
    sys.exit(1)
else:
    print(f"pass: time at most linear and peak memory flat from N = {n0:,} to {sizes[-1]:,}")
