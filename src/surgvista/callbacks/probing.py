"""Probing callbacks: the frozen-probe protocols' head set-up and report (:class:`ProbeCallback`), and the probe
monitor of pre-training (:class:`ProbeMonitor`: k-NN and linear-probe accuracy of the student every N epochs)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from surgvista.data.manifest import read_manifest
from surgvista.metrics.ap import average_precision_per_class
from surgvista.models.probe_grid import ProbeGrid
from surgvista.models.probes import AttentiveProbe, KNNProbe, LinearProbe, ProbeHead
from surgvista.models.zoo import ZooClassifier
from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class ProbeCallback(L.Callback):
    """Builds the probe head for the cached feature width (and fills the k-NN bank) in ``setup``; after the test,
    writes ``<run>/probe.json`` for :mod:`surgvista.evaluation.leaderboard`: backbone, parameters, protocol, dataset,
    the test metrics, their bootstrap intervals (the task module's ``test_ci``) and the extraction throughput."""

    def __init__(self, backbone: str, protocol: str, dataset: str, grid: Mapping | None = None) -> None:
        self.backbone, self.protocol, self.dataset = backbone, protocol, dataset
        self.grid = dict(grid) if grid and grid.get("enabled") else None
        self.selection: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        head, dm = getattr(pl_module, "net", None), trainer.datamodule
        if not isinstance(head, (ProbeHead, ZooClassifier)):
            raise TypeError(f"a probe protocol needs a ProbeHead or ZooClassifier as model.net, got {type(head)}")
        inputs = getattr(dm, "inputs", None)
        if isinstance(head, ZooClassifier):
            if inputs != "video":
                raise ConfigError(f"full fine-tuning (ZooClassifier) needs data.inputs='video', got {inputs!r}")
            return
        if inputs != head.inputs:
            raise ConfigError(f"{type(head).__name__} reads {head.inputs!r} features but data.inputs is {inputs!r}")
        if self.grid and isinstance(head, (LinearProbe, AttentiveProbe)):
            head = pl_module.net = make_grid(head, self.grid, pl_module.hparams.base_lr, pl_module.hparams.weight_decay)
        head.build(dm.feature_dim)
        if isinstance(head, KNNProbe):
            features, targets = dm.train_features()
            head.fit(features, targets)
            log.info("k-NN bank: %d training clips, k=%d", len(features), head.k)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A grid's head: the best on validation, or (no validation split apart from the test one) the recipe's."""
        net, dm = pl_module.net, trainer.datamodule
        if not isinstance(net, ProbeGrid):
            return
        metric = "mAP" if pl_module.multilabel else "top1"
        if dm.independent_val:
            val = grid_scores(net, dm.val_dataloader(), pl_module.device, pl_module.multilabel)
            net.active = int(np.nanargmax(np.array(val, dtype=float)))
            rule = f"val/{metric} (best of {len(net)} heads)"
        else:
            val, net.active = None, net.default
            rule = "none: no validation split apart from the test split, the recipe's head is reported"
        self.selection = {"metric": metric, "rule": rule, "val": val}
        log.info("probe grid: head %d %s selected by %s", net.active, net.settings[net.active], rule)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        meta, net = trainer.datamodule.meta, pl_module.net
        record = {
            "backbone": self.backbone,
            "protocol": self.protocol,
            "dataset": self.dataset,
            "params": net.backbone.num_params() if isinstance(net, ZooClassifier) else meta.get("params"),
            "embed_dim": meta.get("embed_dim"),
            "clips_per_s": meta.get("clips_per_s"),
            "extraction_device": meta.get("device"),
            "cache": str(trainer.datamodule.directory) if trainer.datamodule.frozen else None,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
            "ci": getattr(pl_module, "test_ci", None),  # bootstrap intervals of the headline metrics
        }
        record.update(trainer.datamodule.subset_record() if trainer.datamodule.frozen else {})
        if isinstance(net, ProbeGrid):
            test = grid_scores(net, trainer.datamodule.test_dataloader(), pl_module.device, pl_module.multilabel)
            record["grid"] = grid_record(net, self.selection, test)
        out = Path(trainer.default_root_dir) / "probe.json"
        out.write_text(json.dumps(record, indent=1))
        log.info("probe record: %s", out)


def make_grid(head: ProbeHead, grid: Mapping, base_lr: float, weight_decay: float) -> ProbeGrid:
    """``head`` × every (lr, wd) of ``grid.lrs`` × ``grid.wds`` (lr-major); the default head is the recipe's
    ``(base_lr, weight_decay)`` or the nearest setting (log-lr first)."""
    lrs, wds = [float(v) for v in grid.get("lrs") or []], [float(v) for v in grid.get("wds") or []]
    if not lrs or not wds or min(lrs) <= 0 or min(wds) < 0:
        raise ConfigError(f"probe.grid: expected non-empty lrs (> 0) and wds (>= 0), got lrs={lrs} wds={wds}")
    settings = [(lr, wd) for lr in lrs for wd in wds]
    default = min(
        range(len(settings)),
        key=lambda k: (abs(math.log(settings[k][0] / base_lr)), abs(settings[k][1] - weight_decay)),
    )
    return ProbeGrid(head, settings, default)


@torch.no_grad()
def grid_scores(grid: ProbeGrid, loader, device: torch.device, multilabel: bool) -> list[float]:
    """Every head's score (percent) on ``loader``: top-1 of the annotated samples, or mAP (multi-label)."""
    was_training = grid.training
    grid.eval()
    logits, targets = [], []
    for batch in loader:
        logits.append(grid.forward_all(batch["video"].to(device)).float().cpu())
        targets.append(batch["target"].cpu())
    grid.train(was_training)
    logits, target = torch.cat(logits, 1), torch.cat(targets)
    if multilabel:
        probs = logits.sigmoid().numpy()
        return [float(np.nanmean(average_precision_per_class(target.numpy(), p)) * 100) for p in probs]
    keep = target >= 0
    return [float((lg[keep].argmax(1) == target[keep]).float().mean() * 100) for lg in logits]


def grid_record(grid: ProbeGrid, selection: dict, test: list[float]) -> dict:
    """``probe.json``'s ``grid``: every head's (lr, wd) and scores, the rule and the head reported, a summary."""
    k, metric = grid.active, selection.get("metric", "top1")
    lr, wd = grid.settings[k]
    if selection.get("val") is not None:
        summary = f"{len(grid)} heads, val-selected lr={lr:g} wd={wd:g}"
    else:
        summary = (
            f"{len(grid)} heads, no val: recipe head lr={lr:g} wd={wd:g}; test {metric} {min(test):.1f}-{max(test):.1f}"
        )
    return {
        "size": len(grid),
        "settings": [list(s) for s in grid.settings],
        "selection": selection.get("rule"),
        "selected": k,
        "metric": metric,
        "val": selection.get("val"),
        "test": test,
        "summary": summary,
    }


def probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    linear_steps: int = 200,
    linear_lr: float = 1e-2,
    seed: int = 0,
) -> dict[str, float]:
    """Validation top-1 (percent) of a k-NN and of a full-batch linear probe fitted on ``(train_x, train_y)``."""
    knn = KNNProbe(num_classes, k=k, temperature=temperature)
    knn.fit(train_x, train_y)
    with torch.no_grad():
        knn_top1 = (knn(val_x).argmax(1) == val_y).float().mean().item() * 100
    with seeded(seed):
        linear = LinearProbe(num_classes, input_dim=train_x.shape[1]).to(train_x.device)
    opt = torch.optim.AdamW(linear.parameters(), lr=linear_lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(linear_steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(linear(train_x), train_y).backward()
            opt.step()
    with torch.no_grad():
        linear_top1 = (linear.eval()(val_x).argmax(1) == val_y).float().mean().item() * 100
    return {"knn_top1": knn_top1, "linear_top1": linear_top1}


def manifest_num_classes(manifest: str, label: str) -> int:
    """Classes of ``label`` in a manifest: ``_meta.label_names`` or, without names, the largest id + 1."""
    m = read_manifest(manifest, check_media=False)
    names = (m.meta.get("label_names") or {}).get(label)
    if names:
        return len(names)
    ids = [v for e in m.entries for v in (e.labels.get(label) or []) if isinstance(v, int) and v >= 0]
    if not ids:
        raise ConfigError(f"{manifest}: no per-frame {label!r} labels for the probe monitor")
    return max(ids) + 1


def student_pooled(student: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Mean of a pre-training student's encoder tokens on unmasked clips ``(B, 3, T, H, W)`` → ``(B, D)``."""
    n = math.prod(student.token_grid)
    mask = torch.zeros(video.shape[0], n, dtype=torch.bool, device=video.device)
    return student.forward_encoder(video, mask, 0).float().mean(1)


@contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Gather an FSDP2 root's own parameters for calls outside its ``forward`` (its blocks gather themselves);
    every rank must enter it. A plain module is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


class ProbeMonitor(L.Callback):
    """Representation quality during pre-training (``docs/benchmark.md``): every ``every_n_epochs`` epochs,
    ``probe/knn_top1``, ``probe/linear_top1`` (:func:`probe_accuracy`) and ``probe/extract_s`` on frozen features
    of at most ``max_train``/``max_val`` evenly spaced annotated clips. Off when ``train_manifest`` is null. Every
    rank encodes the same clips; an FSDP2-sharded student is gathered for it (:func:`unsharded`).
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        label: str = "phase",
        every_n_epochs: int = 1,
        sampling_rate: int = 4,
        max_train: int = 256,
        max_val: int = 128,
        batch_size: int = 16,
        k: int = 20,
        temperature: float = 0.07,
        linear_steps: int = 200,
        backend: str = "decord",
    ) -> None:
        if train_manifest and not val_manifest:
            raise ConfigError("probe monitor: train_manifest is set but val_manifest is not (both are needed)")
        if every_n_epochs < 1:
            raise ConfigError(f"probe monitor: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.enabled = bool(train_manifest)
        self.manifests = {"train": train_manifest, "val": val_manifest}
        self.label, self.every, self.sampling_rate = label, every_n_epochs, sampling_rate
        self.limits = {"train": max_train, "val": max_val}
        self.batch_size, self.k, self.temperature, self.linear_steps = batch_size, k, temperature, linear_steps
        self.backend = backend
        self._datasets: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            log.info("probe monitor off: no labelled manifest (callbacks.probe_monitor.train_manifest)")

    def datasets(self, student: nn.Module) -> dict:
        """``{"train": Subset, "val": Subset, "num_classes": int}`` at ``student``'s clip geometry (cached)."""
        from surgvista.data.clip_augment import EvalClipTransform
        from surgvista.data.downstream import DownstreamDataset

        if self._datasets is not None:
            return self._datasets
        classes = manifest_num_classes(self.manifests["train"], self.label)
        out: dict = {"num_classes": classes}
        for split, manifest in self.manifests.items():
            transform = EvalClipTransform(student.img_size)
            ds = DownstreamDataset(
                manifest, self.label, classes, transform, "frame", False, student.num_frames, self.sampling_rate,
                1, self.backend,
            )  # fmt: skip
            keep = torch.linspace(0, len(ds) - 1, min(self.limits[split], len(ds))).round().long().unique()
            out[split] = Subset(ds, keep.tolist())
        self._datasets = out
        return out

    @torch.no_grad()
    def features(self, students: list[nn.Module], split: str, device: torch.device) -> tuple[list, torch.Tensor]:
        """Pooled features of every student on ``split`` (each clip decoded once) and the targets."""
        xs: list[list[torch.Tensor]] = [[] for _ in students]
        ys = []
        for batch in DataLoader(self.datasets(students[0])[split], batch_size=self.batch_size):
            video = batch["video"].to(device)
            for out, student in zip(xs, students):
                out.append(student_pooled(student, video))
            ys.append(batch["target"].to(device))
        return [torch.cat(x) for x in xs], torch.cat(ys)

    def scores(self, train: tuple, val: tuple, seed: int = 0) -> dict[str, float]:
        """:func:`probe_accuracy` of ``(features, targets)`` pairs with this monitor's settings."""
        classes = self._datasets["num_classes"]
        return probe_accuracy(*train, *val, classes, self.k, self.temperature, self.linear_steps, seed=seed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or (trainer.current_epoch + 1) % self.every:
            return
        student = pl_module.student
        was_training, start = student.training, time.perf_counter()
        student.eval()
        bf16 = str(trainer.precision).startswith("bf16")
        try:
            with unsharded(student), torch.autocast(pl_module.device.type, torch.bfloat16, enabled=bf16):
                (train_x,), train_y = self.features([student], "train", pl_module.device)
                (val_x,), val_y = self.features([student], "val", pl_module.device)
        finally:
            student.train(was_training)
        seconds = time.perf_counter() - start
        scores = self.scores((train_x, train_y), (val_x, val_y))
        values = {f"probe/{k}": v for k, v in scores.items()} | {"probe/extract_s": seconds}
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)  # equal on every rank
        log.info("probe monitor (epoch %d): %s", trainer.current_epoch, {k: round(v, 2) for k, v in values.items()})
