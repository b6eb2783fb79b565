"""``TeCNOModule``: causal MS-TCN phase recognition on cached per-frame features."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from surgvista.metrics import PhaseMetrics
from surgvista.models.mstcn import MSTCN

log = logging.getLogger(__name__)

CLASS_WEIGHT_KINDS = ("median_frequency", "none")
STAGE_REDUCTIONS = ("mean", "sum")


def median_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """``median(f) / f_c`` with ``f_c`` = class frame frequency (median over the classes present);
    classes with no frame get weight 1."""
    counts = counts.double()
    present = counts > 0
    if not present.any():
        raise ValueError("median-frequency class weights need at least one annotated training frame")
    freq = counts / counts.sum()
    weights = torch.ones_like(freq)
    weights[present] = freq[present].quantile(0.5) / freq[present]
    return weights.float()


class TeCNOModule(L.LightningModule):
    """MS-TCN over one whole video per batch; weighted cross-entropy on every stage; Adam.

    ``input_dim=None`` takes the feature width from the data module (``feature_dim``) in ``setup``. The class
    weights, ``stage_reduction``, ``loss_on_softmax`` (the reference's double softmax) and the metrics logged
    under ``val/`` and ``test/`` (:class:`~surgvista.metrics.PhaseMetrics` of the last stage) are described in
    ``docs/tecno.md``.

    ``cpu_threads``: on a CPU device, ``torch.set_num_threads`` for the run (process-wide). The MS-TCN's
    convolutions are tiny: with several intra-op threads they get much slower, not faster (the demo trains in
    17 s with 1 thread and in minutes with 2 on busy shared cores). ``None`` leaves the setting alone.
    """

    def __init__(
        self,
        num_classes: int = 7,
        input_dim: int | None = None,
        num_stages: int = 2,
        num_layers: int = 8,
        num_f_maps: int = 32,
        dropout: float = 0.5,
        causal: bool = True,
        lr: float = 7e-5,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        class_weights: str | Sequence[float] = "median_frequency",
        stage_reduction: str = "mean",
        loss_on_softmax: bool = False,
        fps: float = 1.0,
        dataset: str = "cholec80",
        relaxed: bool | str = "auto",
        matlab_compatible: bool = True,
        cpu_threads: int | None = 1,
    ) -> None:
        super().__init__()
        if isinstance(class_weights, str) and class_weights not in CLASS_WEIGHT_KINDS:
            raise ValueError(f"class_weights {class_weights!r} is not a list or one of {CLASS_WEIGHT_KINDS}")
        if not isinstance(class_weights, str) and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values but num_classes is {num_classes}")
        if stage_reduction not in STAGE_REDUCTIONS:
            raise ValueError(f"stage_reduction {stage_reduction!r} is not one of {STAGE_REDUCTIONS}")
        self.save_hyperparameters(logger=False)  # the run logs the whole config once
        weights = torch.ones(num_classes) if isinstance(class_weights, str) else torch.tensor(class_weights).float()
        self.register_buffer("class_weight", weights)
        self.net: MSTCN | None = None
        if input_dim is not None:
            self._build(input_dim)
        self.metrics = torch.nn.ModuleDict(
            {
                stage: PhaseMetrics(
                    num_classes, fps=fps, relaxed=relaxed, matlab_compatible=matlab_compatible, dataset=dataset
                )
                for stage in ("val", "test")
            }
        )

    def _build(self, input_dim: int) -> None:
        hp = self.hparams
        self.net = MSTCN(input_dim, hp.num_classes, hp.num_stages, hp.num_layers, hp.num_f_maps, hp.dropout, hp.causal)
        self.hparams.input_dim = input_dim  # so load_from_checkpoint rebuilds the same network

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        threads = self.hparams.get("cpu_threads")
        if threads and self._trainer is not None and self.trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(int(threads))
        if self.net is None:
            if datamodule is None or not hasattr(datamodule, "feature_dim"):
                raise ValueError("TeCNOModule(input_dim=None) needs a data module with feature_dim")
            self._build(datamodule.feature_dim)
        elif getattr(datamodule, "feature_dim", self.net.input_dim) != self.net.input_dim:
            raise ValueError(f"features are {datamodule.feature_dim}-d but the MS-TCN expects {self.net.input_dim}")
        if self.hparams.class_weights == "median_frequency" and stage == "fit":
            counts = datamodule.class_counts()
            self.class_weight.copy_(median_frequency_weights(counts))
            log.info(
                "class frames %s -> median-frequency weights %s",
                counts.tolist(),
                [round(w, 3) for w in self.class_weight.tolist()],
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-stage logits ``(stages, B, T, C)`` of features ``(B, T, D)``."""
        return self.net(features)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.reshape(-1)
        if not (target >= 0).any():
            return logits.sum() * 0.0  # a video without annotated frames contributes nothing
        losses = []
        for stage_logits in logits:
            x = stage_logits.reshape(-1, stage_logits.shape[-1])
            if self.hparams.loss_on_softmax:
                x = x.softmax(-1)
            losses.append(F.cross_entropy(x, target, weight=self.class_weight, ignore_index=-1))
        total = torch.stack(losses).sum()
        return total / len(losses) if self.hparams.stage_reduction == "mean" else total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch["features"]), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=1)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["features"])
        labels = batch["labels"].reshape(-1)
        self.log(f"{stage}/loss", self._loss(logits, labels), on_epoch=True, batch_size=1, sync_dist=True)
        probs = logits[-1].reshape(-1, logits.shape[-1]).softmax(-1)
        video = batch["video"].reshape(1).expand(labels.shape[0])
        self.metrics[stage].update(probs, labels, video, batch["frames"].reshape(-1))

    def _log_metrics(self, stage: str) -> None:
        metric = self.metrics[stage]
        if self.trainer.sanity_checking:
            metric.reset()
            return
        values = {k: float(v) for k, v in metric.compute().items()}
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "video_accuracy_mean")
        if stage == "test":
            videos = metric.predictions()
            if self.trainer.is_global_zero:
                self.write_predictions(stage, videos, values)
        metric.reset()

    def write_predictions(self, stage: str, videos: dict, values: dict[str, float]) -> None:
        """``<default_root_dir>/<stage>/predictions/<video_id>.txt`` (``Frame<TAB>Phase`` ids, the reference's
        evaluator format, plus the target), ``<stage>/metrics.json`` and the per-video files and intervals."""
        out = Path(self.trainer.default_root_dir) / stage
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        names = self.trainer.datamodule.video_ids(stage)
        for index, v in videos.items():
            rows = ["Frame\tPhase\tTarget"]
            rows += [f"{f}\t{p}\t{t}" for f, p, t in zip(v["frame"], v["prediction"], v["target"])]
            (out / "predictions" / f"{names[index].replace('/', '_')}.txt").write_text("\n".join(rows) + "\n")
        (out / "metrics.json").write_text(json.dumps(values, indent=1))
        log.info("%s: %d prediction files in %s", stage, len(videos), out / "predictions")
        self.write_intervals(out, [names[i] for i in videos], list(videos.values()))

    def write_intervals(self, out: Path, ids: list[str], videos: list[dict]) -> None:
        """``per_video.{json,csv}`` and the bootstrap intervals ``ci.{json,md}`` (1000 video resamples, seed 0)."""
        from surgvista.evaluation.uncertainty import phase_options, write_uncertainty
        from surgvista.metrics.per_video import phase_records

        m = self.metrics["test"]
        preds, targets = [v["prediction"] for v in videos], [v["target"] for v in videos]
        records = phase_records(
            preds, targets, ids, m.num_classes, fps=m.fps, relaxed=m.relaxed, matlab_compatible=m.matlab_compatible,
            dataset=m.dataset,
        )  # fmt: skip
        write_uncertainty(out, "phase", records, phase_options(m.dataset, m.fps, m.relaxed, m.matlab_compatible))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
