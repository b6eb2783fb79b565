"""GPU tests (``pytest -m gpu``, run by ``make gpu-check``): they skip when CUDA is absent.

bf16 fit through train.py (SurgVISTA and V-JEPA), SDPA dispatch to fused kernels, torch.compile on CUDA, FSDP2 (DCP
save + resume) and FSDP1 at world size 1, a checkpoint written on the GPU loaded on the CPU, the V-JEPA loss on CUDA
against the CPU, and streaming phase predictions on CUDA against the CPU.
"""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from helpers import compose, run_script, small_demo_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

GPU_FIT = ["trainer=gpu", "trainer.precision=bf16-mixed", "data.num_workers=2", "data.pin_memory=true"]


def losses(run_dir) -> list[float]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, demo_root):
    out = tmp_path_factory.mktemp("gpu_run")
    proc = run_script("train.py", "experiment=demo", *small_demo_overrides(demo_root), *GPU_FIT, f"hydra.run.dir={out}")
    return out, proc.stdout + proc.stderr


def test_demo_fit_on_gpu_in_bf16(gpu_run):
    out, log = gpu_run
    assert "GPU available: True (cuda), used: True" in log
    assert (out / "checkpoints" / "last.ckpt").is_file()
    values = losses(out)
    assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)


def test_checkpoint_written_on_gpu_loads_on_cpu(gpu_run):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out, _ = gpu_run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    cfg = OmegaConf.load(out / "config.yaml")
    module = instantiate(cfg.model, _convert_="all")
    module.load_state_dict(ckpt["state_dict"])
    s = module.student.eval()
    clip = torch.randn(1, 3, s.num_frames, s.img_size, s.img_size)
    mask = module.masking(1, s.token_grid, clip.device, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, pixel_pred = s(clip, mask)
    assert torch.isfinite(pixel_pred).all()


@pytest.mark.parametrize("kernel", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_sdpa_runs_fused_kernel_in_bf16_and_equals_eager(kernel):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from surgvista.layers.vit import attention

    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(4, 12, 197, 64, device="cuda", generator=g) for _ in range(3))
    ref = attention(q.double(), k.double(), v.double(), "eager")
    with sdpa_kernel(getattr(SDPBackend, kernel)):  # only this kernel: raises if it cannot run the inputs
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "sdpa")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2
    eager = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "eager")
    assert rel_err(eager, ref) < 1e-2


def test_default_sdpa_dispatch_in_bf16_uses_a_fused_kernel():
    from torch.profiler import ProfilerActivity, profile

    from surgvista.layers.vit import attention

    q = torch.randn(8, 12, 197, 64, device="cuda", dtype=torch.bfloat16)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        attention(q, q, q, "sdpa")
        torch.cuda.synchronize()
    names = " ".join(e.key for e in prof.key_averages()).lower()
    assert re.search(r"flash|fmha|efficient|cudnn", names), names[:2000]


def test_compiled_student_on_cuda_equals_eager_in_bf16():
    from surgvista.bench.pretrain import seeded_student
    from surgvista.layers.masking import MaskGenerator

    s = seeded_student("tiny", "tiny", "sdpa").cuda().eval()
    clip = torch.randn(2, 3, s.num_frames, s.img_size, s.img_size, device="cuda")
    mask = MaskGenerator("tube", 0.75)(2, s.token_grid, clip.device, torch.Generator("cuda").manual_seed(0))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = [t.float() for t in s(clip, mask)]
        for blk in [m for n, m in s.named_modules() if n.rsplit(".", 2)[-2:-1] == ["blocks"]]:
            blk.compile()
        compiled = [t.float() for t in s(clip, mask)]
    for a, b in zip(compiled, eager):
        assert torch.isfinite(a).all() and rel_err(a, b) < 2e-2


