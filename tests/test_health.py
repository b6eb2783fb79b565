"""Collapse monitors: the statistics against direct NumPy computation; the monitor fires on collapsed runs and stays
quiet on healthy ones (a real Trainer on CPU with a fake module); ``stop_on_collapse`` keeps the last good
checkpoint byte-identical; modules without ``health_features`` (fine-tuning) are left alone."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from surgvista.callbacks.health import CollapseError, HealthMonitor, effective_rank, feature_stats
from surgvista.checkpoints.io import SafeCheckpointIO
from surgvista.utils.errors import find_user_error

B, D = 64, 32  # clips and feature width the fake module reports


# ------------------------------------------------------------------------------------------ statistics
def numpy_stats(x: np.ndarray) -> dict[str, float]:
    """The statistics written out directly in float64."""
    b, d = x.shape
    centred = x - x.mean(axis=0)
    sigma = np.linalg.svd(centred, compute_uv=False)
    sigma = sigma[sigma > 1e-9 * np.linalg.norm(x)]
    p = sigma / sigma.sum()
    erank = float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = [unit[i] @ unit[j] for i in range(b) for j in range(b) if i != j]
    return {
        "feature_std": float(np.std(x, axis=0, ddof=1).mean()),
        "effective_rank": erank,
        "effective_rank_fraction": erank / min(b, d),
        "cosine_similarity": float(np.mean(cos)),
    }


@pytest.mark.parametrize("shape", [(2, 5), (6, 4), (7, 9), (16, 3)])
def test_feature_stats_match_numpy(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape) + 0.5  # a common offset: cosines are not ~0
    got = feature_stats(torch.from_numpy(x).to(torch.bfloat16 if shape == (16, 3) else torch.float64))
    want = numpy_stats(torch.from_numpy(x).to(torch.bfloat16).double().numpy() if shape == (16, 3) else x)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_effective_rank_known_matrices():
    v = torch.randn(8)
    rank1 = torch.linspace(-2.0, 3.0, 10)[:, None] * v  # rank 1 after centring too
    assert effective_rank(rank1 - rank1.mean(0)) == pytest.approx(1.0, abs=1e-4)
    flat = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # two equal singular values
    assert effective_rank(flat) == pytest.approx(2.0, abs=1e-5)
    same = torch.randn(1, 16).repeat(5, 1)  # identical clips: no spread at all, not rounding noise's "rank"
    stats = feature_stats(same)
    assert stats["effective_rank"] == 0.0 and stats["feature_std"] < 1e-6
    assert stats["cosine_similarity"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="B >= 2"):
        feature_stats(torch.randn(1, 4))


# ------------------------------------------------------------------------------------------ fake runs
def healthy(step: int) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(step))


def constant(step: int) -> torch.Tensor:
    return torch.ones(B, D)


def rank_one(step: int) -> torch.Tensor:
    """Spread along one direction only (signs mixed: the mean cosine stays near 0)."""
    g = torch.Generator().manual_seed(step)
    return torch.randn(B, 1, generator=g) * torch.randn(1, D, generator=torch.Generator().manual_seed(0))


class FakePretrain(L.LightningModule):
    """A linear layer trained on noise; ``health_features`` and the logged latent loss / target std follow the
    given functions of the optimiser step (the step the monitor sees after the update)."""

    def __init__(self, features: Callable[[int], torch.Tensor], loss=None, target_std=None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.features, self.loss_at, self.std_at = features, loss, target_std
        self.calls: list[int] = []

    def training_step(self, batch, batch_idx):
        step = self.global_step + 1  # the step this update completes
        if self.loss_at is not None:
            self.log("train/loss_latent", float(self.loss_at(step)), on_step=True, on_epoch=True)
            self.log("train/target_std", float(self.std_at(step)), on_step=True, on_epoch=False)
            self.log("train/ema_momentum", 0.996, on_step=True, on_epoch=False)
        return self.layer(batch).pow(2).mean()

    def health_features(self, batch) -> torch.Tensor:
        self.calls.append(self.global_step)
        return self.features(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FineTune(FakePretrain):
    health_features = None  # a fine-tuning module: nothing to monitor


def run(tmp_path, module, monitor, steps=8, raises=None, callbacks=(), **kw) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=CSVLogger(tmp_path, name="logs"),
        enable_progress_bar=False, enable_model_summary=False, plugins=[SafeCheckpointIO()],
        callbacks=[ckpt, monitor, *callbacks], default_root_dir=tmp_path, log_every_n_steps=50, **kw,
    )
    data = DataLoader(torch.randn(2 * steps * kw.get("accumulate_grad_batches", 1), 4), batch_size=2)
    if raises is None:
        trainer.fit(module, data)
    else:
        with pytest.raises(raises) as info:
            trainer.fit(module, data)
        trainer.raised = info.value
    return trainer


def switch(at: int, before, after):
    return lambda step: before(step) if step < at else after(step)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "collapse signal" in
            r.getMessage()]


def logged_rows(tmp_path) -> list[dict]:
    (path,) = (tmp_path / "logs").rglob("metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def test_healthy_run_stays_quiet_and_every_logger_gets_every_check(tmp_path, caplog):
    caplog.set_level(logging.INFO, "surgvista.callbacks.health")
    module = FakePretrain(healthy, loss=lambda s: 2.0 * 0.9**s, target_std=lambda s: 1.0 + 0.01 * (-1) ** s)
    trainer = run(tmp_path, module, HealthMonitor(every_n_steps=1, patience=2), steps=8)
    assert warnings_of(caplog) == [] and "held" not in caplog.text
    assert module.calls == list(range(1, 9))  # once per optimiser step
    metrics = trainer.callback_metrics
    assert float(metrics["health/effective_rank_fraction"]) > 0.5
    assert abs(float(metrics["health/cosine_similarity"])) < 0.1
    assert float(metrics["health/loss_latent"]) == pytest.approx(2.0 * 0.9**8)
    assert float(metrics["health/ema_momentum"]) == pytest.approx(0.996)
    rows = [r for r in logged_rows(tmp_path) if r.get("health/feature_std")]
    assert len(rows) == 8  # every check reached the logger although log_every_n_steps=50
    assert [int(r["step"]) for r in rows] == list(range(8))  # the rows of the batches' own metrics
    assert len(list((tmp_path / "ckpt").glob("epoch=*.ckpt"))) == 8  # checkpoints untouched


@pytest.mark.parametrize(
    "features, fire",
    [
        (constant, ["feature_std", "effective_rank", "cosine_similarity"]),
        (rank_one, ["effective_rank"]),
    ],
    ids=["constant", "rank_one"],
)
def test_collapsed_features_fire_once_per_signal(tmp_path, caplog, features, fire):
    module = FakePretrain(switch(4, healthy, features))
    run(tmp_path, module, HealthMonitor(every_n_steps=1, patience=3), steps=10)
    messages = warnings_of(caplog)
    assert [m.split("'")[1] for m in messages] == fire  # once each, though the collapse lasts 7 checks
    assert all("at step 6:" in m and "docs/objectives.md#monitors" in m for m in messages)  # checks 4, 5, 6
    rank = messages[fire.index("effective_rank")]
    assert f"health/effective_rank_fraction = {0 if features is constant else 1 / D:.4g} < 0.05" in rank


def test_loss_falling_with_target_std_fires_and_stable_targets_do_not(tmp_path, caplog):
    collapsing = FakePretrain(healthy, loss=lambda s: 0.8**s, target_std=lambda s: 0.7**s)
    trainer = run(tmp_path / "a", collapsing, HealthMonitor(every_n_steps=1, patience=2), steps=6)
    (message,) = warnings_of(caplog)
    # window of 2 checks: the ratio is 0.7**2 = 0.49 from step 3 on; 2 checks in a row: fires at step 4
    assert "'target_collapse' at step 4: health/target_std_ratio = 0.49 < 0.5" in message
    assert "latent loss 0.64 -> 0.4096, target std 0.49 -> 0.2401" in message  # steps 2 and 4
    assert float(trainer.callback_metrics["health/target_std_ratio"]) == pytest.approx(0.49)
    caplog.clear()
    learning = FakePretrain(healthy, loss=lambda s: 0.8**s, target_std=lambda s: 1.0 - 0.02 * s)
    run(tmp_path / "b", learning, HealthMonitor(every_n_steps=1, patience=2), steps=6)
    assert warnings_of(caplog) == []


class RecordLast(Callback):
    """The bytes of ``last.ckpt`` as they are on disk when optimiser step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step, self.data = step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            self.data = (str(path), path.read_bytes())


