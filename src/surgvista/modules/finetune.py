"""Downstream fine-tuning LightningModules.

One base class holds the reference recipe: AdamW (0.9, 0.999, eps 1e-8), weight decay 0.05 except 1-D
tensors/biases/``no_weight_decay()``, timm layer-wise lr decay 0.75, ``lr = base_lr × global_batch / 64``,
per-step linear warm-up from 0 then cosine to ``min_lr`` (scaled the same way), Mixup 0.8 / CutMix 1.0 /
label smoothing 0.1 with ``SoftTargetCrossEntropy`` for single-label tasks, BCE-with-logits for triplets.

Tasks: :class:`PhaseModule` (per-frame phase, online causal clip), :class:`TripletModule` (multi-label
triplets), :class:`ClipModule` (clip-level single label: Cholec80-CVS, SurgicalActions160) and
:class:`FrameCVSModule` (Endoscapes per-frame CVS).

Validation logs ``val/top1`` (frame/clip-level top-1, single-label) or ``val/mAP_ivt`` (triplets); the
selection rule is the checkpoint callback's (``monitor``), see ``docs``/README. ``test`` writes per-video
prediction CSVs, the metric table (Markdown + JSON), the per-video records (``per_video.{json,csv}``) and the
bootstrap intervals of the headline metrics (``ci.{json,md}``, ``surgvista.evaluation.uncertainty``) to
``<output_dir>/<stage>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from surgvista.callbacks.progress import show_on_bar
from surgvista.data.clip_augment import make_mixup, mix_clips
from surgvista.evaluation.predictions import (
    PredictionCollector,
    log_table,
    per_video_labels,
    safe_name,
    write_clip_predictions,
    write_metrics,
    write_prediction_files,
    write_table,
)
from surgvista.evaluation.reconstruction import log_image
from surgvista.models.classifier import VideoClassifier
from surgvista.models.probe_grid import ProbeGrid
from surgvista.modules.grid_optim import GridAdamW
from surgvista.modules.nonfinite import NonFiniteGuardMixin, total_grad_norm
from surgvista.modules.schedule import adamw_warmup_cosine

log = logging.getLogger(__name__)


def source_videos(datamodule, split: str) -> dict[str, str]:
    """``{clip id: source video}`` from the split's manifest ``_meta.same_video_as`` (``{}`` when it has none, or
    when the data module does not expose its manifests, e.g. cached probe features)."""
    for dm in (datamodule, getattr(datamodule, "source", None)):
        dataset = (getattr(dm, "datasets", None) or {}).get(split)
        same = (getattr(dataset, "meta", None) or {}).get("same_video_as")
        if isinstance(same, dict):
            return {clip: "/".join(map(str, v)) if isinstance(v, list) else str(v) for clip, v in same.items()}
    return {}


class FinetuneModule(NonFiniteGuardMixin):
    """Shared recipe; subclasses choose the loss, the metrics and the monitored value.

    Non-finite steps are skipped on the device and counted, as in pre-training (:mod:`surgvista.modules.nonfinite`).
    """

    multilabel = False
    clip_level = False  # one predictions.csv with a row per clip instead of one CSV per video
    record_task = "clip"  # the per-video records behind ci.json: phase | triplet | clip (metrics/per_video.py)
    monitor = "val/top1"

    def __init__(
        self,
        net: VideoClassifier,
        batch_size: int,
        ckpt: str | None = None,
        ckpt_strict: bool = True,
        ckpt_part: str | None = None,
        base_lr: float = 5e-4,
        min_lr: float = 1e-6,
        warmup_epochs: float = 5,
        weight_decay: float = 0.05,
        layer_decay: float = 0.75,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_scale_batch: int = 64,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        label_smoothing: float = 0.1,
        dataset: str = "cholec80",
        fps: float = 1.0,
        relaxed: bool | str = "auto",
        matlab_compatible: bool = True,
        surgmotion_metrics: bool = False,
        output_dir: str | None = None,
        max_consecutive_nonfinite: int = 10,
        nonfinite_check_every: int | None = None,
        ci_resamples: int = 1000,
        ci_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)  # the run logs the whole config once
        self._init_guard(max_consecutive_nonfinite, nonfinite_check_every)
        self.net = net
        self.num_classes = net.num_classes
        self.class_names: list[str] | None = None
        self._backbone_loaded = False
        self.mixup = (
            None if self.multilabel else make_mixup(net.num_classes, mixup, cutmix, label_smoothing=label_smoothing)
        )
        self.metrics = nn.ModuleDict()
        self.test_ci: dict | None = None  # ci.json's metrics of the last test, for the probes' report

    # ------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "label_names", None)
        if names is not None and len(names) != self.num_classes:
            raise ValueError(
                f"the data has {len(names)} classes {list(names)} but model.net.num_classes is {self.num_classes}"
            )
        self.class_names = list(names) if names is not None else None
        if stage == "fit" and self.hparams.ckpt and not self._backbone_loaded:
            self.load_backbone(self.hparams.ckpt)
        for split in ("val", "test"):
            if split not in self.metrics:
                self.metrics[split] = self.make_metrics()
                self.metrics[f"{split}_preds"] = PredictionCollector()
                if not self.multilabel:  # frame/clip-level top-1 (the reference's selection metric)
                    self.metrics[f"{split}_top1"] = MulticlassAccuracy(self.num_classes, average="micro")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The guard's counters, and the data's class names with the weights (``surgvista-export`` writes them as
        ``id2label``)."""
        super().on_save_checkpoint(checkpoint)
        if self.class_names is not None:
            checkpoint["class_names"] = list(self.class_names)

    def load_backbone(self, source: str):
        """Load pre-trained encoder weights into ``net`` (prints the key diff, refuses partial loads)."""
        from surgvista.checkpoints.load import load_backbone

        part = self.hparams.get("ckpt_part")  # V-JEPA checkpoints: target (EMA, default) | student
        report = load_backbone(source, self.net, strict=self.hparams.ckpt_strict, part=part)
        self._backbone_loaded = True
        return report

    def make_metrics(self) -> nn.Module:
        raise NotImplementedError

    def update_metrics(self, metric: nn.Module, probs: torch.Tensor, target: torch.Tensor, batch: dict) -> None:
        """Per-sample keys (video, frame) let the metric classes merge distributed-padding duplicates."""
        metric.update(probs, target, batch["video_index"], batch["frame_index"])

    # ------------------------------------------------------------------------------------ steps
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        if soft is not None:
            return SoftTargetCrossEntropy()(logits, soft)
        if self.hparams.label_smoothing > 0:
            return LabelSmoothingCrossEntropy(self.hparams.label_smoothing)(logits, target)
        return F.cross_entropy(logits, target)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multilabel else logits.float().softmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video, target = batch["video"], batch["target"]
        soft = None
        if self.mixup is not None:
            video, soft = mix_clips(self.mixup, video, target)
        logits = self(video)
        if logits.ndim == 3:  # a probe grid's (K, B, C): K × the loss of the K·B rows = the sum of the heads'
            loss = len(logits) * self.loss_fn(
                logits.flatten(0, 1), _tile(target, len(logits)), _tile(soft, len(logits))
            )
            shown = loss / len(logits)  # losses, and the heads share no parameter: each gets its own gradient
        else:
            loss = shown = self.loss_fn(logits, target, soft)
        self._remember_loss(loss)
        self.log("train/loss", shown.detach(), on_step=True, on_epoch=True, batch_size=video.shape[0])
        show_on_bar(self, loss=shown.detach(), lr=max(g["lr"] for g in self.optimizers().param_groups))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        self._guard_step(optimizer, total_grad_norm(grads) if grads else None)

    def _eval_step(self, batch: dict, split: str) -> None:
        video, target = batch["video"], batch["target"]
        if video.ndim == 6:  # (B, V, C, T, H, W): average the probabilities of the views
            b, v = video.shape[:2]
            probs = self.probabilities(self(video.flatten(0, 1))).view(b, v, -1).mean(1)
        else:
            probs = self.probabilities(self(video))
        # Loss of the (view-averaged) probabilities: CE / BCE, for logging only.
        if self.multilabel:
            loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), target.float())
        else:
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), target)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(video))
        self.update_metrics(self.metrics[split], probs, target, batch)
        self.metrics[f"{split}_preds"].update(batch["index"], batch["video_index"], batch["frame_index"], probs, target)
        if not self.multilabel:
            self.metrics[f"{split}_top1"].update(probs, target)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_metrics(self, split: str) -> dict[str, float]:
        values = {k: float(v) for k, v in self.metrics[split].compute().items()}
        if not self.multilabel:
            values["top1"] = float(self.metrics[f"{split}_top1"].compute()) * 100
            self.metrics[f"{split}_top1"].reset()
        self.metrics[split].reset()
        return values

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for k in ("val", "val_preds", "val_top1"):
                if k in self.metrics:
                    self.metrics[k].reset()
            return
        values = self._epoch_metrics("val")
        self.metrics["val_preds"].reset()
        for k, v in values.items():
            self.log(f"val/{k}", v, prog_bar=f"val/{k}" == self.monitor)

    def on_test_epoch_end(self) -> None:
        values = self._epoch_metrics("test")
        preds = self.metrics["test_preds"].compute()
        self.metrics["test_preds"].reset()
        for k, v in values.items():
            self.log(f"test/{k}", v)
        if self.trainer.is_global_zero:
            self.write_outputs("test", values, preds)

    # ------------------------------------------------------------------------------------ outputs
    def write_outputs(self, split: str, values: dict[str, float], preds: dict) -> None:
        """``<output_dir>/<split>/``: ``predictions/<video>.csv`` (clip-level tasks: ``predictions.csv``) and
        ``metrics.{md,json}``; the table is also printed (once) and sent to the loggers, then the task's figures
        and extra tables (:meth:`write_figures`)."""
        from surgvista.metrics import metrics_table

        dm = self.trainer.datamodule
        out = Path(self.hparams.output_dir or self.trainer.default_root_dir) / split
        ids = dm.video_ids(split)
        if self.clip_level:
            where = write_clip_predictions(out / "predictions.csv", preds, ids, self.class_names)
            count = f"{len(preds['index'])} clips"
        else:
            where = out / "predictions"
            count = f"{len(write_prediction_files(where, preds, ids, self.class_names, self.multilabel))} videos"
        table = metrics_table(values, title=f"{self.hparams.dataset} {split}: {count}")
        write_metrics(out, values, table)
        log_table(self.trainer.loggers, f"{split}/metrics_table", values, table, self.global_step)
        log.info("%s predictions: %s; metrics: %s", split, where, out / "metrics.{md,json}")
        print(table)
        self.write_intervals(out, split, preds)
        self.write_figures(out, split, preds)

    def per_video_records(self, split: str, preds: dict) -> list[dict]:
        """Per-video records (``surgvista.metrics.per_video``) of the predictions: here the annotated samples of
        each video; clips of one source video (the manifest's ``same_video_as``, Cholec80-CVS) form one record, other
        clips one record each."""
        from surgvista.metrics.per_video import clip_records

        ids, target = self.trainer.datamodule.video_ids(split), preds["target"].astype(np.int64)
        same = source_videos(self.trainer.datamodule, split)
        keep = target >= 0
        units = [same.get(ids[int(v)], ids[int(v)]) for v in preds["video"][keep]]
        return clip_records(preds["probs"][keep], target[keep], units)

    def write_intervals(self, out: Path, split: str, preds: dict) -> None:
        """``per_video.{json,csv}`` and ``ci.{json,md}`` (``ci_resamples`` video resamples, seed ``ci_seed``)."""
        from surgvista.evaluation.uncertainty import phase_options, write_uncertainty

        records = self.per_video_records(split, preds)
        if not records:
            return
        hp = self.hparams
        options = {}
        if self.record_task == "phase":
            options = phase_options(hp.dataset, hp.fps, self.metrics[split].relaxed, hp.matlab_compatible)
        doc = write_uncertainty(out, self.record_task, records, options, hp.ci_resamples, hp.ci_seed)
        if split == "test":
            self.test_ci = doc["metrics"]
        print((out / "ci.md").read_text())

    def write_figures(self, out: Path, split: str, preds: dict) -> None:
        """Figures and extra tables of an evaluation under ``out/plots`` (none for this task)."""

    def _save_figure(self, out: Path, key: str, image) -> None:
        name = f"{safe_name(key.split('/', 1)[1])}.png"
        path = log_image(self.trainer.loggers, key, image, 0, out / "plots", filename=name)
        log.info("%s: %s", key, path)

    # ------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        hp = self.hparams
        optimizer_cls = None
        if isinstance(self.net, ProbeGrid):  # each head its own lr (× the schedule) and weight decay
            groups, optimizer_cls = self.net.param_groups(hp.base_lr), GridAdamW
            log.info("probe grid: %d heads (lr, weight decay) %s", len(self.net), self.net.settings)
        else:
            groups = param_groups_layer_decay(
                self.net, hp.weight_decay, self.net.no_weight_decay(), layer_decay=hp.layer_decay
            )
            log.info("layer-wise lr decay %.3g", hp.layer_decay)
        return adamw_warmup_cosine(
            groups, self.trainer, hp.batch_size, hp.base_lr, hp.min_lr, hp.lr_scale_batch, hp.warmup_epochs,
            hp.betas, hp.eps, optimizer_cls,
        )  # fmt: skip


