"""``python -m surgvista.bench pretrain [options]``: time pre-training steps on synthetic tensors."""

from __future__ import annotations

import argparse
import logging

import torch

from surgvista.bench import pretrain
from surgvista.layers.vit import ATTN_BACKENDS


def parser() -> argparse.ArgumentParser:
    """The ``pretrain`` and ``flops`` subcommands and their options."""
    ap = argparse.ArgumentParser(prog="python -m surgvista.bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="time N optimiser steps of SurgVISTA pre-training after warm-up")
    _model_options(p)
    _timing_options(p)
    f = sub.add_parser("flops", help="model FLOPs per clip: teacher forward vs student forward+backward")
    _flops_options(f)
    return ap


def _model_options(p: argparse.ArgumentParser) -> None:
    """``pretrain``: what is timed (preset, batch, precision, attention, teacher, masking)."""
    p.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(pretrain.PRESETS),
        help="tiny/small (CPU-sized) or base (ViT-B student + ViT-L teacher, 16x224^2)",
    )
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: the preset's)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", *pretrain.PRECISIONS),
        help="auto = bf16-mixed on CUDA, 32 on CPU",
    )
    p.add_argument("--attn", default="sdpa", choices=ATTN_BACKENDS, help="attention backend (student and teacher)")
    p.add_argument("--grad-checkpointing", action="store_true", help="per-block activation checkpointing")
    p.add_argument("--compile", action="store_true", help="torch.compile every block (slow warm-up)")
    p.add_argument(
        "--teacher",
        default=None,
        choices=sorted(pretrain.TEACHER_PRESETS),
        help="teacher preset (default: the preset's); the image decoder follows its width",
    )
    p.add_argument("--teacher-every-k", type=int, default=1, help="run the teacher every k-th step")
    p.add_argument("--mask-ratio", type=float, default=0.85)
    p.add_argument(
        "--decoder-mask-ratio",
        type=float,
        default=None,
        choices=(0.25, 0.5, 0.75),
        help="VideoMAE V2 dual masking of the pixel decoder (default: off)",
    )


def _timing_options(p: argparse.ArgumentParser) -> None:
    """``pretrain``: how it is timed (steps, device, threads, MFU peak, comparison, output)."""
    p.add_argument("--steps", type=int, default=10, help="timed steps (medians are reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak for MFU (default: dense bf16 peak of known GPUs; none on CPU)",
    )
    p.add_argument(
        "--compare",
        choices=tuple(pretrain.COMPARISONS),
        default=None,
        help="also run, in the same process, eager-fp16: the reference configuration (eager attention, fp16 + "
        "GradScaler on CUDA, fp32 on CPU, no checkpointing), checks-off: the same without the per-step "
        "non-finite guard, or dual-mask: the same with decoder_mask_ratio=0.5; print the ratio",
    )
    p.add_argument(
        "--nonfinite-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-step non-finite guard (grad norm + device-side step skip), as in training",
    )
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --compare: alternate the two configurations step by step (default: on CPU only, "
        "where the machine may be shared; on CUDA they run one after the other, so peak memory is exact)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def _flops_options(f: argparse.ArgumentParser) -> None:
    """``flops``: the preset and the teachers compared."""
    f.add_argument("--preset", default="base", choices=sorted(pretrain.PRESETS))
    f.add_argument(
        "--teacher",
        nargs="*",
        default=None,
        choices=sorted(pretrain.TEACHER_PRESETS),
        help="teacher presets to compare (default: the preset's)",
    )
    f.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    teacher_log = logging.getLogger("surgvista.models.teacher")
    level = teacher_log.level
    teacher_log.setLevel(logging.ERROR)  # the benchmark's teacher is random on purpose: its warning is noise
    threads = torch.get_num_threads()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        teacher_log.setLevel(level)
        torch.set_num_threads(threads)


def _run(args):
    if args.command == "pretrain":
        return pretrain.main(args)
    rows = []
    for teacher in args.teacher or [None]:
        r = pretrain.flop_split(args.preset, teacher)
        rows.append(r)
        name = teacher or pretrain.PRESETS[args.preset]["teacher"]
        print(
            f"[flops] preset={args.preset} teacher={name}: teacher forward {r['teacher_gflop']:.1f} "
            f"GFLOP/clip, student fwd+bwd {r['student_gflop']:.1f} GFLOP/clip, teacher share "
            f"{100 * r['teacher_share']:.0f} %",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
