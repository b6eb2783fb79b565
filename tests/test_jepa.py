"""The V-JEPA latent-prediction objective: loss against a direct computation, the EMA rule, the checkpoint, the
configs, and each pre-training objective training a few steps with a finite, decreasing loss."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import compose, free_ports
from hydra.utils import instantiate

from surgvista.layers.masking import MaskGenerator
from surgvista.layers.multiblock import BlockSpec, MultiBlockMasks
from surgvista.models.predictor import Predictor
from surgvista.models.student import SurgVISTAStudent
from surgvista.modules.jepa import LatentPrediction
from surgvista.modules.objective import SurgVISTALoss
from surgvista.modules.pretrain import PretrainModule

MASKS = MultiBlockMasks([BlockSpec(2, (0.2, 0.2)), BlockSpec(1, (0.5, 0.5))])


def vjepa_module(**kw) -> PretrainModule:
    torch.manual_seed(0)
    student = SurgVISTAStudent(
        "tiny", img_size=32, num_frames=4, pos_embed="rope", qkv_bias="fused", image_decoder=False,
        pixel_decoder=False, drop_path_rate=0.0,
    )
    latent = LatentPrediction(partial(Predictor, pred_dim=48, depth=2, num_heads=4), MASKS, **kw)
    return PretrainModule(student, None, SurgVISTALoss(), MaskGenerator(), batch_size=2, latent=latent)


@pytest.mark.parametrize("loss_exp", [1.0, 2.0])
def test_latent_loss_equals_a_direct_computation(loss_exp):
    module = vjepa_module(loss_exp=loss_exp)
    latent, student = module.latent, module.student
    with torch.no_grad():  # a target that differs from the student, as after some training
        for p in latent.target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    video = torch.randn(2, 3, 4, 32, 32)
    out = module._shared_step(video, None, torch.Generator().manual_seed(3))
    masks = MASKS(2, student.token_grid, torch.Generator().manual_seed(3))
    h = latent.target.encode(video)
    h = F.layer_norm(h, h.shape[-1:])
    expected = []
    for index, (context, target) in enumerate(masks):
        z = latent.predictor(student.encode(video, context), context, target, index)
        diff = z - h.gather(1, target[..., None].expand(-1, -1, h.shape[-1]))
        expected.append(diff.abs().pow(loss_exp).mean() / loss_exp)
    assert torch.allclose(out["loss_latent"], torch.stack(expected).mean(), atol=1e-6)
    assert torch.allclose(out["loss"], out["loss_latent"])
    assert torch.allclose(out["target_std"], h.reshape(-1, h.shape[-1]).std(dim=0).mean())


def test_ema_update_is_the_momentum_rule_and_skipped_steps_leave_the_target():
    module = vjepa_module(momentum=0.9)
    latent, student = module.latent, module.student
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in latent.target.named_parameters()}
    latent.update_target(student, 0.9, skipped=torch.tensor(1.0))
    assert all(torch.equal(before[n], p) for n, p in latent.target.named_parameters())
    latent.update_target(student, 0.9, skipped=torch.tensor(0.0))
    source = dict(student.named_parameters())
    for name, p in latent.target.named_parameters():
        assert torch.allclose(p, 0.9 * before[name] + 0.1 * source[name], atol=1e-6), name
    assert not any(p.requires_grad for p in latent.target.parameters())


def test_momentum_schedule_and_bad_values():
    latent = LatentPrediction(Predictor, MASKS, momentum=0.99, momentum_end=1.0)
    assert latent.momentum(0, 100) == 0.99 and latent.momentum(50, 100) == pytest.approx(0.995)
    assert latent.momentum(200, 100) == 1.0
    with pytest.raises(ValueError, match="momentum"):
        LatentPrediction(Predictor, MASKS, momentum=1.5)
    with pytest.raises(ValueError, match="loss_exp"):
        LatentPrediction(Predictor, MASKS, loss_exp=0)


def test_checkpoint_holds_target_and_predictor_and_no_decoders_in_the_target():
    module = vjepa_module()
    keys = module.state_dict().keys()
    assert any(k.startswith("latent.target.blocks.0.attn.qkv") for k in keys)
    assert any(k.startswith("latent.predictor.predictor_blocks.0") for k in keys)
    student = SurgVISTAStudent("tiny", img_size=32, num_frames=4, teacher_dim=192)
    latent = LatentPrediction(partial(Predictor, pred_dim=48, depth=1, num_heads=4), MASKS)
    latent.attach(student)
    assert latent.target.decoder_img is None and not hasattr(latent.target, "down_vid")
    target_keys = set(latent.target.state_dict())
    assert target_keys and target_keys <= set(student.state_dict())


def test_no_loss_at_all_is_refused():
    student = SurgVISTAStudent("tiny", img_size=32, num_frames=4, image_decoder=False, pixel_decoder=False)
    with pytest.raises(ValueError, match="no loss"):
        PretrainModule(student, None, SurgVISTALoss(), MaskGenerator(), batch_size=2)


def test_optimiser_trains_the_predictor_but_not_the_target():
    module = vjepa_module()
    params = {id(p) for p in module._trainable_parameters()}
    assert all(id(p) in params for p in module.latent.predictor.parameters())
    assert not any(id(p) in params for p in module.latent.target.parameters())


OBJECTIVES = {
    "surgvista": ["model=surgvista_tiny"],
    "videomae": ["model=videomae", "model.student.preset=tiny", "model.student.pixel_decoder_depth=1"],
    "image_distill": ["model=image_distill", "model.student.preset=tiny", "model.teacher.preset=tiny",
                      "model.teacher.ckpt=null", "model.student.image_decoder_depth=1"],
    "vjepa": ["model=vjepa_tiny"],
    "surgvista_jepa": ["model=surgvista_jepa_tiny"],
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_trains_with_a_finite_decreasing_loss(name, tmp_path):
    cfg = compose("demo", "data.input_size=32", "data.num_frames=4", *OBJECTIVES[name], out=tmp_path)
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    video = torch.randn(2, 3, 4, 32, 32)
    optimizer = torch.optim.AdamW(module._trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(6):  # the same clips and masks every step: the loss must fall
        out = module._shared_step(video, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if module.latent is not None:
            module.latent.update_target(module.student, 0.99)
        losses.append(float(out["loss"].detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], f"{name}: {losses}"


def target_after_three_steps(trainer: str, out, demo_root, port: int | None = None) -> dict[str, torch.Tensor]:
    from helpers import run_script, small_demo_data

    run_script(
        "train.py", "experiment=demo", "model=vjepa_tiny", f"trainer={trainer}", "model.latent.momentum=0.5",
        *small_demo_data(demo_root), "data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "callbacks.probe_monitor=null",
        "callbacks.rich_progress_bar=null", "model.student.drop_path_rate=0", "logger=csv", "print_config=false",
        f"hydra.run.dir={out}", port=port,
    )
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("latent.target.", "student."))}


@pytest.mark.slow
def test_ema_target_is_the_same_under_ddp_and_fsdp2(demo_root, tmp_path):
    """Two ranks with DDP and with FSDP2 (sharded EMA update on the local shards, no gather) end equal."""
    trainers, ports = ("ddp_sim", "fsdp2_cpu"), free_ports(2)  # side by side on the 2-core CI, a port each
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(target_after_three_steps, t, tmp_path / t, demo_root, p) for t, p in zip(trainers, ports)]
    ddp, fsdp2 = (run.result() for run in runs)
    assert ddp.keys() == fsdp2.keys() and any(k.startswith("latent.target.") for k in ddp)
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp2[name], value, atol=2e-5, rtol=1e-4, msg=name)
    moved = max(float((ddp[f"latent.target.{k[8:]}"] - v).abs().max()) for k, v in ddp.items()
                if k.startswith("student.") and f"latent.target.{k[8:]}" in ddp)
    assert moved > 0  # the target trails the student: it moved, but not onto it


def tiny_hf_vjepa(seed: int):
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(seed)
    config = VJEPA2Config(
        patch_size=4, crop_size=16, frames_per_clip=4, tubelet_size=2, hidden_size=48, num_attention_heads=4,
        num_hidden_layers=2, pred_hidden_size=32, pred_num_attention_heads=4, pred_num_hidden_layers=2,
        attn_implementation="eager",
    )
    model = VJEPA2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


INIT_OVERRIDES = [
    "data.input_size=16", "data.num_frames=4", "model.student.patch_size=4", "+model.student.embed_dim=48",
    "+model.student.depth=2", "+model.student.num_heads=4", "model.student.drop_path_rate=0",
    "model.latent.predictor.pred_dim=32", "model.latent.predictor.depth=2", "model.latent.predictor.num_heads=4",
]


def test_init_from_an_hf_folder_continues_from_its_encoder_target_and_predictor(tmp_path):
    hf = tiny_hf_vjepa(0)
    hf.save_pretrained(tmp_path / "hf")
    cfg = compose("demo", "model=vjepa_tiny", *INIT_OVERRIDES, f"model.init_from={tmp_path / 'hf'}", out=tmp_path)
    module = instantiate(cfg.model)
    video = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        expected = hf(video.transpose(1, 2), skip_predictor=True).last_hidden_state
        torch.testing.assert_close(module.student.eval().encode(video), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(module.latent.encode_target(video), expected, atol=1e-5, rtol=0)
    hf_proj = hf.predictor.proj.weight
    torch.testing.assert_close(module.latent.predictor.predictor_proj.weight, hf_proj)


def test_init_from_an_official_pt_loads_the_target_encoder_as_the_target(tmp_path):
    cfg = compose("demo", "model=vjepa_tiny", *INIT_OVERRIDES, out=tmp_path)
    source = instantiate(cfg.model)
    with torch.no_grad():
        for p in source.latent.target.parameters():
            p.add_(0.1)  # the file's target differs from its encoder

    def official(module):  # facebookresearch/vjepa2 app/vjepa/train.py save_checkpoint: DDP + wrapper prefixes
        return {f"module.backbone.{k}": v for k, v in module.state_dict().items()}

    torch.save({"encoder": official(source.student), "target_encoder": official(source.latent.target),
                "predictor": official(source.latent.predictor), "epoch": 3}, tmp_path / "vjepa.pt")
    cfg = compose("demo", "model=vjepa_tiny", *INIT_OVERRIDES, f"model.init_from={tmp_path / 'vjepa.pt'}",
                  "seed=1", out=tmp_path)
    module = instantiate(cfg.model)
    for mine, theirs in ((module.student, source.student), (module.latent.target, source.latent.target),
                         (module.latent.predictor, source.latent.predictor)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    with pytest.raises(Exception, match="needs model.latent"):
        instantiate(compose("demo", "model=surgvista_tiny", "+model.init_from=x.pt", out=tmp_path).model)


def fit_with_monitor(module: PretrainModule):
    import lightning as L
    from torch.utils.data import DataLoader

    from surgvista.callbacks.health import HealthMonitor

    clips = [{"video": torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(i))} for i in range(24)]
    monitor = HealthMonitor(every_n_steps=1, patience=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor],
    )
    trainer.fit(module, DataLoader(clips, batch_size=8))
    return monitor, trainer.callback_metrics


def test_health_monitor_is_quiet_on_a_healthy_vjepa_run_and_fires_on_a_collapsed_target():
    monitor, metrics = fit_with_monitor(vjepa_module(momentum=0.99))
    assert monitor.fired == set() and float(metrics["health/feature_std"]) > 0.01
    assert float(metrics["health/ema_momentum"]) == pytest.approx(0.99)
    collapsed = vjepa_module(momentum=1.0)  # a target that maps every clip to one constant vector, and stays so
    with torch.no_grad():
        collapsed.latent.target.norm.weight.zero_()
        collapsed.latent.target.norm.bias.fill_(0.5)
    monitor, metrics = fit_with_monitor(collapsed)
    assert "feature_std" in monitor.fired and float(metrics["health/feature_std"]) < 1e-6


def test_ema_update_under_bf16_mixed_keeps_an_fp32_finite_target_that_moves():
    import lightning as L
    from torch.utils.data import DataLoader

    module = vjepa_module(momentum=0.5)
    before = {n: p.clone() for n, p in module.latent.target.named_parameters()}
    clips = [{"video": torch.randn(3, 4, 32, 32)} for _ in range(4)]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[],
    )
    trainer.fit(module, DataLoader(clips, batch_size=2))
    target = dict(module.latent.target.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in target.values())
    assert any(not torch.equal(before[n], p) for n, p in target.items())