def test_stop_on_collapse_keeps_the_last_good_checkpoint_byte_identical(tmp_path):
    """Collapse from step 4, patience 3: the signal is seen at steps 4 and 5 and fires at step 6. last.ckpt
    (written after step 3) must be the file on disk afterwards, byte for byte, and no later checkpoint exists."""
    before = RecordLast(step=3)
    module = FakePretrain(switch(4, healthy, constant))
    monitor = HealthMonitor(every_n_steps=1, patience=3, stop_on_collapse=True)
    trainer = run(tmp_path, module, monitor, steps=10, raises=CollapseError, callbacks=[before])
    path, data = before.data
    assert Path(path).read_bytes() == data
    assert torch.load(path, weights_only=True)["global_step"] == 3
    steps = sorted(int(p.stem.split("step=")[1]) for p in (tmp_path / "ckpt").glob("epoch=*.ckpt"))
    assert steps == [1, 2, 3]
    message = str(trainer.raised)
    assert "representation collapse at step 6" in message and f"last good checkpoint {path} is kept" in message
    assert find_user_error(trainer.raised) is trainer.raised  # train.py prints it as one `error: ...` line
    assert trainer.checkpoint_callback.save_last is False  # still held: nothing on the exception path writes


def test_a_blip_holds_checkpoints_only_while_it_lasts(tmp_path, caplog):
    """One collapsed check (step 3) with patience 2 neither fires nor stops; only step 3 goes unsaved."""
    blip = FakePretrain(lambda s: constant(s) if s == 3 else healthy(s))
    run(tmp_path, blip, HealthMonitor(every_n_steps=1, patience=2, stop_on_collapse=True), steps=6)
    assert warnings_of(caplog) == [] and "checkpoints held from step 3" in caplog.text
    steps = sorted(int(p.stem.split("step=")[1]) for p in (tmp_path / "ckpt").glob("epoch=*.ckpt"))
    assert steps == [1, 2, 4, 5, 6]


