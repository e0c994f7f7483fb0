"""Writes data/rg1_mgca_256.json: the original's DICOM loader (MGCA read_from_dicom + resize_img,
reference B.2) applied to pydicom-data's RG1_UNCR.dcm, summarised as the pixel sum and a few sampled
pixels so no image data is committed. Needs scripts/test-assets.sh and the venv's numpy, pydicom and
opencv-python-headless.
"""
import json
import os
import sys

import cv2
import numpy as np
import pydicom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resize_fixture import resize_img  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ASSETS = os.environ.get("ADAPTOR_TEST_ASSETS", os.path.join(ROOT, ".cache", "test-assets"))


def main():
    dcm = pydicom.dcmread(os.path.join(ASSETS, "RG1_UNCR.dcm"))
    x = dcm.pixel_array
    x = cv2.convertScaleAbs(x, alpha=(255.0 / x.max()))
    if dcm.PhotometricInterpretation == "MONOCHROME1":
        x = cv2.bitwise_not(x)
    full_sum = int(x.astype(np.int64).sum())
    y = resize_img(x, 256)
    samples = [[r, c, int(y[r, c])] for r in range(8, 256, 31) for c in range(5, 256, 37)]
    out = {
        "file": "RG1_UNCR.dcm",
        "rows": int(dcm.Rows),
        "columns": int(dcm.Columns),
        "gray8_sum": full_sum,
        "resized_256_sum": int(y.astype(np.int64).sum()),
        "resized_256_samples": samples,
        "opencv": cv2.__version__,
        "pydicom": pydicom.__version__,
    }
    with open(os.path.join(ROOT, "data", "rg1_mgca_256.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
