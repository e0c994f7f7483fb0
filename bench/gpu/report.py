"""bench/gpu/run.sh's raw.jsonl → a markdown table on stdout and results.json (every record, the
medians the table shows, the machine). Medians over the repeats of a case and side."""
import argparse
import json
import os
import platform
import statistics as st
import subprocess

import torch


def machine():
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "a CPU only"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    return {"gpu": gpu, "driver": driver, "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def med(rows, case, side, key):
    vals = [r[key] for r in rows if r["case"] == case and r["side"] == side and key in r]
    return st.median(vals) if vals else None


def fmt(v):
    return "—" if v is None else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--seconds", type=int, required=True)
    ap.add_argument("--failed", default="")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.raw) if l.strip()]
    m = machine()
    table = []

    def line(what, unit, case, ours_side, ref_side, key, ref_name):
        o, r = med(rows, case, ours_side, key), med(rows, case, ref_side, key)
        table.append({"what": what, "unit": unit, "ours": o, "reference": r, "reference_is": ref_name})
        return f"| {what} | {unit} | {fmt(o)} | {fmt(r)} ({ref_name}) | {ratio(o, r)} |"

    out = [f"# GPU benchmark ({'CPU SMOKE RUN: tiny models and inputs, not a measurement' if a.mode == 'smoke' else 'measured'})", "",
           f"`bench/gpu/run.sh{' --cpu-smoke' if a.mode == 'smoke' else ''}` on {m['gpu']} ({m['cores']} cores, {m['cpu']}), "
           f"torch {m['torch']}, in {a.seconds} s. Medians of the repeats in raw.jsonl.", "",
           "| measurement | unit | adaptor | reference | ratio |", "|---|---|---:|---:|---:|"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    img = next((c for c in cases if c.startswith("DINOv2-B")), None)
    txt = next((c for c in cases if c.startswith("BERT-base")), None)
    if img:
        out.append(line(f"{img}: forward only", "images/s", img, "adaptor", "transformers", "forward_per_s", "HF Dinov2Model"))
        out.append(line(f"{img}: end to end", "images/s", img, "adaptor", "transformers", "end_to_end_per_s", "HF + DataLoader"))
    dec = med(rows, "decode only (same cores)", "opencv-dataloader", "end_to_end_per_s")
    if dec is not None:
        table.append({"what": "decode only", "unit": "images/s", "ours": None, "reference": dec})
        out.append(f"| decode + preprocess only, same cores (the limit) | images/s | — | {fmt(dec)} (OpenCV in a DataLoader) | — |")
    if txt:
        out.append(line(f"{txt}: forward only", "texts/s", txt, "adaptor", "transformers", "forward_per_s", "HF BertModel"))
        out.append(line(f"{txt}: end to end", "texts/s", txt, "adaptor", "transformers", "end_to_end_per_s", "HF + tokenizer"))
    for p in ["fp32", "bf16"]:
        c = f"Adaptor training {p}"
        if c in cases:
            pairs = next((r.get("pairs") for r in rows if r["case"] == c), None)
            batch = next((r.get("batch") for r in rows if r["case"] == c), None)
            out.append(line(f"{c}, batch {batch}", "steps/s", c, "adaptor", "pytorch-eager", "steps_per_s", "PyTorch eager"))
            out.append(line(f"{c}, {pairs:,} pairs", "epochs/min", c, "adaptor", "pytorch-eager", "epochs_per_min", "PyTorch eager"))
    for c in cases:
        if c.startswith("parity: "):
            r = next(r for r in rows if r["case"] == c)
            ok = min(r["ours_bf16_min_cosine"], 1.0) >= 0.999
            out.append(f"| {c[8:]} fp32: max abs diff vs HF fp32 ({r['rows']} rows, max abs value {r['max_abs_value_fp32']:.3g}) "
                       f"| | {r['max_abs_diff_fp32']:.2e} | | |")
            out.append(f"| {c[8:]} bf16: smallest row cosine to fp32 (≥ 0.999: {'pass' if ok else 'FAIL'}) | | "
                       f"{r['ours_bf16_min_cosine']:.5f} | {r['hf_bf16_min_cosine']:.5f} (HF) | |")
    demo = next((r for r in rows if r["case"] == "demo manifest end to end"), None)
    if demo:
        state = {0: "finished", 124: f"stopped at the {demo['limit_s']} s limit"}.get(demo["exit"], f"failed, exit {demo['exit']}")
        out.append(f"| demo manifest (random BERT-base, DINOv2-S), end to end | s | {demo['wall_s']} ({state}, "
                   f"{demo['artifacts']} artifacts) | | |")
    if a.failed.strip():
        out += ["", f"Failed steps: {a.failed} (log.txt says why)."]
    print("\n".join(out))
    with open(a.json, "w") as f:
        json.dump({"mode": a.mode, "machine": m, "seconds": a.seconds, "failed": a.failed.split(),
                   "table": table, "records": rows}, f, indent=1)


if __name__ == "__main__":
    main()
