"""The GPU check's measurements (``bench/gpu_check.sh`` runs them; ``make gpu-check``).

``env``      GPU, driver, torch/CUDA, SDPA backends, flash-attn → ``env.json``
``step``     the step benchmark (``surgvista.bench.pretrain``): ours (bf16 + SDPA, compile off/on) vs the reference
             configuration (fp16 autocast + GradScaler + eager attention) → ``step.json``, plus a
             ``torch.profiler`` summary of our step → ``profile.txt``
``e2e``      end to end: Lightning fits on synthetic 1-fps surgical videos (16×4 clips at 224²) through our loader
             (JPEG frame folders and all-intra mp4) and through the reference data path (PNG per frame, PIL and the
             reference transforms, ``bench/data_throughput.py``'s ``ReferenceLoader``), the same workers and GPU
             → ``e2e.json``
``summary``  ``bench/results/<gpu>-<yyyymmdd>.json`` and ``.md`` from the parts (also copied to ``--out``)

``--dry-run`` runs the same code paths at the tiny preset on whatever device there is (CPU in CI).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/data_throughput.py: the reference data path

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"


# ------------------------------------------------------------------------------------------------ env
def sdpa_backends() -> dict[str, bool]:
    """Which fused SDPA kernels accept a ViT-B-shaped bf16 attention on this device (tried, not assumed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        return {}
    q = torch.randn(2, 12, 197, 64, device="cuda", dtype=torch.bfloat16)
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            torch.cuda.synchronize()
            out[name.lower()] = True
        except (RuntimeError, AttributeError):
            out[name.lower()] = False
    return out


def env_report() -> dict:
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    rep = {
        "device": device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "packages": {
            p: version(p)
            for p in (
                "lightning",
                "timm",
                "hydra-core",
                "decord",
                "av",
                "torchcodec",
                "flash-attn",
                "transformers",
                "triton",
            )
        },
        "sdpa_backends": sdpa_backends(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rep |= {
            "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            rep["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            rep["nvidia_smi"] = f"unavailable: {e}"
    return rep


# ----------------------------------------------------------------------------------------------- step
def step_configs(dry: bool) -> list[tuple[str, dict]]:
    """(label, BenchConfig kwargs): the recipe's model (pure-bf16 teacher) at batch 32 (the end-to-end fits' batch) and
    64, the reference configuration at 64, and the recipe's model compiled at 64 (the ``model.compile`` decision)."""
    if dry:
        common = {"preset": "tiny", "steps": 2, "warmup": 1}
        return [
            ("ours_b4", common | {"batch": 4, "teacher_dtype": "bfloat16"}),
            ("reference_b4", common | {"batch": 4, "ref": True}),
        ]
    common = {"preset": "base", "steps": 8, "warmup": 3}
    return [
        ("ours_bf16teacher_b32", common | {"batch": 32, "teacher_dtype": "bfloat16"}),  # the e2e fits' model
        ("ours_bf16teacher_b64", common | {"batch": 64, "teacher_dtype": "bfloat16"}),
        ("reference_b64", common | {"batch": 64, "ref": True}),
        ("ours_compile_b64", common | {"batch": 64, "teacher_dtype": "bfloat16", "compile": True}),  # vs the recipe
    ]


def run_steps(dry: bool, out: Path) -> dict:
    from surgvista.bench.pretrain import BenchConfig, format_result, reference_config, run

    results = {}
    only = [x for x in os.environ.get("GPU_CHECK_STEP_ONLY", "").split(",") if x]
    for label, kw in step_configs(dry):
        if only and label not in only:
            continue
        ref = kw.pop("ref", False)
        cfg = BenchConfig(label=label, **kw)
        if ref:
            cfg = reference_config(cfg)
        t0 = time.perf_counter()
        try:
            r = run(cfg)
        except Exception as e:  # one failing configuration (e.g. out of memory) must not lose the others
            results[label] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"[step] {label}: FAILED {results[label]['error']}", flush=True)
            continue
        results[label] = asdict(r) | {"wall_s": time.perf_counter() - t0}
        print(format_result(r), flush=True)
        write_json(out / "step.json", results)
    if not dry and os.environ.get("GPU_CHECK_PROFILE", "1") != "0":
        try:
            (out / "profile.txt").write_text(profile_step())
        except Exception as e:
            (out / "profile.txt").write_text(f"profile failed: {type(e).__name__}: {e}")
    write_json(out / "step.json", results)
    failed = [k for k, v in results.items() if not _ok(v)]
    if failed:
        raise SystemExit(f"[step] failed: {', '.join(failed)}")
    return results


def profile_step(steps: int = 3) -> str:
    """``torch.profiler`` table (top 25 ops by device time) of our base-preset step at batch 32."""
    from torch.profiler import ProfilerActivity, profile

    from surgvista.bench.pretrain import BenchConfig, Runner

    runner = Runner(BenchConfig(preset="base", batch=32, steps=steps, warmup=2))
    for _ in range(2):
        runner.step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.step()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60)
    return f"# base preset, batch 32, bf16-mixed + SDPA, {steps} steps ({device_name()})\n{table}"


# ------------------------------------------------------------------------------------------------ e2e
def _render_video(args) -> None:
    """One synthetic 1-fps video as PNG and JPEG frame folders and an all-intra mp4 (the demo renderer)."""
    import av
    import numpy as np
    from PIL import Image

    from surgvista.data.demo import PHASE_SCRIPT, _Scene

    root, v, frames, (width, height) = args
    scene = _Scene(np.random.default_rng(v), height, width)
    vid = f"video{v:02d}"
    png, jpg = root / "png" / vid, root / "jpg" / vid
    png.mkdir(parents=True, exist_ok=True)
    jpg.mkdir(parents=True, exist_ok=True)
    (root / "mp4").mkdir(exist_ok=True)
    with av.open(str(root / "mp4" / f"{vid}.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=1, options={"crf": "23", "tune": "fastdecode"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = 1
        for i in range(frames):
            frame = scene.render(float(i), min(len(PHASE_SCRIPT) - 1, i * len(PHASE_SCRIPT) // frames), (i % 50) / 50)
            img = Image.fromarray(frame)
            img.save(png / f"{i:05d}.png")
            img.save(jpg / f"{i}.jpg", quality=90)
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())


def make_videos(root: Path, videos: int, frames: int, size: tuple[int, int], workers: int) -> dict:
    """Synthetic videos in the three layouts, rendered in parallel; returns the manifests and PNG folders."""
    from surgvista.data.manifest import VideoEntry, write_manifest

    with get_context("spawn").Pool(max(1, min(workers, videos))) as pool:
        pool.map(_render_video, [(root, v, frames, size) for v in range(videos)])
    ids = [f"video{v:02d}" for v in range(videos)]
    jpg = [VideoEntry("bench", i, "frames", root / "jpg" / i, frames, 1.0) for i in ids]
    mp4 = [VideoEntry("bench", i, "video", root / "mp4" / f"{i}.mp4", frames, None) for i in ids]
    return {
        "png": [str(root / "png" / i) for i in ids],
        "jpg": str(write_manifest(root / "jpg.jsonl", jpg)),
        "mp4": str(write_manifest(root / "mp4.jsonl", mp4)),
    }


class ReferenceClips(torch.utils.data.Dataset):
    """The reference data path as a dataset: both normalised float copies (student, teacher) and the numpy mask."""

    def __init__(self, folders: list[str], num_frames: int, input_size: int) -> None:
        from data_throughput import ReferenceLoader

        self.loader = ReferenceLoader(folders, num_frames, input_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> dict:
        student, teacher, mask = self.loader[index]
        return {"video": student, "teacher_video": teacher, "mask": torch.from_numpy(mask)}


class MemoryBatches(torch.utils.data.Dataset):
    """Two whole uint8 batches in pinned host memory, served in turn: a fit with no loader cost at all (Lightning,
    the copy to the GPU, the normalisation and the model), to tell Lightning's cost from the loader's."""

    def __init__(self, batch: int, frames: int, size: int, length: int) -> None:
        gen = torch.Generator().manual_seed(0)
        shape = (batch, 3, frames, size, size)
        self.batches = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen) for _ in range(2)]
        if torch.cuda.is_available():
            self.batches = [b.pin_memory() for b in self.batches]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"video": self.batches[index % 2]}


class NormalizeOnDevice:
    @staticmethod
    def on_after_batch_transfer(batch: dict, dataloader_idx: int) -> dict:
        from surgvista.data.transforms import normalize_clip

        return {**batch, "video": normalize_clip(batch["video"])}


def loaders(kind: str, data: dict, batch: int, workers: int, frames: int, size: int, persistent: bool = True,
            steps: int = 64):  # fmt: skip
    """Our ``PretrainDataModule`` (uint8 clips, normalised on the GPU), batches already in memory, or the reference
    data path; with the object whose ``on_after_batch_transfer`` the fit uses (``None``: the batch as it is)."""
    from surgvista.data.datamodule import PretrainDataModule

    if kind == "ours_memory":
        ds = MemoryBatches(batch, frames, size, length=steps)
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0), NormalizeOnDevice()
    if kind == "reference":
        ds = ReferenceClips(data["png"], frames, size)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=True,
            persistent_workers=persistent and workers > 0,
        ), None
    manifest, backend = {"ours_jpg": (data["jpg"], "decord"), "ours_mp4": (data["mp4"], "pyav")}[kind]
    dm = PretrainDataModule(
        [manifest],
        batch_size=batch,
        num_workers=workers,
        pin_memory=True,
        num_frames=frames,
        sampling_rate=4,
        input_size=size,
        backend=backend,
        normalize_on_device=True,
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent,
    )
    dm.setup("fit")
    return dm.train_dataloader(), dm


def data_rate(loader, batches: int) -> float:
    """Clips/s of the loader alone (no GPU work), from the first batch to the last of ``batches`` (many more than
    the workers, so that batches prepared during the workers' start-up do not inflate the rate)."""
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(min(batches, len(loader) - 1)):  # one epoch at most
        n += len(next(it)["video"])
    rate = n / (time.perf_counter() - t0)
    del it  # shut the workers down before the fit starts its own
    return rate


class _HostEvent:
    """``torch.cuda.Event``'s ``record`` / ``elapsed_time`` on the host clock (CPU runs and the dry run)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _HostEvent) -> float:
        return 1e3 * (end.t - self.t)


class StepClock:
    """Lightning callback: clips/s and GPU idle of the timed steps, from events on the GPU's own timeline.

    An event is recorded when each batch starts (after its host-to-device copy is queued) and when it ends; nothing
    waits for the GPU until the fit is over, so the host queues work ahead as in a real run. ``gpu_idle_frac`` is
    the share of the timed span between one step's end and the next step's start on the GPU timeline: waiting for
    the host (loader, hooks, launches) plus the batch's copy and normalisation, so an upper bound on the idle time.
    """

    def __init__(self, warmup: int) -> None:
        import lightning as L

        self.marks: list[tuple] = []  # (start event, end event, clips) of every timed step
        make = (lambda: torch.cuda.Event(enable_timing=True)) if torch.cuda.is_available() else _HostEvent

        def record():
            ev = make()
            ev.record()
            return ev

        class _CB(L.Callback):
            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx):
                self.start = record() if trainer.global_step >= warmup else None

            def on_train_batch_end(cb, trainer, pl_module, outputs, batch, batch_idx):
                if self.start is not None:
                    self.marks.append((self.start, record(), len(batch["video"])))

        self.callback = _CB()
        self.start = None

    def summary(self) -> dict:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        steps = [a.elapsed_time(b) for a, b, _ in self.marks]
        gaps = [b.elapsed_time(a) for (_, b, _), (a, _, _) in zip(self.marks, self.marks[1:])]
        span_ms = self.marks[0][0].elapsed_time(self.marks[-1][1])
        return {
            "clips_per_s": sum(c for *_, c in self.marks) / (span_ms / 1e3),
            "gpu_idle_frac": sum(gaps) / span_ms,
            "step_ms_median": statistics.median(steps),
            "timed_steps": len(self.marks),
        }


def timed_fit(module, loader, clock: StepClock, precision: str, steps: int, root: Path) -> None:
    """A bare Lightning fit of ``steps`` optimiser steps timed by ``clock`` (no logger, checkpoints, progress bar or
    sanity check; anything Lightning writes goes under ``root``)."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="cuda" if torch.cuda.is_available() else "cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock.callback],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)