def test_fsdp2_single_gpu_bf16_dcp_save_and_resume(demo_root, tmp_path):
    common = [
        "experiment=demo",
        *small_demo_overrides(demo_root),
        *GPU_FIT,
        "trainer=fsdp2",
        "trainer.devices=1",
        "trainer.strategy.save_distributed_checkpoint=true",
    ]
    run_script("train.py", *common, f"hydra.run.dir={tmp_path / 'a'}")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file(), "expected a sharded DCP checkpoint folder"
    proc = run_script(
        "train.py", *common, "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    resumed = losses(tmp_path / "b")
    assert len(resumed) == 3 and all(math.isfinite(v) for v in resumed)  # only epoch 2's three steps


def test_fsdp1_single_gpu_fit_writes_a_single_device_checkpoint(demo_root, tmp_path):
    run_script(
        "train.py",
        "experiment=demo",
        *small_demo_overrides(demo_root),
        *GPU_FIT,
        "trainer=fsdp",
        "trainer.devices=1",
        f"hydra.run.dir={tmp_path}",
    )
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(type(v) is torch.Tensor for v in state.values())
    assert all(math.isfinite(v) for v in losses(tmp_path))


def test_teacher_in_pure_bf16_is_as_close_to_fp32_as_autocast():
    from surgvista.models.teacher import ImageTeacher

    video = torch.randn(2, 3, 4, 112, 112, device="cuda")
    ref = ImageTeacher("small", img_size=112).cuda()(video)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = ImageTeacher("small", img_size=112).cuda()(video)
        pure = ImageTeacher("small", img_size=112, dtype="bfloat16").cuda()(video)
    assert pure.dtype == torch.float32 and torch.isfinite(pure).all()
    assert rel_err(pure, ref) < 2 * rel_err(auto, ref) + 1e-2


def test_linear_tubelet_embedding_on_cuda_equals_the_conv3d():
    from surgvista.layers.vit import TubeletEmbed

    embed = TubeletEmbed(224, 16, 2, 16, 768).cuda()
    video = torch.randn(2, 3, 16, 224, 224, device="cuda")
    conv = embed.proj(video).flatten(2).transpose(1, 2)
    assert rel_err(embed(video), conv) < 1e-3  # tf32 matmuls


def test_vjepa_loss_on_cuda_equals_the_cpu_and_bf16_stays_close():
    from hydra.utils import instantiate

    import surgvista  # noqa: F401  (registers the configs' resolvers)

    tiny = ["data.input_size=32", "data.num_frames=4", "model=vjepa_tiny", "model.student.drop_path_rate=0"]
    cfg = compose("demo", *tiny)
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    video = torch.randn(2, 3, 4, 32, 32)

    def latent_loss(device: str, bf16: bool = False) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = module.to(device)._shared_step(video.to(device), None, torch.Generator().manual_seed(0))
        return out["loss_latent"].float().cpu()

    cpu = latent_loss("cpu")
    assert torch.isfinite(cpu) and cpu > 0
    torch.testing.assert_close(latent_loss("cuda"), cpu, rtol=5e-3, atol=1e-5)  # tf32 matmuls at most
    torch.testing.assert_close(latent_loss("cuda", bf16=True), cpu, rtol=5e-2, atol=1e-4)


def test_vjepa_fit_on_gpu_in_bf16_moves_the_ema_target(demo_root, tmp_path):
    run_script(
        "train.py", "experiment=demo", "model=vjepa_tiny", "model.latent.momentum=0.5",
        *small_demo_overrides(demo_root), *GPU_FIT, f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    values = losses(tmp_path)
    assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    pairs = [(v, state[f"latent.target.{k[8:]}"]) for k, v in state.items()
             if k.startswith("student.") and f"latent.target.{k[8:]}" in state]  # fmt: skip
    assert pairs and all(torch.isfinite(t).all() for _, t in pairs)
    assert max(float((s - t).abs().max()) for s, t in pairs) > 0  # the target trails the student


def test_stream_on_cuda_equals_the_cpu_with_and_without_tubelet_reuse():
    import copy

    import numpy as np

    from surgvista.models.classifier import VideoClassifier
    from surgvista.streaming import PhaseStream
    from surgvista.streaming.model import PhaseModel

    torch.manual_seed(0)
    net = VideoClassifier(7, preset="tiny", img_size=64, num_frames=8).eval()
    frames = np.random.default_rng(0).integers(0, 256, (12, 120, 160, 3), dtype=np.uint8)

    def probs(device: str, reuse: bool) -> np.ndarray:
        model = PhaseModel("clip", copy.deepcopy(net), [f"p{i}" for i in range(7)], 1.0, 8, 2, 64)
        stream = PhaseStream(model, device=device, reuse_tubelets=reuse)
        return np.stack([stream.push(frame, float(i)).probs for i, frame in enumerate(frames)])

    cpu = probs("cpu", False)
    np.testing.assert_allclose(probs("cuda", False), cpu, atol=1e-4)
    np.testing.assert_allclose(probs("cuda", True), cpu, atol=1e-4)
