"""Callbacks of the frozen-probe protocols: connect a probe head to its cached features, report the result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from surgvista.models.probes import KNNProbe, ProbeHead

log = logging.getLogger(__name__)


class ProbeCallback(L.Callback):
    """Builds the probe head for the cached feature width (and fills the k-NN bank) in ``setup``; after the test,
    writes ``<run>/probe.json`` for :mod:`surgvista.leaderboard`: backbone, parameters, protocol, dataset, the
    test metrics and the extraction throughput of the cache."""

    def __init__(self, backbone: str, protocol: str, dataset: str) -> None:
        self.backbone, self.protocol, self.dataset = backbone, protocol, dataset

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        head, dm = getattr(pl_module, "net", None), trainer.datamodule
        if not isinstance(head, ProbeHead):
            raise TypeError(f"the probe protocol needs a ProbeHead as model.net, got {type(head).__name__}")
        inputs = getattr(dm, "inputs", None)
        if inputs != head.inputs:
            raise ValueError(f"{type(head).__name__} reads {head.inputs!r} features but data.inputs is {inputs!r}")
        head.build(dm.feature_dim)
        if isinstance(head, KNNProbe):
            features, targets = dm.train_features()
            head.fit(features, targets)
            log.info("k-NN bank: %d training clips, k=%d", len(features), head.k)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        meta = trainer.datamodule.meta
        record = {
            "backbone": self.backbone,
            "protocol": self.protocol,
            "dataset": self.dataset,
            "params": meta.get("params"),
            "embed_dim": meta.get("embed_dim"),
            "clips_per_s": meta.get("clips_per_s"),
            "extraction_device": meta.get("device"),
            "cache": str(trainer.datamodule.directory),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        }
        out = Path(trainer.default_root_dir) / "probe.json"
        out.write_text(json.dumps(record, indent=1))
        log.info("probe record: %s", out)
