"""``PhaseStream``: causal per-frame phase predictions from frames pushed one at a time (docs/streaming.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from surgvista.streaming.clip import ClipPredictor
from surgvista.streaming.model import PhaseModel, load_phase_model
from surgvista.streaming.mstcn import MSTCNStream
from surgvista.utils.errors import UserError


class StreamError(UserError, RuntimeError):
    """A bad stream: it ends early, a frame is corrupt or of the wrong shape, timestamps go backwards."""


@dataclass
class Prediction:
    """The prediction at one sampled frame (``frame``: its index at the model's rate, as in the manifests)."""

    frame: int
    timestamp: float
    phase: int
    name: str
    probs: np.ndarray
    compute_ms: float = 0.0


FeatureFn = Callable[[np.ndarray], torch.Tensor]


def tecno_features(model: PhaseModel, device: str) -> FeatureFn:
    """The per-frame features of a TeCNO run, computed as its feature cache was (``data.extractor``)."""
    from surgvista.streaming.tecno import FrameFeatures

    settings = (model.config.get("data") or {}).get("extractor")
    if not settings:
        raise StreamError("the TeCNO run's config has no data.extractor: pass feature_fn (a frame -> its feature)")
    return FrameFeatures(settings, device)


class PhaseStream:
    """Push decoded frames (``H×W×3`` uint8, any rate) with their timestamps in seconds; every frame at the
    model's rate (``model.fps``: the manifests' rate of its training data) gets a prediction that uses only the
    frames up to it. ``source_fps`` (when known) picks the frame nearest to each sampling time, as ``eval.py``'s
    readers do (``round(i · source_fps / fps)``); otherwise the first frame at or after it.

    TeCNO checkpoints compute each frame's feature once with their run's extractor (or ``feature_fn``, a frame →
    its feature vector) and step the incremental MS-TCN.
    ``reuse_tubelets`` caches tubelet embeddings across overlapping clips (exact, docs/streaming.md).
    """

    def __init__(
        self,
        checkpoint: str | Path | PhaseModel,
        device: str = "cpu",
        source_fps: float | None = None,
        reuse_tubelets: bool = False,
        feature_fn: FeatureFn | None = None,
        onnx: str | Path | None = None,
    ) -> None:
        self.model = checkpoint if isinstance(checkpoint, PhaseModel) else load_phase_model(checkpoint)
        self.device, self.source_fps = device, source_fps
        self.fps, self.label_names = self.model.fps, self.model.label_names
        self.next_index, self.last_timestamp, self.shape = 0, -float("inf"), None
        session = onnx_model(self.model, onnx, reuse_tubelets) if onnx is not None else None
        if self.model.family == "clip":
            m = self.model
            self.clip = ClipPredictor(
                m.net, m.num_frames, m.sampling_rate, m.input_size, m.eval_views, reuse_tubelets, device, session
            )
        else:
            if feature_fn is None:
                feature_fn = tecno_features(self.model, device)
            self.feature_fn, self.tcn = feature_fn, session or MSTCNStream(self.model.net.to(device))

    def _check(self, frame: np.ndarray, timestamp: float) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise StreamError(f"frame at {timestamp:.3f}s is not an H×W×3 uint8 image (got {what})")
        if self.shape is not None and frame.shape != self.shape:
            raise StreamError(f"frame at {timestamp:.3f}s is {frame.shape}, earlier frames were {self.shape}")
        if not np.isfinite(timestamp) or timestamp < self.last_timestamp:
            raise StreamError(f"timestamp {timestamp} is not after the previous one ({self.last_timestamp})")
        self.shape, self.last_timestamp = frame.shape, timestamp

    def due(self, timestamp: float) -> bool:
        """Whether the frame at ``timestamp`` is the next one at the model's rate."""
        half = 0.5 / self.source_fps if self.source_fps else 0.0
        return timestamp + half + 1e-9 >= self.next_index / self.fps

    def push(self, frame: np.ndarray, timestamp: float, predict: bool = True) -> Prediction | None:
        """Add a decoded frame; a :class:`Prediction` when it is sampled, else ``None``. ``predict=False`` (the
        real-time mode's drop) buffers a sampled frame without running the model on it."""
        self._check(frame, timestamp)
        if not self.due(timestamp):
            return None
        index = self.next_index
        self.next_index += 1
        start = time.perf_counter()
        probs = self.clip.push(frame, predict) if self.model.family == "clip" else self._tecno(frame, predict)
        if probs is None:
            return None
        phase = int(probs.argmax())
        ms = (time.perf_counter() - start) * 1000
        return Prediction(index, timestamp, phase, self.label_names[phase], probs, ms)

    def _tecno(self, frame: np.ndarray, predict: bool) -> np.ndarray | None:
        """The MS-TCN's state must see every frame (a drop saves only the softmax)."""
        feature = torch.as_tensor(self.feature_fn(frame), dtype=torch.float32, device=self.device).reshape(-1)
        logits = self.tcn.step(feature)
        return logits.float().softmax(-1).cpu().numpy() if predict else None


def onnx_model(model: PhaseModel, path: str | Path, reuse_tubelets: bool = False):
    """The online part of ``model`` exported to ``path`` (opset 18) and opened with onnxruntime: the clip classifier
    (an :class:`~surgvista.streaming.onnx.OnnxSession`), or TeCNO's MS-TCN step (its state kept between frames)."""
    from surgvista.streaming.onnx import OnnxMSTCNStream, OnnxSession, export_clip_model, export_mstcn_step

    if reuse_tubelets:
        raise StreamError("--onnx runs the exported clip model whole: it cannot reuse tubelets (drop one option)")
    if model.family == "clip":
        shape = (1, 3, model.num_frames, model.input_size, model.input_size)
        return OnnxSession(export_clip_model(model.net.eval(), path, shape))
    return OnnxMSTCNStream(export_mstcn_step(model.net, path))
