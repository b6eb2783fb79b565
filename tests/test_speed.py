"""Speed and scale knobs: attention backends, precision of the targets, checkpointing, compile, teacher every k,
the non-finite check, the FSDP strategy factories and the benchmark."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import ROOT, tiny_pretrain_module
from torch.utils.data import DataLoader

import surgvista.layers.vit as vit
from surgvista.layers.masking import MaskGenerator
from surgvista.layers.vit import Attention, Block, attention, set_attn_backend
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.modules.objective import pixel_targets
from surgvista.modules.pretrain import PretrainModule


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a loaded 2-core machine, OpenMP spinning between 2 threads costs far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_loader(steps: int, batch: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    clips = [{"video": torch.randn(3, 4, 32, 32, generator=g)} for _ in range(steps * batch)]
    return DataLoader(clips, batch_size=batch)


def tiny_trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


# ------------------------------------------------------------------------------------------- attention
def test_eager_and_sdpa_agree_for_student_classifier_and_teacher():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 37, 16).unbind(0)
    torch.testing.assert_close(attention(q, k, v, "eager"), attention(q, k, v, "sdpa"), atol=1e-5, rtol=1e-5)

    student = SurgVISTAStudent("tiny", img_size=32, num_frames=4, teacher_dim=24, drop_path_rate=0.0)
    for m in student.modules():
        if isinstance(m, Attention):
            torch.nn.init.normal_(m.q_bias)
            torch.nn.init.normal_(m.v_bias)
    video, mask = torch.randn(2, 3, 4, 32, 32), torch.tensor([[True, False, True, True] * 2] * 2)
    outs = {b: set_attn_backend(student, b)(video, mask) for b in ("sdpa", "eager")}
    for a, b in zip(outs["sdpa"], outs["eager"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    clf = VideoClassifier(5, "tiny", img_size=32, num_frames=4, attn_backend="eager", head_init_scale=1.0).eval()
    assert all(m.attn_backend == "eager" for m in clf.modules() if isinstance(m, Attention))
    logits = clf(video)
    torch.testing.assert_close(set_attn_backend(clf, "sdpa")(video), logits, atol=1e-5, rtol=1e-5)

    teacher = ImageTeacher("tiny", img_size=32, attn_backend="eager")
    feats = teacher(video)
    teacher.set_attn_backend("sdpa")
    torch.testing.assert_close(teacher(video), feats, atol=1e-5, rtol=1e-5)


def test_flash_attn_request_on_cpu_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown attn_backend 'xformers'"):
        Attention(32, 2, attn_backend="xformers")
    if vit.flash_attn_func is None:
        with pytest.raises(RuntimeError, match="flash-attn package is not installed"):
            SurgVISTAStudent("tiny", img_size=32, num_frames=4, attn_backend="flash_attn")
    # With the package present, CPU or fp32 tensors are refused rather than silently falling back.
    monkeypatch.setattr(vit, "flash_attn_func", lambda q, k, v: q)
    attn = Attention(32, 2, attn_backend="flash_attn")
    with pytest.raises(RuntimeError, match="needs CUDA tensors in fp16/bf16, got torch.float32 on cpu"):
        attn(torch.randn(1, 5, 32))
    teacher = ImageTeacher("tiny", img_size=32, attn_backend="flash_attn")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        teacher(torch.randn(1, 3, 2, 32, 32))


# ------------------------------------------------------------------------------------------- precision
def test_targets_stay_fp32_under_bf16_autocast_while_the_teacher_runs_in_bf16():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32)
    reference = pixel_targets(video, 2, 16)
    module = tiny_pretrain_module()
    seen = []
    module.teacher.vit.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target = pixel_targets(video, 2, 16)
        out = module._shared_step(video, torch.Generator().manual_seed(0))
    assert target.dtype == torch.float32
    torch.testing.assert_close(target, reference, atol=0, rtol=0)
    assert seen == [torch.bfloat16]  # the teacher's matmuls share the autocast region
    assert out["loss"].dtype == out["loss_pixel"].dtype == out["loss_distill"].dtype == torch.float32


# ------------------------------------------------------------------------------------- checkpointing
def test_grad_checkpointing_through_the_module_gives_identical_gradients_decoders_included():
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        module = tiny_pretrain_module(grad_checkpointing=enable)
        s = module.student
        assert s.grad_checkpointing is enable
        assert s.decoder_img.grad_checkpointing is enable and s.decoder_vid.grad_checkpointing is enable
        video = torch.randn(2, 3, 4, 32, 32)
        module._shared_step(video, torch.Generator().manual_seed(0))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None})
    assert any(n.startswith("decoder_img.blocks") for n in grads[0])
    assert any(n.startswith("decoder_vid.blocks") for n in grads[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


# --------------------------------------------------------------------------------------------- compile
def test_compile_flag_compiles_every_block_in_place_and_matches_eager():
    torch.manual_seed(0)
    module = tiny_pretrain_module(compile=True, compile_kwargs={"backend": "aot_eager"})
    video, gen = torch.randn(2, 3, 4, 32, 32), torch.Generator().manual_seed(0)
    mask = MaskGenerator("tube", 0.5)(2, module.student.token_grid, video.device, gen)
    expected = module.student(video, mask)
    keys = list(module.student.state_dict())
    module.configure_model()
    blocks = module._blocks(module.student) + module._blocks(module.teacher)
    assert len(blocks) == 4 + 1 + 1 + 2  # encoder, two decoders, teacher
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert list(module.student.state_dict()) == keys  # in-place compile: checkpoint keys unchanged
    for a, b in zip(module.student(video, mask), expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ teacher every k
class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.image_branch: list[torch.Tensor] = []
        self.encoder: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.image_branch.append(pl_module.student.decoder_img.head.weight.detach().clone())
        self.encoder.append(pl_module.student.blocks[0].attn.qkv.weight.detach().clone())


def test_teacher_every_k_runs_the_teacher_on_every_kth_step_with_k_times_the_weight(monkeypatch):
    torch.manual_seed(0)
    module = tiny_pretrain_module(teacher_every_k=2)
    calls = []
    forward = module.teacher.forward
    monkeypatch.setattr(module.teacher, "forward", lambda video: calls.append(1) or forward(video))
    video = torch.randn(2, 3, 4, 32, 32)
    monkeypatch.setattr(PretrainModule, "global_step", property(lambda self: self._step))
    module._step = 0
    on = module._shared_step(video, torch.Generator().manual_seed(0))
    expected = on["loss_pixel"] + 2 * 0.05 * on["loss_distill"]
    torch.testing.assert_close(on["loss"], expected)
    module._step = 1
    off = module._shared_step(video, torch.Generator().manual_seed(0))
    assert len(calls) == 1 and float(off["loss_distill"]) == 0.0
    torch.testing.assert_close(off["loss"], off["loss_pixel"])

    monkeypatch.undo()
    torch.manual_seed(0)
    module = tiny_pretrain_module(teacher_every_k=2)
    rec = _Recorder()
    tiny_trainer(max_steps=4, callbacks=[rec]).fit(module, synthetic_loader(4))
    rec.image_branch.append(module.student.decoder_img.head.weight.detach())
    rec.encoder.append(module.student.blocks[0].attn.qkv.weight.detach())
    moved = [not torch.equal(a, b) for a, b in zip(rec.image_branch, rec.image_branch[1:])]
    # Steps 1 and 3 skip the teacher: the image branch gets no loss and no update; the encoder always moves.
    assert moved == [True, False, True, False]
    assert all(not torch.equal(a, b) for a, b in zip(rec.encoder, rec.encoder[1:]))


def test_teacher_every_k_must_be_positive():
    with pytest.raises(ValueError, match="teacher_every_k must be >= 1, got 0"):
        tiny_pretrain_module(teacher_every_k=0)


# ------------------------------------------------------------------------------------ non-finite loss
def test_non_finite_steps_are_read_on_the_host_only_every_check_interval(monkeypatch):
    module = tiny_pretrain_module(max_consecutive_nonfinite=1, nonfinite_check_every=3)
    shared = PretrainModule._shared_step

    def poisoned(self, video, generator, block_rng=None):
        out = shared(self, video, generator, block_rng)
        if self.global_step >= 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(PretrainModule, "_shared_step", poisoned)
    # Steps 1 and 2 are bad: the counters stay on the device until the check after step index 2 (global step 3).
    with pytest.raises(FloatingPointError, match="2 optimiser steps in a row up to step 3 had a non-finite"):
        tiny_trainer(max_steps=6, log_every_n_steps=3).fit(module, synthetic_loader(6))


# ------------------------------------------------------------------------------------------ strategies
def test_trainer_configs_build_fsdp_strategies_with_block_wrapping_and_a_replicated_teacher(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block as TimmBlock

    from surgvista.strategies import FSDP2Strategy, TeacherReplicatedFSDPStrategy

    conf = str(ROOT / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        fsdp = compose("train", overrides=["trainer=fsdp"]).trainer.strategy
        fsdp2 = compose("train", overrides=["trainer=fsdp2_cpu"]).trainer.strategy
    strategy = instantiate(fsdp)
    assert isinstance(strategy, TeacherReplicatedFSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {Block, TimmBlock} <= set(policy._module_classes)
    mp = strategy.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert strategy._state_dict_type == "full"

    seen = {}
    monkeypatch.setattr(FSDPStrategy, "_setup_model", lambda self, model: seen.update(self.kwargs) or model)
    module = tiny_pretrain_module()
    strategy._setup_model(module)
    assert seen["ignored_modules"] == [module.teacher]  # replicated, not sharded
    module.teacher.shard = True
    seen.clear()
    strategy.kwargs.pop("ignored_modules")
    strategy._setup_model(module)
    assert "ignored_modules" not in seen

    strategy2 = instantiate(fsdp2)
    assert isinstance(strategy2, FSDP2Strategy) and not strategy2._save_distributed_checkpoint


# ----------------------------------------------------------------------------------------------- bench
def test_bench_prints_both_configurations_and_the_ratio(capsys, tmp_path):
    from surgvista.bench.__main__ import main

    results = main(
        [
            "pretrain",
            "--preset",
            "tiny",
            "--batch",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--compare",
            "eager-fp16",
            "--peak-tflops",
            "1",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    out = capsys.readouterr().out
    assert "[config] preset=tiny batch=1 precision=32 attn=sdpa" in out
    assert "[eager-fp16] preset=tiny batch=1 precision=32 attn=eager" in out
    assert "eager attention in fp32" in out and "[ratio] config / eager-fp16:" in out
    for r in results:
        assert r.clips_per_s > 0 and r.model_tflop_per_step > 0 and r.mfu is not None
        assert r.step_ms == pytest.approx(r.teacher_ms + r.student_ms + r.optimizer_ms, rel=0.5)
    assert (tmp_path / "b.json").is_file()


def test_bench_measures_the_nonfinite_guard_against_checks_off(capsys):
    from surgvista.bench.__main__ import main

    on, off = main(["pretrain", "--preset", "tiny", "--batch", "1", "--steps", "2", "--warmup", "1", "--threads", "1",
                    "--compare", "checks-off"])
    out = capsys.readouterr().out
    assert on.config["nonfinite_check"] and not off.config["nonfinite_check"]
    assert "nonfinite_check=True" in out and "[checks-off]" in out and "[ratio] config / checks-off:" in out


def test_bench_teacher_knobs_change_the_work():
    from surgvista.bench.pretrain import BenchConfig, run

    base = run(BenchConfig(preset="tiny", batch=1, steps=2, warmup=0, device="cpu"))
    knobs = run(
        BenchConfig(
            preset="tiny",
            batch=1,
            steps=2,
            warmup=0,
            device="cpu",
            teacher="small",
            teacher_every_k=2,
            grad_checkpointing=True,
        )
    )
    assert knobs.model_tflop_per_step > base.model_tflop_per_step  # a wider, deeper teacher
    assert any("teacher every 2 steps" in n for n in knobs.notes)


def test_bench_flops_splits_teacher_and_student(capsys):
    from surgvista.bench.__main__ import main

    rows = main(["flops", "--preset", "tiny", "--teacher", "tiny", "small", "--threads", "1"])
    assert rows[1]["teacher_gflop"] > rows[0]["teacher_gflop"] > 0 and 0 < rows[0]["teacher_share"] < 1
    assert "[flops] preset=tiny teacher=small: teacher forward" in capsys.readouterr().out


def test_a_smaller_teacher_preset_sets_the_image_decoder_width():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for preset, width in (("large", 1024), ("base", 768), ("small", 384)):
            cfg = compose("train", overrides=["model=surgvista", f"model.teacher.preset={preset}"])
            assert cfg.model.student.teacher_dim == width
        assert compose("train", overrides=["model=videomae"]).model.student.teacher_dim == 1024
        assert compose("train").model.student.teacher_dim == 192  # the tiny demo teacher


def test_speed_knobs_wire_through_the_config():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [
        "model.grad_checkpointing=true",
        "model.student.attn_backend=eager",
        "model.teacher_every_k=3",
        "model.compile=true",
        "model.compile_kwargs={backend: eager}",
        "data.input_size=32",
        "data.num_frames=4",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = instantiate(cfg.model, _convert_="all")
    s = module.student
    assert s.grad_checkpointing and s.decoder_img.grad_checkpointing and s.decoder_vid.grad_checkpointing
    assert {m.attn_backend for m in module.modules() if isinstance(m, Attention)} == {"eager"}
    assert module.teacher.attn_backend == "eager"  # follows the student
    assert module.hparams.teacher_every_k == 3 and module.hparams.compile_kwargs == {"backend": "eager"}


def test_linear_tubelet_embedding_equals_the_conv3d():
    from surgvista.layers.vit import TubeletEmbed

    torch.manual_seed(0)
    embed = TubeletEmbed(32, 8, 2, 4, 24)
    video = torch.randn(2, 3, 4, 32, 32)
    conv = embed.proj(video).flatten(2).transpose(1, 2)  # what forward() runs on CPU
    torch.testing.assert_close(embed.patchify_linear(video), conv, rtol=1e-5, atol=1e-5)


def test_teacher_dtype_is_validated():
    with pytest.raises(ValueError, match="model.teacher.dtype must be"):
        ImageTeacher("tiny", img_size=32, dtype="int8")
    with pytest.raises(ValueError, match="replicated teacher"):
        ImageTeacher("tiny", img_size=32, dtype="bfloat16", shard=True)
    # on CPU the option is inert: the same features as the autocast teacher
    video = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(ImageTeacher("tiny", img_size=32, dtype="bfloat16")(video),
                               ImageTeacher("tiny", img_size=32)(video))
