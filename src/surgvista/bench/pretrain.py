"""Pre-training step benchmark on synthetic tensors (no data loading, no Lightning loop).

One step = the work of ``PretrainModule.training_step`` plus the optimiser, each phase timed separately (CUDA
events on GPU, wall clock on CPU); the reported medians, FLOP count and MFU are described in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from surgvista.layers.masking import MaskGenerator
from surgvista.layers.vit import set_attn_backend
from surgvista.models.presets import TEACHER_PRESETS
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.modules.nonfinite import mark_nonfinite_step, total_grad_norm
from surgvista.modules.objective import SurgVISTALoss
from surgvista.modules.pretrain import PretrainModule, param_groups
from surgvista.utils.seeding import seeded

# name: student preset, teacher preset, frames, image size, default batch, image/pixel decoder depths
PRESETS: dict[str, dict] = {
    "tiny": {"student": "tiny", "teacher": "tiny", "frames": 4, "img_size": 64, "batch": 4, "dec_img": 1, "dec_vid": 2},
    "small": {
        "student": "small",
        "teacher": "small",
        "frames": 16,
        "img_size": 112,
        "batch": 2,
        "dec_img": 2,
        "dec_vid": 4,
    },
    # The released recipe: ViT-B student, ViT-L/16 teacher, 16 x 224^2 clips.
    "base": {
        "student": "base",
        "teacher": "large",
        "frames": 16,
        "img_size": 224,
        "batch": 32,
        "dec_img": 2,
        "dec_vid": 4,
    },
}
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) used when --peak-tflops is not given.
DEVICE_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def device_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (e.g. "NVIDIA H100 80GB HBM3"); ``None`` if unknown."""
    return next((v for k, v in DEVICE_PEAK_TFLOPS.items() if k in device_name), None)


@dataclass
class BenchConfig:
    preset: str = "tiny"
    batch: int | None = None
    precision: str = "auto"  # auto: bf16-mixed on CUDA, 32 on CPU
    attn_backend: str = "sdpa"
    grad_checkpointing: bool = False
    compile: bool = False
    teacher: str | None = None  # teacher preset; None = the preset's
    teacher_every_k: int = 1
    teacher_dtype: str | None = None  # bfloat16: the teacher in pure bf16 on CUDA (ImageTeacher dtype)
    mask_ratio: float = 0.85
    decoder_mask_ratio: float | None = None  # dual masking of the pixel decoder (PretrainModule's knob)
    steps: int = 10
    warmup: int = 3
    device: str = "auto"
    peak_tflops: float | None = None
    nonfinite_check: bool = True  # per-step non-finite guard (grad norm + device-side skip), as in training
    sync_free_masking: bool = True  # masked-token count from the generator; False: read from the mask (a sync)
    label: str = ""


@dataclass
class BenchResult:
    config: dict
    device: str
    precision: str
    clips_per_s: float
    step_ms: float
    teacher_ms: float
    student_ms: float
    optimizer_ms: float
    step_ms_mean: float
    peak_memory_mb: float
    memory_kind: str
    model_tflop_per_step: float
    achieved_tflops: float
    mfu: float | None
    notes: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} requested but CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device, notes: list[str]) -> str:
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected auto or one of {PRECISIONS}")
    if precision == "16-mixed" and device.type != "cuda":
        notes.append("16-mixed (fp16 autocast + GradScaler) needs CUDA; ran fp32 instead")
        return "32"
    return precision


def _rss_mb() -> float:
    """Resident set size in MiB (Linux ``/proc``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seeded_student(
    preset: str, teacher_preset: str, attn_backend: str, grad_checkpointing: bool = False
) -> SurgVISTAStudent:
    """The preset's student (seed 0), its image decoder sized for ``teacher_preset``."""
    p = PRESETS[preset]
    with seeded(0):
        return SurgVISTAStudent(
            p["student"],
            img_size=p["img_size"],
            num_frames=p["frames"],
            teacher_dim=TEACHER_PRESETS[teacher_preset].embed_dim,
            image_decoder_depth=p["dec_img"],
            pixel_decoder_depth=p["dec_vid"],
            attn_backend=attn_backend,
            grad_checkpointing=grad_checkpointing,
        )