def _tile(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """``x`` repeated ``k`` times along a new leading axis, flattened into the first: ``(k·B, …)``."""
    return None if x is None else x.expand(k, *x.shape).flatten(0, 1)


class PhaseModule(FinetuneModule):
    """Surgical phase recognition: one online causal clip per annotated frame, single label."""

    record_task = "phase"

    def make_metrics(self) -> nn.Module:
        from surgvista.metrics import PhaseMetrics

        hp = self.hparams
        return PhaseMetrics(
            self.num_classes,
            fps=hp.fps,
            relaxed=hp.relaxed,
            matlab_compatible=hp.matlab_compatible,
            dataset=hp.dataset,
            class_names=self.class_names,
            surgmotion=hp.get("surgmotion_metrics", False),
        )

    def per_video_records(self, split: str, preds: dict) -> list[dict]:
        """Phase records of the annotated frames (unrelaxed and, when on, relaxed)."""
        from surgvista.metrics.per_video import phase_records

        hp = self.hparams
        videos = per_video_labels(preds, self.trainer.datamodule.video_ids(split))
        preds_, targets = [p for _, p in videos.values()], [t for t, _ in videos.values()]
        return phase_records(
            preds_, targets, list(videos), self.num_classes, fps=hp.fps, relaxed=self.metrics[split].relaxed,
            matlab_compatible=hp.matlab_compatible, dataset=hp.dataset,
            surgmotion=hp.get("surgmotion_metrics", False),
        )  # fmt: skip

    def write_figures(self, out: Path, split: str, preds: dict) -> None:
        """Per-video phase ribbons (relaxed-correct frames marked), the normalised confusion matrix and the
        per-phase J/P/R/F1 table (``per_phase.{md,json}``, relaxed rows too when relaxation is on)."""
        from surgvista.evaluation.plots import confusion_matrix, phase_ribbon
        from surgvista.metrics.phase import phase_table, relaxation, relaxed_correct

        hp, names = self.hparams, self.class_names or [str(k) for k in range(self.num_classes)]
        videos = per_video_labels(preds, self.trainer.datamodule.video_ids(split))
        relaxed = self.metrics[split].relaxed
        if relaxed:
            rules, window = relaxation(hp.dataset, self.num_classes, hp.fps)
        for vid, (target, pred) in videos.items():
            ok = relaxed_correct(target, pred, rules, window, hp.matlab_compatible) if relaxed else None
            self._save_figure(out, f"{split}/ribbon_{vid}", phase_ribbon(target, pred, names, ok, hp.fps, vid))
        targets, predictions = [t for t, _ in videos.values()], [p for _, p in videos.values()]
        cm = confusion_matrix(np.concatenate(targets), np.concatenate(predictions), names, f"{hp.dataset} {split}")
        self._save_figure(out, f"{split}/confusion_matrix", cm)
        options = {"fps": hp.fps, "matlab_compatible": hp.matlab_compatible, "dataset": hp.dataset}
        for name in ("per_phase", "per_phase_relaxed") if relaxed else ("per_phase",):
            rows = phase_table(predictions, targets, self.num_classes, names, relaxed=name != "per_phase", **options)
            write_table(out, name, rows, f"{hp.dataset} {split}: {name.replace('_', ' ')}", self.trainer.loggers)


class TripletModule(FinetuneModule):
    """Action-triplet recognition (CholecT50 / Prostate21): multi-label, BCE-with-logits, no mixup."""

    multilabel = True
    monitor = "val/mAP_ivt"
    record_task = "triplet"

    def __init__(self, *args, **kwargs) -> None:
        kwargs.update(mixup=0.0, cutmix=0.0, label_smoothing=0.0)
        super().__init__(*args, **kwargs)

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())

    def make_metrics(self) -> nn.Module:
        from surgvista.metrics import CHOLECT50, TripletMetrics

        # The i/v/t component map is CholecT50's; other vocabularies (Prostate21) get mAP_ivt only.
        cmap = CHOLECT50 if self.num_classes == CHOLECT50.num_triplets else None
        return TripletMetrics(self.num_classes, component_map=cmap)

    def per_video_records(self, split: str, preds: dict) -> list[dict]:
        """Per-video AP of every component (``TripletMetrics``' map and null handling)."""
        from surgvista.metrics.per_video import triplet_records

        metric, ids = self.metrics[split], self.trainer.datamodule.video_ids(split)
        videos, targets, probs = [], [], []
        for v in np.unique(preds["video"]):
            rows = np.flatnonzero(preds["video"] == v)
            rows = rows[np.argsort(preds["frame"][rows], kind="stable")]
            videos.append(ids[int(v)])
            targets.append((preds["target"][rows] > 0.5).astype(np.int64))
            probs.append(preds["probs"][rows])
        return triplet_records(targets, probs, videos, metric.component_map, metric.ignore_null)