def e2e_fit(kind: str, data: dict, args) -> dict:
    """A Lightning fit of ``warmup + steps`` optimiser steps; the data path and model configuration by ``kind``."""
    from surgvista.bench.pretrain import BenchConfig, build, reference_config

    ref = kind == "reference"
    cfg = BenchConfig(preset=args.preset, batch=args.batch, teacher_dtype=args.teacher_dtype)
    cfg = reference_config(cfg) if ref else cfg
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, _ = build(cfg, device)
    shape = (module.student.num_frames, module.student.img_size)
    steps = args.warmup + args.steps
    rate = data_rate(loaders(kind, data, args.batch, args.workers, *shape, False, steps)[0], args.data_batches)
    loader, dm = loaders(kind, data, args.batch, args.workers, *shape, steps=steps)
    clock = StepClock(args.warmup)
    precision = ("16-mixed" if ref else "bf16-mixed") if device.type == "cuda" else "32"
    if dm is not None:
        module.on_after_batch_transfer = dm.on_after_batch_transfer  # uint8 → normalised float on the device
    t0 = time.perf_counter()
    timed_fit(module, loader, clock, precision, steps, args.out)
    res = clock.summary() | {
        "data_clips_per_s": rate,
        "precision": precision,
        "attn": cfg.attn_backend,
        "teacher_dtype": cfg.teacher_dtype,
        "fit_wall_s": time.perf_counter() - t0,
        "batch": args.batch,
        "workers": args.workers,
    }
    del module, loader
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def run_e2e(args, out: Path) -> dict:
    import tempfile

    results: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("func", "out")}}
    with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
        t0 = time.perf_counter()
        data = make_videos(Path(tmp), args.videos, args.frames, tuple(args.size), args.workers)
        results["synth_s"] = time.perf_counter() - t0
        print(
            f"[e2e] {args.videos} videos x {args.frames} frames at {args.size[0]}x{args.size[1]} in "
            f"{results['synth_s']:.0f} s",
            flush=True,
        )
        for kind in args.kinds:
            try:
                results[kind] = e2e_fit(kind, data, args)
            except Exception as e:
                results[kind] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"[e2e] {kind}: {results[kind]}", flush=True)
            write_json(out / "e2e.json", results)
    failed = [k for k in args.kinds if not _ok(results[k])]
    if failed:
        raise SystemExit(f"[e2e] failed: {', '.join(failed)}")
    return results


