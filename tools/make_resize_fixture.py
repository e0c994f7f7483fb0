"""Writes data/resize/: small gray PNG inputs and OpenCV's outputs for them, the reference the Rust
`images` module is checked against (stages/tests/images.rs).

Run with the project venv: .venv/bin/pip install numpy opencv-python-headless; .venv/bin/python
tools/make_resize_fixture.py. Outputs are PNGs (lossless 8-bit), a few KB in all.
"""
import json
import os
import sys

import cv2
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "resize")


def resize_img(img, scale):
    """MGCA datasets/utils.py resize_img, verbatim arithmetic."""
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
    resized_img = cv2.resize(img, desireable_size[::-1], interpolation=cv2.INTER_AREA)
    if max_ind == 0:
        pad_size = scale - resized_img.shape[1]
        left, right, top, bottom = int(np.floor(pad_size / 2)), int(np.ceil(pad_size / 2)), 0, 0
    else:
        pad_size = scale - resized_img.shape[0]
        top, bottom, left, right = int(np.floor(pad_size / 2)), int(np.ceil(pad_size / 2)), 0, 0
    return np.pad(resized_img, [(top, bottom), (left, right)], "constant", constant_values=0)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.RandomState(7)
    cases = []
    # (height, width) of inputs; targets cover fractional and integer down-scaling and up-scaling.
    for h, w in [(150, 125), (97, 131), (64, 64), (120, 40), (30, 22)]:
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
        img = np.clip(smooth + rng.normal(0, 25, size=(h, w)), 0, 255).astype(np.uint8)
        name = f"in_{h}x{w}.png"
        cv2.imwrite(os.path.join(OUT, name), img)
        for scale in [32, 50, 128]:
            out = f"mgca_{h}x{w}_to_{scale}.png"
            cv2.imwrite(os.path.join(OUT, out), resize_img(img, scale))
            cases.append({"input": name, "op": "resize_img", "scale": scale, "expected": out})
        for dw, dh in [(w // 2, h // 2), (17, 23)]:
            out = f"area_{h}x{w}_to_{dh}x{dw}.png"
            cv2.imwrite(os.path.join(OUT, out), cv2.resize(img, (dw, dh), interpolation=cv2.INTER_AREA))
            cases.append({"input": name, "op": "area", "width": dw, "height": dh, "expected": out})
            out = f"linear_{h}x{w}_to_{dh}x{dw}.png"
            cv2.imwrite(os.path.join(OUT, out), cv2.resize(img, (dw, dh)))
            cases.append({"input": name, "op": "linear", "width": dw, "height": dh, "expected": out})
    meta = {"opencv": cv2.__version__, "numpy": np.__version__, "cases": cases}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {len(cases)} cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