def build(cfg: BenchConfig, device: torch.device):
    p = PRESETS[cfg.preset]
    teacher_preset = cfg.teacher or p["teacher"]
    student = seeded_student(cfg.preset, teacher_preset, cfg.attn_backend, cfg.grad_checkpointing)
    teacher = ImageTeacher(
        teacher_preset, img_size=p["img_size"], attn_backend=cfg.attn_backend, dtype=cfg.teacher_dtype
    )
    module = PretrainModule(
        student,
        teacher,
        SurgVISTALoss(),
        MaskGenerator("tube", cfg.mask_ratio),
        batch_size=cfg.batch or p["batch"],
        compile=cfg.compile,
        teacher_every_k=cfg.teacher_every_k,
        decoder_mask_ratio=cfg.decoder_mask_ratio,
    )
    module.configure_model()  # torch.compile per block when asked (no mesh: no sharding)
    module.to(device)
    optimizer = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    return module, optimizer


def count_model_flops(module: PretrainModule, video: torch.Tensor, gen: torch.Generator) -> float:
    """FLOPs of teacher forward + student forward/backward for one clip (eager attention, no recomputation)."""
    from torch.utils.flop_counter import FlopCounterMode

    s, t = module.student, module.teacher
    backend, ckpt = s.blocks[0].attn.attn_backend, s.grad_checkpointing
    set_attn_backend(s, "eager")
    s.set_grad_checkpointing(False)
    t_backend = t.attn_backend
    t.set_attn_backend("eager")
    try:
        with FlopCounterMode(display=False) as counter:
            clip = video[:1]
            mask = module.masking(1, s.token_grid, clip.device, gen)
            decoded = module.decoder_positions(mask, module.masking.num_masked(s.token_grid), gen)
            image_pred, pixel_pred = s(clip, mask, None, decoded)
            feats = t(clip)
            out = module.loss(
                clip, mask, pixel_pred, image_pred, feats, s.tubelet_size, s.patch_size, pixel_positions=decoded
            )
            out["loss"].backward()
        s.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())
    finally:
        set_attn_backend(s, backend)
        s.set_grad_checkpointing(ckpt)
        t.set_attn_backend(t_backend)