# -------------------------------------------------------------------------------------------- summary
def _ok(d: dict | None) -> bool:
    return isinstance(d, dict) and "error" not in d


def _ratio(step: dict, a: str, b: str) -> float | None:
    """clips/s of step configuration ``a`` ÷ that of ``b``, when both ran."""
    return step[a]["clips_per_s"] / step[b]["clips_per_s"] if _ok(step.get(a)) and _ok(step.get(b)) else None


def _same_model_step(step: dict, e2e_config: dict) -> dict | None:
    """The step benchmark of our model at the end-to-end fits' batch and teacher dtype, if it ran."""
    for v in step.values():
        c = v.get("config", {}) if _ok(v) else {}
        same = (c.get("batch"), c.get("teacher_dtype")) == (e2e_config.get("batch"), e2e_config.get("teacher_dtype"))
        if same and c.get("label", "").startswith("ours") and not c.get("compile"):
            return v
    return None


def summarise(out: Path, results_dir: Path) -> dict:
    """Merge the parts into the committed result JSON and a Markdown summary."""
    load = lambda n: json.loads((out / n).read_text()) if (out / n).is_file() else {}  # noqa: E731
    env, step, e2e = load("env.json"), load("step.json"), load("e2e.json")
    objectives, stream = load("objectives.json"), load("stream.json")
    pytest_txt = (out / "pytest.txt").read_text() if (out / "pytest.txt").is_file() else ""
    tests = re.findall(r"^=* ?(\d+ (?:passed|failed|skipped|error).*) in [\d.]+s", pytest_txt, re.M)
    ours_e2e = max(
        (e2e[k] for k in ("ours_jpg", "ours_mp4") if _ok(e2e.get(k))), key=lambda r: r["clips_per_s"], default=None
    )
    ref_e2e = e2e.get("reference") if _ok(e2e.get("reference")) else None
    best_step = max(
        (v for k, v in step.items() if k.startswith("ours") and _ok(v)), key=lambda r: r["clips_per_s"], default=None
    )
    paths = [k for k in ("ours_jpg", "ours_mp4", "reference", "ours_memory") if _ok(e2e.get(k))]
    bare = _same_model_step(step, e2e.get("config", {}))
    res = {
        "device": env.get("device", device_name()),
        "torch": env.get("torch", torch.__version__),
        "date": dt.date.today().isoformat(),
        "dry_run": (out / "DRY_RUN").exists(),
        "clips_per_s": {"ours": ours_e2e and ours_e2e["clips_per_s"], "reference": ref_e2e and ref_e2e["clips_per_s"]},
        "speedup_vs_reference": (ours_e2e["clips_per_s"] / ref_e2e["clips_per_s"]) if ours_e2e and ref_e2e else None,
        "gpu_idle_frac": {k: e2e[k]["gpu_idle_frac"] for k in paths},
        "data_clips_per_s": {k: e2e[k]["data_clips_per_s"] for k in paths},
        # Lightning's whole path with no loader cost ÷ the bare step of the same model and batch
        "fit_vs_bare_step": e2e["ours_memory"]["clips_per_s"] / bare["clips_per_s"]
        if bare and "ours_memory" in paths
        else None,
        "mfu": best_step and best_step["mfu"],
        "compile_speedup": _ratio(step, "ours_compile_b64", "ours_bf16teacher_b64"),
        "step_speedup_vs_reference_b64": _ratio(step, "ours_bf16teacher_b64", "reference_b64"),
        "peak_mem_gib": {k: v["peak_memory_mb"] / 1024 for k, v in step.items() if _ok(v)},
        "step": {
            k: (
                {
                    m: v[m]
                    for m in (
                        "clips_per_s",
                        "step_ms",
                        "teacher_ms",
                        "student_ms",
                        "optimizer_ms",
                        "peak_memory_mb",
                        "mfu",
                        "achieved_tflops",
                        "precision",
                    )
                }
                if _ok(v)
                else v
            )
            for k, v in step.items()
        },
        "e2e": e2e,
        "objectives": objectives,
        "stream": stream,
        "tests": tests[-1] if tests else None,
        "env": env,
    }
    gpu = re.sub(r"[^a-z0-9]+", "-", res["device"].lower()).strip("-")
    stem = f"{gpu}-{dt.date.today():%Y%m%d}" + ("-dry-run" if res["dry_run"] else "")
    md = markdown(res)
    for folder in {out, results_dir}:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{stem}.json", res)
        (folder / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return res


def _fmt(x, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _step_lines(step: dict) -> list[str]:
    lines = [
        "## Step benchmark (synthetic tensors, model + optimiser only)",
        "",
        "| config | clips/s | step ms | teacher ms | student ms | optim ms | peak GiB | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in step.items():
        if not _ok(v):
            lines.append(f"| {k} | failed: {v.get('error', '?')[:80]} |||||||")
            continue
        lines.append(
            f"| {k} ({v['precision']}) | {v['clips_per_s']:.1f} | {v['step_ms']:.1f} | {v['teacher_ms']:.1f} "
            f"| {v['student_ms']:.1f} | {v['optimizer_ms']:.1f} | {v['peak_memory_mb'] / 1024:.2f} "
            f"| {_pct(v['mfu'])} |"
        )
    return lines


def _e2e_lines(e2e: dict) -> list[str]:
    lines = [
        "## End to end (Lightning fit: loader + teacher + student + optimiser)",
        "",
        "| path | clips/s | GPU idle | loader alone clips/s | precision / attention |",
        "|---|---|---|---|---|",
    ]
    for k in ("ours_jpg", "ours_mp4", "reference", "ours_memory"):
        v = e2e.get(k)
        if v is None:
            continue
        if not _ok(v):
            lines.append(f"| {k} | failed: {v['error'][:80]} ||||")
            continue
        lines.append(
            f"| {k} | {v['clips_per_s']:.1f} | {_pct(v['gpu_idle_frac'])} | "
            f"{v['data_clips_per_s']:.1f} | {v['precision']} / {v['attn']} |"
        )
    return lines


def _objective_lines(objectives: dict) -> list[str]:
    lines = [
        "## Objectives side by side (Lightning fit from batches in memory; bench/objective_fit.py)",
        "",
        "| objective | batch | clips/s | step ms | GPU idle | GFLOP/clip | MFU | peak GiB | trainable M |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in objectives.items():
        if not isinstance(v, dict) or k == "geometry":
            continue
        if not _ok(v):
            lines.append(f"| {k} | failed: {v['error'][:80]} ||||||||")
            continue
        lines.append(
            f"| {k} | {v['batch']} | {v['clips_per_s']:.1f} | {v['step_ms_median']:.1f} | "
            f"{_pct(v['gpu_idle_frac'])} | {v['gflop_per_clip']:.4g} | {_pct(v['mfu'])} | "
            f"{_fmt(v['peak_memory_gib'], '.1f')} | {v['trainable_params_m']:.1f} |"
        )
    return lines


def _stream_lines(stream: dict) -> list[str]:
    if not stream:
        return []
    rows = [
        f"| {k} | {_fmt(stream[k]['p50'], '.2f')} | {_fmt(stream[k]['p95'], '.2f')} | "
        f"{_fmt(stream[k]['frames_per_s'])} |"
        for k in ("plain", "reuse_tubelets")
        if k in stream
    ]
    m = stream.get("model", {})
    return [
        f"## Streaming latency ({m.get('network')}: {m.get('num_frames')} frames, {m.get('input_size')} px, "
        f"{m.get('precision')}; bench/stream_latency.py)",
        "",
        "| stream | median ms | p95 ms | frames/s |",
        "|---|---|---|---|",
        *rows,
        "",
        f"reuse ÷ plain: {_fmt(stream.get('reuse_speedup'), '.2f')}x, largest probability difference "
        f"{_fmt(stream.get('reuse_max_abs_diff'), '.1e')}",
    ]


def markdown(res: dict) -> str:
    lines = [
        f"# GPU check: {res['device']} ({res['date']}{', dry run' if res['dry_run'] else ''})",
        "",
        f"torch {res['torch']}; tests: {res['tests'] or 'not run'}",
        "",
        *_step_lines(res["step"]),
        "",
        f"recipe ÷ reference configuration (b64): {_fmt(res['step_speedup_vs_reference_b64'], '.2f')}x; "
        f"model.compile=true ÷ eager (b64): {_fmt(res['compile_speedup'], '.2f')}x",
        "",
        *_e2e_lines(res["e2e"]),
        "",
        f"**speedup_vs_reference (end to end): {_fmt(res['speedup_vs_reference'], '.2f')}x**",
        "",
        "Lightning fit from batches in memory ÷ bare step (same model and batch): "
        f"{_fmt(res['fit_vs_bare_step'], '.2f')}",
        "",
        *_objective_lines(res["objectives"]),
        "",
        *_stream_lines(res["stream"]),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("env", "step", "e2e", "summary"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "logs/gpu_check"))
    ap.add_argument("--dry-run", action="store_true", help="tiny preset and tiny data: the code paths, on any device")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--data-dir", default=None, help="where the e2e videos are synthesised (default: $TMPDIR)")
    ap.add_argument("--kinds", nargs="+", default=["ours_jpg", "ours_mp4", "reference", "ours_memory"])
    ap.add_argument(
        "--teacher-dtype", default="bfloat16", help="our e2e teacher (model.teacher.dtype; 'none': autocast)"
    )
    args = ap.parse_args(argv)
    args.teacher_dtype = None if args.teacher_dtype.lower() in ("none", "null") else args.teacher_dtype
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("surgvista.models.teacher").setLevel(logging.ERROR)  # a random teacher on purpose
    if args.dry_run:
        (args.out / "DRY_RUN").touch()
        torch.set_num_threads(1)
    e2e = (
        {
            "preset": "tiny",
            "batch": 4,
            "steps": 2,
            "warmup": 1,
            "workers": 1,
            "videos": 2,
            "frames": 40,
            "size": (128, 96),
            "data_batches": 4,
        }
        if args.dry_run
        else {
            "preset": "base",
            "batch": 32,
            "steps": 15,
            "warmup": 5,
            "workers": min(14, (os.cpu_count() or 2) - 2),
            "videos": 8,
            "frames": 150,
            "size": (512, 320),
            "data_batches": 4 * min(14, (os.cpu_count() or 2) - 2),
        }
    )
    for k, v in e2e.items():
        setattr(args, k, v)
    if args.command == "env":
        rep = env_report()
        write_json(args.out / "env.json", rep)
        print(json.dumps(rep, indent=2), flush=True)
    elif args.command == "step":
        run_steps(args.dry_run, args.out)
    elif args.command == "e2e":
        run_e2e(args, args.out)
    else:
        summarise(args.out, args.results_dir if not args.dry_run else args.out)


if __name__ == "__main__":
    main()
