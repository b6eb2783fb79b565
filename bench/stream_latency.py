"""Streaming latency of the base phase model on one device (``make gpu-check``'s ``stream`` part).

The network of ``experiment=phase_cholec80`` (ViT-B, 16 frames at stride 4, 224², 7 phases; random seeded weights:
latency does not depend on them) wrapped in :class:`~surgvista.streaming.PhaseStream` exactly as
``surgvista-stream --device cuda`` runs it (fp32), fed 854×480 uint8 frames at the model's 1 fps. Each prediction's
latency is the time from the frame's push to its probabilities on the host (transform, clip, forward, softmax, copy
back), after ``--warmup`` predictions; plain and with tubelet reuse side by side on the same frames, with the
largest difference between their probabilities (reuse is exact up to float rounding).

``python bench/stream_latency.py [--dry-run] [--out DIR]`` → ``DIR/stream.json``. ``--dry-run``: a ViT-tiny at 8 × 64²
on whatever device there is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import device_name, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def phase_model(dry: bool):
    """The base phase model (``experiment=phase_cholec80``'s net and clip geometry) with seeded random weights."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from surgvista.models.classifier import VideoClassifier
    from surgvista.streaming.model import clip_phase_model

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    small = ["data.num_frames=8", "data.input_size=64", "model.net.preset=tiny"] if dry else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=phase_cholec80", *small])
    run_cfg = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    net_args = {k: v for k, v in run_cfg["model"]["net"].items() if k != "_target_"}
    torch.manual_seed(0)
    net = VideoClassifier(**net_args)
    return clip_phase_model(run_cfg, net, [f"phase{i}" for i in range(net_args["num_classes"])])


def stream_latencies(model, device: str, reuse: bool, frames: list[np.ndarray], n: int) -> tuple[list, list]:
    """Latency (ms) and probabilities of each of ``n`` predictions of a fresh stream at 1 frame per model step."""
    from surgvista.streaming import PhaseStream

    stream = PhaseStream(model, device=device, reuse_tubelets=reuse)
    ms, probs = [], []
    for i in range(n):
        pred = stream.push(frames[i % len(frames)], i / model.fps)
        ms.append(pred.compute_ms)
        probs.append(pred.probs)
    return ms, probs


def summary(ms: list[float]) -> dict:
    """The stream report's per-frame percentiles (ms), and the frame rate the median sustains."""
    from surgvista.streaming.runner import percentiles

    stats = percentiles(ms)
    return stats | {"frames_per_s": 1e3 / stats["p50"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "logs/gpu_check"))
    ap.add_argument("--dry-run", action="store_true", help="a ViT-tiny on any device")
    ap.add_argument("--warmup", type=int, default=None, help="untimed predictions (default 70; dry run 2)")
    ap.add_argument("--predictions", type=int, default=None, help="timed predictions (default 200; dry run 6)")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (2 if args.dry_run else 70)
    timed = args.predictions or (6 if args.dry_run else 200)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = phase_model(args.dry_run)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 854, 3), dtype=np.uint8) for _ in range(8)]
    network = "experiment=phase_cholec80" + (" at ViT-tiny" if args.dry_run else "")
    results: dict = {
        "device": device_name(),
        "model": {"network": network, "num_frames": model.num_frames, "sampling_rate": model.sampling_rate,
                  "input_size": model.input_size, "precision": "fp32"},
        "frame": "854x480 uint8",
        "warmup": warmup,
        "predictions": timed,
    }  # fmt: skip
    probs = {}
    for name, reuse in (("plain", False), ("reuse_tubelets", True)):
        ms, probs[name] = stream_latencies(model, device, reuse, frames, warmup + timed)
        results[name] = summary(ms[warmup:])
        print(f"[stream] {name}: {results[name]}", flush=True)
    results["reuse_max_abs_diff"] = float(np.abs(np.stack(probs["plain"]) - np.stack(probs["reuse_tubelets"])).max())
    results["reuse_speedup"] = results["plain"]["p50"] / results["reuse_tubelets"]["p50"]
    write_json(args.out / "stream.json", results)
    return results


if __name__ == "__main__":
    main()
