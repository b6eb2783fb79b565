"""The colour-histogram baseline on the demo and on its proxy variant (docs/proxy.md).

Writes both datasets with their default settings (8 videos: 6 train, 2 test, 300-420 frames at 160x128, 25 fps,
manifests at 5 fps, seed 0) under ``--data`` (reused when already there), fits the baseline
(:func:`surgvista.evaluation.color_baseline.color_baseline`: joint 8x8x8 RGB histogram per frame) on the train
videos' frames and scores every frame of the test videos, with the logistic regression and the nearest centroid.
Prints one line per (dataset, classifier) and writes the numbers as JSON to ``--out``.

``python bench/color_baseline.py --data data --out bench/results/color_baseline.json`` (about two minutes on 2
cores); ``--videos 16 --val-videos 8`` scores 8 test videos instead of 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from surgvista.data.demo import generate_demo_dataset
from surgvista.evaluation.color_baseline import CLASSIFIERS, color_baseline
from surgvista.utils.io import atomic_write_text


def main() -> None:
    """Generate (or reuse) both datasets, score the baseline on each, print and save the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data", help="parent folder of demo/ and proxy/")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", type=int, default=8, help="videos per dataset")
    ap.add_argument("--val-videos", type=int, default=2, help="of which held out (the test videos)")
    args = ap.parse_args()
    rows = []
    for variant in ("demo", "proxy"):
        start = time.perf_counter()
        train, val = generate_demo_dataset(
            Path(args.data) / variant, args.videos, args.val_videos, seed=args.seed, variant=variant
        )
        for classifier in CLASSIFIERS:
            res = color_baseline(train, val, classifier=classifier)
            rows.append({"dataset": variant, **res.as_dict()})
            print(f"{variant:6s} {classifier:8s} accuracy {res.accuracy:.3f} [{res.accuracy_lo:.3f}, "
                  f"{res.accuracy_hi:.3f}] (uniform chance "
                  f"{res.uniform_chance:.3f}, majority {res.majority_chance:.3f}; {res.num_test_frames} test "
                  f"frames of {res.num_test_videos} videos)")
        print(f"{variant}: {time.perf_counter() - start:.0f} s")
    if args.out:
        meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "seed": args.seed, "videos": args.videos,
                "val_videos": args.val_videos}
        atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
