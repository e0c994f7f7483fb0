"""The original's Python path on the same files: cv2.imread(path, 0) / pydicom + convertScaleAbs,
then MGCA resize_img (INTER_AREA + pad). Prints: python<TAB>kind<TAB>processes<TAB>images<TAB>seconds<TAB>images/s<TAB>CPU ms per image
(this process and its pool's, user + system).

Usage: .venv/bin/python bench/images/bench_python.py DIR IMSIZE PROCESSES ROUNDS [KINDS]
       .venv/bin/python bench/images/bench_python.py parts DIR IMSIZE
"""
import os
import resource
import sys
import time
from multiprocessing import Pool

import cv2
import pydicom

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from make_resize_fixture import resize_img  # noqa: E402

cv2.setNumThreads(1)  # one image per process, like a DataLoader worker


def decode(path):
    """8-bit gray, as the original reads it."""
    if path.endswith(".dcm"):
        dcm = pydicom.dcmread(path)
        x = dcm.pixel_array
        x = cv2.convertScaleAbs(x, alpha=(255.0 / x.max()))
        if dcm.PhotometricInterpretation == "MONOCHROME1":
            x = cv2.bitwise_not(x)
        return x
    return cv2.imread(path, 0)


def cpu_seconds():
    """CPU time of this process and of its reaped children (the pool's workers), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load(args):
    path, imsize = args
    return resize_img(decode(path), imsize).shape


def parts(root, imsize):
    """Single process: decode (to 8-bit) and resize_img timed apart, per image."""
    for kind in ["jpeg", "dicom"]:
        files = sorted(os.path.join(root, kind, f) for f in os.listdir(os.path.join(root, kind)))
        t = time.perf_counter()
        decoded = [decode(f) for f in files]
        d = (time.perf_counter() - t) / len(files)
        t = time.perf_counter()
        for x in decoded:
            resize_img(x, imsize)
        r = (time.perf_counter() - t) / len(files)
        print(f"python {kind}: decode {d * 1e3:.2f} ms, resize_img {r * 1e3:.2f} ms per image")


def main():
    if sys.argv[1] == "parts":
        parts(sys.argv[2], int(sys.argv[3]))
        return
    root, imsize, procs, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kinds = sys.argv[5].split(",") if len(sys.argv) > 5 else ["jpeg", "dicom"]
    for kind in kinds:
        files = sorted(os.path.join(root, kind, f) for f in os.listdir(os.path.join(root, kind)))
        for f in files:
            load((f, imsize))
        work = [(f, imsize) for _ in range(rounds) for f in files]
        t, cpu = time.perf_counter(), cpu_seconds()
        if procs == 1:
            out = [load(w) for w in work]
        else:
            with Pool(procs) as p:
                out = p.map(load, work, chunksize=1)
        secs = time.perf_counter() - t
        cpu = cpu_seconds() - cpu
        assert all(o == (imsize, imsize) for o in out)
        n = len(work)
        print(f"python\t{kind}\t{procs}\t{n}\t{secs:.3f}\t{n / secs:.1f}\t{cpu * 1e3 / n:.3f}")


if __name__ == "__main__":
    main()