class ClipModule(FinetuneModule):
    """Clip-level single-label classification (Cholec80-CVS, SurgicalActions160)."""

    top_k = 5
    clip_level = True

    def make_metrics(self) -> nn.Module:
        from surgvista.metrics import ClipMetrics

        return ClipMetrics(self.num_classes, top_k=(1, min(self.top_k, self.num_classes)), class_names=self.class_names)

    def update_metrics(self, metric: nn.Module, probs: torch.Tensor, target: torch.Tensor, batch: dict) -> None:
        metric.update(probs, target, batch["index"])

    def write_figures(self, out: Path, split: str, preds: dict) -> None:
        """Per-class AP bars and the normalised confusion matrix."""
        from surgvista.evaluation.plots import ap_bars, confusion_matrix
        from surgvista.metrics import per_class_ap

        names = self.class_names or [str(k) for k in range(self.num_classes)]
        title = f"{self.hparams.dataset} {split}"
        target = preds["target"].astype(np.int64)
        keep = target >= 0  # unannotated rows (-1) have no class
        probs, target = preds["probs"][keep], target[keep]
        ap = per_class_ap(probs, target)
        self._save_figure(out, f"{split}/per_class_ap", ap_bars(dict(zip(names, ap.tolist())), title))
        cm = confusion_matrix(target, probs.argmax(1), names, title)
        self._save_figure(out, f"{split}/confusion_matrix", cm)


class FrameCVSModule(ClipModule):
    """Endoscapes frame-level CVS: online causal clip per annotated frame, single label (top-1/top-3)."""

    top_k = 3
    clip_level = False
