"""Pre-training objectives side by side on one device (``make gpu-check``'s ``objectives`` part).

Each objective is composed from its Hydra config, as ``train.py`` would build it, and fitted by Lightning from two
uint8 batches held in pinned memory (no loader: the model, the optimiser and Lightning's loop), all at the same
clip geometry (16 × 224², batch 32), precision (bf16-mixed on CUDA) and step count:

``surgvista_vitb``  the SurgVISTA recipe: ViT-B student, ViT-L/16 teacher in pure bf16, tube masking 0.85
``vjepa_vitl``      V-JEPA 2 (``model=vjepa``): ViT-L RoPE student, EMA target, 12-layer predictor, multi-block masks
``vjepa_vitb``      the same objective with a ViT-B student (the SurgVISTA student's size)

Per objective: clips/s and the median step from CUDA events (``gpu_check.StepClock``), GPU idle, peak memory, the
model FLOPs of one clip (forward + backward, eager attention, ``torch.utils.flop_counter``) and MFU against the
card's dense bf16 peak. An objective that runs out of memory is retried once at half the batch.

``python bench/objective_fit.py [--dry-run] [--out DIR]`` → ``DIR/objectives.json``. ``--dry-run``: the tiny
configs (``model=surgvista_tiny``, ``model=vjepa_tiny``) at 4 × 32² on whatever device there is.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check: StepClock, MemoryBatches, write_json

from gpu_check import MemoryBatches, NormalizeOnDevice, StepClock, device_name, timed_fit, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES: dict[str, list[str]] = {
    "surgvista_vitb": ["model=surgvista", "model.teacher.ckpt=null", "model.teacher.dtype=bfloat16"],
    "vjepa_vitl": ["model=vjepa"],
    "vjepa_vitb": ["model=vjepa", "model.student.preset=base"],
}
DRY_OBJECTIVES: dict[str, list[str]] = {"surgvista_tiny": ["model=surgvista_tiny"], "vjepa_tiny": ["model=vjepa_tiny"]}


def compose_module(overrides: list[str], frames: int, size: int, batch: int):
    """The ``PretrainModule`` that ``train.py <overrides>`` would build for clips of ``frames`` × ``size``²."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import surgvista  # noqa: F401  (registers the configs' resolvers)

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    geometry = [f"data.num_frames={frames}", f"data.input_size={size}", f"data.batch_size={batch}"]
    geometry += ["model.recon_every_n_steps=0"]  # no reconstruction images (a host sync and a file) while timed
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *geometry])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all")


def clip_flops(module, frames: int, size: int, device: torch.device) -> float:
    """FLOPs of one training clip (every network's forward, the student's and predictor's backward), counted with
    eager attention so that the attention products are seen; the backends are restored afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from surgvista.layers.vit import set_attn_backend

    teacher = module.teacher
    backends = {m: m.attn_backend for m in module.modules() if hasattr(m, "attn_backend")}
    set_attn_backend(module, "eager")
    if teacher is not None:
        teacher.set_attn_backend("eager")
    clip = torch.randn(1, 3, frames, size, size, device=device)
    try:
        with FlopCounterMode(display=False) as counter:
            out = module._shared_step(clip, torch.Generator(device).manual_seed(0), torch.Generator().manual_seed(0))
            out["loss"].backward()
        return float(counter.get_total_flops())
    finally:
        module.zero_grad(set_to_none=True)
        for m, backend in backends.items():
            m.attn_backend = backend
        if teacher is not None:
            teacher.set_attn_backend(backends.get(teacher, "sdpa"))


def fit(overrides: list[str], batch: int, args) -> dict:
    """One Lightning fit of ``warmup + steps`` optimiser steps from batches in memory; its timings and FLOPs."""
    from surgvista.bench.pretrain import device_peak_tflops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gc.collect()  # the previous objective's model (Lightning holds it in reference cycles) out of the peak memory
    if device.type == "cuda":
        torch.cuda.empty_cache()
    module = compose_module(overrides, args.frames, args.size, batch).to(device)
    flops = clip_flops(module, args.frames, args.size, device)
    steps = args.warmup + args.steps
    loader = torch.utils.data.DataLoader(MemoryBatches(batch, args.frames, args.size, steps), batch_size=None)
    module.on_after_batch_transfer = NormalizeOnDevice.on_after_batch_transfer
    clock = StepClock(args.warmup)
    precision = "bf16-mixed" if device.type == "cuda" else "32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    timed_fit(module, loader, clock, precision, steps, args.out)
    res = clock.summary()
    peak = device_peak_tflops(device_name())
    achieved = flops * res["clips_per_s"] / 1e12
    return res | {
        "batch": batch,
        "precision": precision,
        "fit_wall_s": time.perf_counter() - t0,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "gflop_per_clip": flops / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "trainable_params_m": sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6,
        "overrides": overrides,
    }


def fit_or_halve(overrides: list[str], args) -> dict:
    """:func:`fit` at ``args.batch``; out of memory once → again at half the batch (noted in the result)."""
    try:
        return fit(overrides, args.batch, args)
    except torch.OutOfMemoryError as e:
        note = f"out of memory at batch {args.batch}: {str(e).splitlines()[0][:200]}"
    return fit(overrides, args.batch // 2, args) | {"note": note}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "logs/gpu_check"))
    ap.add_argument("--dry-run", action="store_true", help="tiny configs on any device")
    ap.add_argument("--only", nargs="+", default=None, help="a subset of the objectives by name")
    args = ap.parse_args(argv)
    geometry = dict(frames=4, size=32, batch=2, warmup=1, steps=2) if args.dry_run else dict(
        frames=16, size=224, batch=32, warmup=5, steps=15)  # fmt: skip
    vars(args).update(geometry)
    logging.getLogger("surgvista.models.teacher").setLevel(logging.ERROR)  # a random teacher on purpose
    if args.dry_run:
        torch.set_num_threads(1)
    objectives = DRY_OBJECTIVES if args.dry_run else OBJECTIVES
    results: dict = {"device": device_name(), "geometry": geometry}
    for name, overrides in objectives.items():
        if args.only and name not in args.only:
            continue
        try:
            results[name] = fit_or_halve(overrides, args)
        except Exception as e:  # one failing objective must not lose the others
            results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(f"[objectives] {name}: {results[name]}", flush=True)
        write_json(args.out / "objectives.json", results)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if failed:
        raise SystemExit(f"[objectives] failed: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