class Runner:
    """One benchmark configuration: model, optimiser and synthetic batch, stepped one timed step at a time."""

    def __init__(self, cfg: BenchConfig) -> None:
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown bench preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
        if cfg.teacher_every_k < 1 or cfg.steps < 1 or cfg.warmup < 0:
            raise ValueError("need teacher_every_k >= 1, steps >= 1 and warmup >= 0")
        self.cfg, self.notes = cfg, []
        self.device = device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, device, self.notes)
        p = PRESETS[cfg.preset]
        self.batch = cfg.batch or p["batch"]
        self.module, self.optimizer = build(cfg, device)
        self.amp_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "16-mixed" else None
        self.gen = torch.Generator(device).manual_seed(0)
        clip_gen = torch.Generator(device).manual_seed(1)  # the same synthetic clip in every run
        self.video = torch.randn(
            self.batch, 3, p["frames"], p["img_size"], p["img_size"], device=device, generator=clip_gen
        )
        eager = getattr(torch.compiler, "set_stance", None)  # count FLOPs without compiling for batch 1
        with eager("force_eager") if eager and cfg.compile else contextlib.nullcontext():
            self.flops = count_model_flops(self.module, self.video, self.gen) * self.batch
        self.cuda = device.type == "cuda"
        self.peak_rss = 0.0  # MiB, sampled after every step on CPU
        self.clocks: list[tuple] = []  # per timed step: CUDA events (or host times) around its three phases
        self.step_index = 0
        self.last_loss = float("nan")
        self.skipped = torch.zeros((), device=device)
        self.consecutive = torch.zeros((), device=device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _clock(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def step(self) -> None:
        """One optimiser step; its phase times are kept once the warm-up is over."""
        cfg, s, t, k = self.cfg, self.module.student, self.module.teacher, self.cfg.teacher_every_k
        run_teacher = self.step_index % k == 0
        c0 = self._clock()
        with self._autocast():
            feats = t(self.video) if run_teacher else None
        c1 = self._clock()
        with self._autocast():
            mask = self.module.masking(self.batch, s.token_grid, self.device, self.gen)
            n_masked = self.module.masking.num_masked(s.token_grid) if cfg.sync_free_masking else None
            decoded = self.module.decoder_positions(mask, self.module.masking.num_masked(s.token_grid), self.gen)
            image_pred, pixel_pred = s(self.video, mask, n_masked, decoded)
            out = self.module.loss(
                self.video, mask, pixel_pred, image_pred if run_teacher else None, feats, s.tubelet_size,
                s.patch_size, n_masked, decoded,
            )
            loss = out["loss"]
            if run_teacher and k > 1:
                loss = loss + (k - 1) * self.module.loss.distill_weight * out["loss_distill"]
            if not run_teacher:
                loss = loss + 0.0 * image_pred.float().sum()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        c2 = self._clock()
        if cfg.nonfinite_check:  # what PretrainModule does per step: grad norm, then the device-side skip flag
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            norm = total_grad_norm([p.grad for p in s.parameters() if p.grad is not None])
            mark_nonfinite_step(self.optimizer, loss.detach(), norm, self.skipped, self.consecutive)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        c3 = self._clock()
        if not self.cuda:
            self.peak_rss = max(self.peak_rss, _rss_mb())
        if self.step_index >= cfg.warmup:  # read after the run: no host sync per step, as in training
            self.clocks.append((c0, c1, c2, c3))
        self.step_index += 1
        self.last_loss = loss.detach()

    @property
    def times(self) -> list[tuple[float, float, float]]:
        """Teacher, student (+ loss and backward) and optimiser ms of every timed step."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return [(self._ms(a, b), self._ms(b, c), self._ms(c, d)) for a, b, c, d in self.clocks]

    def result(self) -> BenchResult:
        cfg, notes, device = self.cfg, list(self.notes), self.device
        if not math.isfinite(float(self.last_loss)):
            notes.append(f"loss was not finite ({float(self.last_loss)})")
        times = self.times
        totals = [sum(x) for x in times]
        step_ms, mean_ms = statistics.median(totals), statistics.fmean(totals)
        throughput_ms = mean_ms if cfg.teacher_every_k > 1 else step_ms
        # With the teacher on 1/k of the steps, medians would hide its cost: report means instead.
        phase = statistics.fmean if cfg.teacher_every_k > 1 else statistics.median
        if cfg.teacher_every_k > 1:
            notes.append(
                f"teacher every {cfg.teacher_every_k} steps: clips/s and phase times are means over the "
                "steps; the FLOP count assumes the teacher on every step, so MFU overstates the work done"
            )
        peak = cfg.peak_tflops
        achieved = self.flops / (throughput_ms / 1e3) / 1e12
        if self.cuda:
            mem, kind = torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
            name = torch.cuda.get_device_name(device)
            if peak is None:
                peak = device_peak_tflops(name)
        else:
            mem, kind = self.peak_rss, "peak RSS of the process, sampled per step"
            threads = torch.get_num_threads()
            name = f"CPU ({platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"
        if not self.cuda and cfg.label == "eager-fp16":
            notes = [n for n in notes if not n.startswith("16-mixed")]
            notes.append(
                "CPU: the reference configuration runs eager attention in fp32 (fp16 autocast + "
                "GradScaler is CUDA-only)"
            )
        return BenchResult(
            config=asdict(cfg) | {"batch": self.batch},
            device=name,
            precision=self.precision,
            clips_per_s=self.batch / (throughput_ms / 1e3),
            step_ms=step_ms,
            teacher_ms=phase([x[0] for x in times]),
            student_ms=phase([x[1] for x in times]),
            optimizer_ms=phase([x[2] for x in times]),
            step_ms_mean=mean_ms,
            peak_memory_mb=mem,
            memory_kind=kind,
            model_tflop_per_step=self.flops / 1e12,
            achieved_tflops=achieved,
            mfu=achieved / peak if peak else None,
            notes=notes,
        )


def run(cfg: BenchConfig) -> BenchResult:
    """Benchmark one configuration on its own and return its medians."""
    gc.collect()  # free a previous configuration's model before measuring this one's peak memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    runner = Runner(cfg)
    if runner.cuda:
        torch.cuda.synchronize(runner.device)
        torch.cuda.reset_peak_memory_stats(runner.device)
    for _ in range(cfg.warmup + cfg.steps):
        runner.step()
    return runner.result()


def run_interleaved(cfgs: list[BenchConfig]) -> list[BenchResult]:
    """Benchmark several configurations step by step in turn (A, B, A, B, ...), so that a CPU shared with other
    work slows all of them alike; the ratio is then meaningful even when absolute times are noisy."""
    runners = [Runner(c) for c in cfgs]
    for _ in range(max(c.warmup + c.steps for c in cfgs)):
        for r in runners:
            if r.step_index < r.cfg.warmup + r.cfg.steps:
                r.step()
    results = [r.result() for r in runners]
    for r in results:
        r.notes.append("interleaved step by step with the other configuration(s); peak RSS is the process's")
    return results


def reference_config(cfg: BenchConfig) -> BenchConfig:
    """The reference-faithful configuration: eager attention, fp16 autocast + GradScaler, no checkpointing."""
    return replace(
        cfg,
        attn_backend="eager",
        precision="16-mixed",
        grad_checkpointing=False,
        compile=False,
        teacher_every_k=1,
        teacher_dtype=None,
        sync_free_masking=False,  # the reference selects tokens with boolean masks: the host reads the mask
        label="eager-fp16",
    )


COMPARISONS = {  # checks-off: the same configuration without the per-step non-finite guard, the baseline for its cost
    "eager-fp16": reference_config,
    "checks-off": lambda cfg: replace(cfg, nonfinite_check=False, label="checks-off"),
    # dual-mask: the same configuration with VideoMAE V2 dual masking (the pixel decoder rebuilds half the tokens)
    "dual-mask": lambda cfg: replace(cfg, decoder_mask_ratio=0.5, label="dual-mask"),
}


def format_result(r: BenchResult) -> str:
    c = r.config
    name = c["label"] or "config"
    mfu = f"{100 * r.mfu:.1f} %" if r.mfu is not None else "n/a (give --peak-tflops)"
    lines = [
        f"[{name}] preset={c['preset']} batch={c['batch']} precision={r.precision} attn={c['attn_backend']} "
        f"grad_ckpt={c['grad_checkpointing']} compile={c['compile']} "
        f"teacher={c['teacher'] or PRESETS[c['preset']]['teacher']} "
        f"every_k={c['teacher_every_k']} nonfinite_check={c['nonfinite_check']} "
        f"decoder_mask_ratio={c['decoder_mask_ratio']} | {r.device}",
        f"  clips/s            {r.clips_per_s:10.2f}",
        f"  step (median)      {r.step_ms:10.1f} ms   (mean {r.step_ms_mean:.1f} ms over {c['steps']} steps "
        f"after {c['warmup']} warm-up)",
        f"    teacher forward  {r.teacher_ms:10.1f} ms",
        f"    student fwd+bwd  {r.student_ms:10.1f} ms",
        f"    optimizer        {r.optimizer_ms:10.1f} ms",
        f"  peak memory        {r.peak_memory_mb:10.0f} MiB ({r.memory_kind})",
        f"  model FLOPs/step   {r.model_tflop_per_step:10.4f} TFLOP  -> {r.achieved_tflops:.3f} TFLOP/s, MFU {mfu}",
    ]
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def main(args) -> list[BenchResult]:
    cfg = BenchConfig(
        preset=args.preset,
        batch=args.batch,
        precision=args.precision,
        attn_backend=args.attn,
        grad_checkpointing=args.grad_checkpointing,
        compile=args.compile,
        teacher=args.teacher,
        teacher_every_k=args.teacher_every_k,
        mask_ratio=args.mask_ratio,
        decoder_mask_ratio=args.decoder_mask_ratio,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        peak_tflops=args.peak_tflops,
        nonfinite_check=args.nonfinite_check,
        label="config",
    )
    interleave = args.interleave if args.interleave is not None else resolve_device(args.device).type == "cpu"
    other = COMPARISONS[args.compare](cfg) if args.compare else None
    if other is not None and interleave:
        results = run_interleaved([cfg, other])
    else:
        results = [run(cfg)] + ([run(other)] if other is not None else [])
    for r in results:
        print(format_result(r), flush=True)
    if args.compare:
        ref = results[1]
        print(
            f"[ratio] config / {args.compare}: {results[0].clips_per_s / ref.clips_per_s:.3f}x clips/s, "
            f"{results[0].peak_memory_mb / ref.peak_memory_mb:.2f}x peak memory ({cfg.preset}, batch "
            f"{results[0].config['batch']})",
            flush=True,
        )
    if args.compare == "dual-mask":
        off, on = results
        print(
            f"[dual-mask] step speed-up of decoder_mask_ratio={on.config['decoder_mask_ratio']} over dual masking "
            f"{'off' if off.config['decoder_mask_ratio'] is None else 'at ' + str(off.config['decoder_mask_ratio'])}: "
            f"{off.step_ms / on.step_ms:.3f}x (median step {off.step_ms:.1f} -> {on.step_ms:.1f} ms; student "
            f"fwd+bwd {off.student_ms:.1f} -> {on.student_ms:.1f} ms)",
            flush=True,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def flop_split(preset: str, teacher: str | None = None, mask_ratio: float = 0.85) -> dict[str, float]:
    """Model FLOPs per clip: teacher forward (counted on the meta device, no compute) and student forward +
    backward with the loss (one real CPU step, eager attention). Returns GFLOP per clip."""
    from torch.utils.flop_counter import FlopCounterMode

    p = PRESETS[preset]
    teacher_preset = teacher or p["teacher"]
    with torch.device("meta"):
        t = ImageTeacher(teacher_preset, img_size=p["img_size"])
        clip = torch.empty(1, 3, p["frames"], p["img_size"], p["img_size"])
        with FlopCounterMode(display=False) as counter:
            t(clip)
    teacher_flops = counter.get_total_flops()
    s = seeded_student(preset, teacher_preset, "eager")
    clip = torch.randn(1, 3, p["frames"], p["img_size"], p["img_size"], generator=torch.Generator().manual_seed(1))
    mask = MaskGenerator("tube", mask_ratio)(1, s.token_grid, clip.device, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        image_pred, pixel_pred = s(clip, mask)
        feats = torch.zeros(1, mask.shape[1], TEACHER_PRESETS[teacher_preset].embed_dim)
        SurgVISTALoss()(clip, mask, pixel_pred, image_pred, feats, s.tubelet_size, s.patch_size)["loss"].backward()
    student_flops = counter.get_total_flops()
    total = teacher_flops + student_flops
    return {
        "teacher_gflop": teacher_flops / 1e9,
        "student_gflop": student_flops / 1e9,
        "teacher_share": teacher_flops / total,
    }