def test_once_per_optimiser_step_under_gradient_accumulation(tmp_path):
    module = FakePretrain(healthy)
    run(tmp_path, module, HealthMonitor(every_n_steps=2), steps=6, accumulate_grad_batches=3)
    assert module.calls == [2, 4, 6]


def test_module_without_health_features_trains_untouched(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, "surgvista.callbacks.health")
    trainer = run(tmp_path, FineTune(healthy), HealthMonitor(every_n_steps=1), steps=3)
    assert trainer.global_step == 3
    assert not any(k.startswith("health/") for k in trainer.callback_metrics)
    assert "has no health_features" in caplog.text


def test_single_clip_batches_are_skipped_with_one_info_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, "surgvista.callbacks.health")
    trainer = run(tmp_path, FakePretrain(lambda s: torch.randn(1, D)), HealthMonitor(every_n_steps=1), steps=3)
    assert caplog.text.count("batches of 1 clip(s)") == 1
    assert not any(k.startswith("health/") for k in trainer.callback_metrics)


def test_state_survives_a_checkpoint_and_bad_settings_are_one_line():
    monitor = HealthMonitor(patience=2)
    monitor.streak["cosine_similarity"], monitor.fired = 2, {"cosine_similarity"}
    monitor.trend.extend([(1.0, 0.5), (0.9, 0.4)])
    other = HealthMonitor(patience=2)
    other.load_state_dict(torch.load(_roundtrip(monitor.state_dict()), weights_only=True))
    assert other.state_dict() == monitor.state_dict()
    with pytest.raises(ValueError, match=r"callbacks.health.max_cosine must be in \[-1.0, 1.0\], got 2"):
        HealthMonitor(max_cosine=2)
    with pytest.raises(ValueError, match="callbacks.health.every_n_steps must be an integer >= 1, got 0"):
        HealthMonitor(every_n_steps=0)


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_on_by_default_in_the_training_config(tmp_path):
    from helpers import compose
    from hydra.utils import instantiate

    cfg = compose("demo", out=tmp_path)
    monitor = instantiate(cfg.callbacks.health)
    assert isinstance(monitor, HealthMonitor) and not monitor.stop_on_collapse
    assert monitor.every_n_steps == 5  # the demo's own interval; 50 elsewhere
    assert compose("pretrain_surgvista", out=tmp_path).callbacks.health.every_n_steps == 50
    defaults = HealthMonitor()
    assert (monitor.min_std, monitor.min_rank_fraction, monitor.max_cosine, monitor.patience) == (
        defaults.min_std, defaults.min_rank_fraction, defaults.max_cosine, defaults.patience)


