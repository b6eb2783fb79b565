"""Helpers shared by the tests: reference data, the small demo set, running the entry points."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"  # reference state-dict layouts (copied from the spec)

# A small demo set: 3 videos (2 train, 1 val) of 60-80 frames at 96x80, trained at 64 px.
SMALL_DEMO = {"num_videos": 3, "num_val_videos": 1, "frames_per_video": (60, 80), "size": (96, 80), "seed": 0}


def small_demo_set(root: Path) -> list[str]:
    """Hydra overrides that point a demo data module (pre-training, phase, probe) at the small demo set."""
    return [
        f"data.root={root}",
        f"data.num_videos={SMALL_DEMO['num_videos']}",
        f"data.num_val_videos={SMALL_DEMO['num_val_videos']}",
        "data.video_frames=[60,80]",
        "data.video_size=[96,80]",
    ]


def small_demo_data(root: Path) -> list[str]:
    """:func:`small_demo_set` at 64 px."""
    return [*small_demo_set(root), "data.input_size=64"]


def compose(
    experiment: str, *overrides: str, config: str = "train", out: Path | None = None, workers: int = 0
):  # fmt: skip
    """A composed config on CPU with CSV logs and ``workers`` loader workers, outputs under ``out``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    base = ["trainer=cpu", "trainer.devices=1", "logger=csv", "print_config=false", f"data.num_workers={workers}"]
    if out is not None:
        base += [f"paths.output_dir={out}", f"paths.work_dir={out}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config, overrides=[f"experiment={experiment}", *base, *overrides])


def small_demo_overrides(root: Path) -> list[str]:
    """Hydra overrides that point ``experiment=demo`` at the small demo set and keep runs to seconds."""
    return [
        *small_demo_data(root),
        "data.batch_size=2",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "print_config=false",
        "model.recon_every_n_steps=2",
    ]


def exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """The exit status of a command's ``main`` run in-process: 0, 1 (a bad input, one ``error:`` line) or 2 (bad
    usage: the usage text)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports of this host, held together while chosen (runs started side by side)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def script_env(port: int | None = None) -> dict[str, str]:
    """The environment of a script a test runs: offline W&B, full Hydra errors, no warnings; ``port``: its DDP
    rendezvous port (runs started side by side need one each; conftest removes an inherited ``MASTER_PORT``)."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    if port is not None:
        env["MASTER_PORT"] = str(port)
    return env


def run_script(
    script: str, *args: str, cwd: Path = ROOT, check: bool = True, timeout: int = 600, port: int | None = None
):  # fmt: skip
    """Run ``python <script> args`` like a user would; return the CompletedProcess (output captured). ``port``: see
    :func:`script_env`."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=script_env(port),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def tiny_pretrain_module(**kw):
    """A tiny ``PretrainModule`` (32 px, 4 frames, tiny random teacher, tube 0.5, no drop-path) for unit tests."""
    from surgvista.layers.masking import MaskGenerator
    from surgvista.models.student import SurgVISTAStudent
    from surgvista.models.teacher import ImageTeacher
    from surgvista.modules.objective import SurgVISTALoss
    from surgvista.modules.pretrain import PretrainModule

    student = SurgVISTAStudent(
        "tiny", img_size=32, num_frames=4, teacher_dim=192, image_decoder_depth=1, pixel_decoder_depth=1,
        drop_path_rate=0.0,
    )
    teacher = ImageTeacher("tiny", img_size=32, patch_size=16)
    return PretrainModule(
        student, teacher, SurgVISTALoss(), MaskGenerator("tube", 0.5), batch_size=2, warmup_epochs=0, **kw
    )
