"""Latency of the online phase models' deployment export: PyTorch (eager, fp32, CPU) vs onnxruntime (CPU execution
provider) on the same inputs, side by side, with the largest output difference.

Models (random weights: latency does not depend on them): the demo's clip classifier (``model=finetune_tiny``:
ViT tiny, 8 frames at 112 px, 7 phases), one step of the demo's causal MS-TCN (``demo_tecno``: 2 stages x 6
layers, 32 maps, 192-d features) and of Cholec80's (``tecno_cholec80``: 2 x 8 layers, 768-d features), and, for
comparison, the full MS-TCN recomputed over a 1000-frame prefix (what a stream without cached states pays per
frame). Each is timed ``--repeats`` times after ``--warmup`` calls; the median and p95 in ms per call are printed
and written as JSON to ``--out``.

``python bench/stream_onnx.py --out bench/results/stream_onnx.json`` (under a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from surgvista.models.classifier import VideoClassifier
from surgvista.models.mstcn import MSTCN
from surgvista.streaming.mstcn_step import IncrementalMSTCN
from surgvista.streaming.onnx import DEFAULT_OPSET, OnnxSession, export_onnx
from surgvista.utils.io import atomic_write_text


def timings(call: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Median, p95 and mean of ``repeats`` calls in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        ms.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(np.mean(ms))}


def side_by_side(name: str, model: torch.nn.Module, inputs: tuple, folder: Path, args) -> dict:
    """Export ``model``, check parity on ``inputs`` and time PyTorch and onnxruntime on them."""
    start = time.perf_counter()
    path = export_onnx(model.eval(), inputs, folder / f"{name}.onnx")
    export_s = time.perf_counter() - start
    session = OnnxSession(path, threads=args.threads)
    arrays = [x.numpy() for x in inputs]
    with torch.inference_mode():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session(*arrays)
    got = got if isinstance(got, tuple) else (got,)
    diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))

    def eager() -> None:
        with torch.inference_mode():
            model(*inputs)

    row = {"model": name, "input_shapes": [list(x.shape) for x in inputs], "max_abs_diff": diff,
           "export_s": export_s, "onnx_bytes": path.stat().st_size,
           "pytorch": timings(eager, args.warmup, args.repeats),
           "onnxruntime": timings(lambda: session(*arrays), args.warmup, args.repeats)}
    ms = row["pytorch"]["median_ms"], row["onnxruntime"]["median_ms"]
    print(f"{name:24s} pytorch {ms[0]:8.3f} ms  onnxruntime {ms[1]:8.3f} ms  (median of {args.repeats}; "
          f"max |diff| {diff:.1e})")
    return row


def mstcn_rows(name: str, input_dim: int, num_layers: int, folder: Path, args) -> list[dict]:
    """One MS-TCN step (PyTorch and onnxruntime) and the full model over a 1000-frame prefix (PyTorch)."""
    model = MSTCN(input_dim, 7, num_stages=2, num_layers=num_layers, num_f_maps=32).eval()
    step = IncrementalMSTCN(model)
    inputs = (torch.randn(1, input_dim), torch.randn(1, 32, step.state_length))
    rows = [side_by_side(f"{name}_step", step, inputs, folder, args)]
    prefix = torch.randn(1, 1000, input_dim)

    def full() -> None:
        with torch.inference_mode():
            model(prefix)

    rows.append({"model": f"{name}_full_1000", "pytorch": timings(full, 2, max(5, args.repeats // 10))})
    print(f"{name + '_full_1000':24s} pytorch {rows[-1]['pytorch']['median_ms']:8.3f} ms  (the whole model per frame)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both PyTorch and onnxruntime")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = VideoClassifier(7, preset="tiny", img_size=112, num_frames=8, head_init_scale=1.0)
        rows = [side_by_side("clip_classifier_tiny", clip, (torch.randn(1, 3, 8, 112, 112),), folder, args)]
        rows += mstcn_rows("mstcn_demo", 192, 6, folder, args)
        rows += mstcn_rows("mstcn_cholec80", 768, 8, folder, args)
    if args.out:
        meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "opset": DEFAULT_OPSET,
                "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                "note": "2-core CPU shared with other jobs; onnxruntime CPU execution provider; fp32"}
        atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