class RankFeatures(FakePretrain):
    """One clip per rank (rank r: all r + 1), a per-rank latent loss: only gathering gives a 2-clip matrix."""

    def __init__(self) -> None:
        super().__init__(healthy)

    def training_step(self, batch, batch_idx):
        self.log("train/loss_latent", float(self.global_rank + 1), on_step=True, on_epoch=False)
        self.log("train/target_std", 1.0, on_step=True, on_epoch=False)
        return self.layer(batch).pow(2).mean()

    def health_features(self, batch) -> torch.Tensor:
        return torch.full((1, D), float(self.global_rank + 1))


class DumpState(Callback):
    """Each rank writes what it logged and decided to ``<dir>/rank<r>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, HealthMonitor))
        health = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("health/")}
        torch.save({"health": health, "state": monitor.state_dict()}, f"{self.folder}/rank{trainer.global_rank}.pt")


@pytest.mark.slow  # two spawned processes importing the stack: about a minute on a 2-core machine
def test_two_ranks_gather_single_clips_and_decide_alike(tmp_path):
    """A real 2-process gloo run on CPU with one clip per rank: the statistics are those of the gathered 2-clip
    matrix ([1..1], [2..2]: cosine 1, per-dim std 0.707, centred rank 1 of 2), rank 0's latent loss is the one
    logged, and both ranks hold the same monitor state (the cosine signal fired on both)."""
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[HealthMonitor(every_n_steps=1, patience=2), DumpState(str(tmp_path))],
    )
    trainer.fit(RankFeatures(), DataLoader(torch.randn(12, 4), batch_size=2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0] == ranks[1]
    health = ranks[0]["health"]
    assert health["health/cosine_similarity"] == pytest.approx(1.0)
    assert health["health/feature_std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert health["health/effective_rank"] == pytest.approx(1.0) and health["health/effective_rank_fraction"] == 0.5
    assert health["health/loss_latent"] == 1.0  # rank 0's, on both ranks
    assert ranks[0]["state"]["fired"] == ["cosine_similarity"]


def test_features_of_the_wrong_shape_are_one_clear_error(tmp_path):
    module = FakePretrain(lambda s: torch.randn(4, 3, D))  # tokens not pooled
    with pytest.raises(TypeError, match=r"FakePretrain.health_features\(batch\) must return pooled \(B, D\) features, "
                       r"got \(4, 3, 32\)"):
        run(tmp_path, module, HealthMonitor(every_n_steps=1), steps=2)


class NoisyFake(FakePretrain):
    """Training draws from the global RNG every step, and so does ``health_features``."""

    def training_step(self, batch, batch_idx):
        return self.layer(batch + torch.randn_like(batch)).pow(2).mean()

    def health_features(self, batch) -> torch.Tensor:
        return torch.randn(B, D)


def test_the_monitor_does_not_change_training(tmp_path):
    """The same seed with and without the monitor (checking every step, its features drawn from the global RNG)
    gives bit-identical weights: the check runs under a forked RNG and no_grad."""
    weights = []
    for name, callbacks in (("off", []), ("on", [HealthMonitor(every_n_steps=1)])):
        torch.manual_seed(0)
        module = NoisyFake(healthy)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=5, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        )
        trainer.fit(module, DataLoader(torch.randn(10, 4, generator=torch.Generator().manual_seed(1)), batch_size=2))
        weights.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
        assert ("health/feature_std" in trainer.callback_metrics) == (name == "on")
    assert torch.equal(weights[0], weights[1])


def test_a_real_pretraining_module_with_health_features(tmp_path):
    """The tiny ``PretrainModule``'s own ``health_features`` (pooled final-norm features of every token): a random
    network is healthy on every signal (the thresholds leave room for initialisation), nothing warns."""
    from helpers import tiny_pretrain_module

    torch.manual_seed(0)
    module = tiny_pretrain_module()
    clips = [{"video": torch.randn(3, 4, 32, 32)} for _ in range(24)]
    monitor = HealthMonitor(every_n_steps=1, patience=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor],
    )
    trainer.fit(module, DataLoader(clips, batch_size=8))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("health/")}
    assert metrics["health/feature_std"] > 0.01 and metrics["health/effective_rank_fraction"] > 0.05
    assert metrics["health/cosine_similarity"] < 0.999
    assert monitor.fired == set() and not any(monitor.streak.values())
