"""Deployment export of the online phase models to ONNX and their onnxruntime sessions (the ``onnx`` extra).

``export_onnx`` writes one self-contained ``.onnx`` file atomically with ``torch.onnx.export`` (the dynamo
exporter, opset :data:`DEFAULT_OPSET`; the TorchScript exporter if the dynamo one fails on a model).
``OnnxSession`` runs it on onnxruntime's CPU execution provider. What is exported (docs/streaming_export.md):
the clip classifier (one normalised clip ``(1, 3, T, H, W)`` -> logits) and one step of the causal MS-TCN
(:class:`~surgvista.streaming.mstcn_step.IncrementalMSTCN`: feature and packed states -> logits and new states).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surgvista.models.mstcn import MSTCN
from surgvista.streaming.mstcn_step import IncrementalMSTCN
from surgvista.utils.errors import MissingExtraError, UserError
from surgvista.utils.io import atomic_write

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
CLIP_NAMES = (["clip"], ["logits"])  # input and output names of an exported clip model
STEP_NAMES = (["feature", "state"], ["logits", "state_out"])  # ... and of an exported MS-TCN step
EXTRA_HINT = "pip install 'surgvista[onnx]'"


class OnnxError(UserError, ValueError):
    """An ONNX file that cannot be read or run with the inputs given."""


def _require(module: str):
    """Import an optional module of the ``onnx`` extra, or raise the one-line missing-extra error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"ONNX export needs the optional package {module!r}: {EXTRA_HINT}") from e


def _export(model: nn.Module, inputs: tuple, tmp: Path, opset: int, names: tuple[list[str], list[str]]) -> str:
    """Write ``model`` to ``tmp`` with the dynamo exporter, falling back to the TorchScript one; the one used."""
    _require("onnx")
    input_names, output_names = names
    common = dict(input_names=input_names, output_names=output_names, opset_version=opset)
    try:
        _require("onnxscript")
        program = torch.onnx.export(model, inputs, dynamo=True, external_data=False, verbose=False, **common)
        program.save(str(tmp))
        return "dynamo"
    except MissingExtraError:
        raise
    except Exception as e:  # an operator the dynamo exporter does not cover: the TorchScript exporter
        log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter", type(e).__name__, e)
        torch.onnx.export(model, inputs, str(tmp), dynamo=False, **common)
        return "torchscript"


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` (in eval mode, fixed input shapes of ``example_inputs``) to ``path`` atomically; the file is
    checked with ``onnx.checker`` before it replaces ``path``. Returns ``path``."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    path = Path(path)
    if path.suffix != ".onnx":
        raise OnnxError(f"{path}: an ONNX export needs a path ending in .onnx")
    names = (
        list(input_names or [f"input_{i}" for i in range(len(inputs))]),
        list(output_names) if output_names else None,
    )
    was_training = model.training
    model.eval()

    def write(tmp: Path) -> None:
        with torch.no_grad():
            exporter = _export(model, inputs, tmp, opset, names)
        _require("onnx").checker.check_model(str(tmp))
        log.info("exported %s to %s (opset %d, %s exporter)", type(model).__name__, path, opset, exporter)

    try:
        return atomic_write(path, write)
    finally:
        model.train(was_training)


class OnnxSession:
    """An exported model on onnxruntime's CPU execution provider: ``session(*arrays)`` returns the one output
    array, or a tuple of them when the model has several (inputs are cast to float32 where the model expects it).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise OnnxError(f"{self.path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _feed(self, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise OnnxError(f"{self.path}: expected {len(self.inputs)} inputs, got {len(arrays)}")
        feed = {}
        for spec, array in zip(self.inputs, arrays):
            array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
            if spec.type == "tensor(float)":
                array = array.astype(np.float32, copy=False)
            expected = [d if isinstance(d, int) else None for d in spec.shape]
            if len(expected) != array.ndim or any(e not in (None, n) for e, n in zip(expected, array.shape)):
                raise OnnxError(f"{self.path}: input {spec.name!r} expects shape {spec.shape}, got {array.shape}")
            feed[spec.name] = np.ascontiguousarray(array)
        return feed

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        outputs = self.session.run(self.output_names, self._feed(arrays))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def export_clip_model(
    model: nn.Module, path: str | Path, clip_shape: Sequence[int] | None = None, opset: int = DEFAULT_OPSET
) -> Path:
    """Export a clip model (a ``VideoClassifier``: logits; a TeCNO ``FrameFeatureExtractor``: the feature) for one
    clip ``(1, 3, T, H, W)``: input ``clip``, output ``logits``. ``clip_shape`` defaults to the model's (or its
    ``backbone``'s) ``num_frames`` and ``img_size``."""
    if clip_shape is None:
        net = getattr(model, "backbone", model)
        if not hasattr(net, "num_frames") or not hasattr(net, "img_size"):
            raise OnnxError(f"{path}: {type(net).__name__} has no num_frames/img_size; pass clip_shape (1, 3, T, H, W)")
        clip_shape = (1, 3, net.num_frames, net.img_size, net.img_size)
    example = torch.zeros(tuple(clip_shape))
    return export_onnx(model, example, path, opset, *CLIP_NAMES)


def export_mstcn_step(model: MSTCN | IncrementalMSTCN, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export one step of a causal MS-TCN (batch 1): inputs ``feature``, ``state``; outputs ``logits``,
    ``state_out`` (see :class:`~surgvista.streaming.mstcn_step.IncrementalMSTCN`)."""
    step = model if isinstance(model, IncrementalMSTCN) else IncrementalMSTCN(model)
    example = (torch.zeros(1, step.mstcn.input_dim), step.initial_state())
    return export_onnx(step, example, path, opset, *STEP_NAMES)


class OnnxMSTCNStream:
    """An exported MS-TCN step run along one video: ``push(feature (D,) or (1, D)) -> logits (num_classes,)``,
    keeping the state between calls; ``reset()`` starts a new video."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.session = OnnxSession(path, threads)
        shapes = {spec.name: spec.shape for spec in self.session.inputs}
        if set(shapes) != set(STEP_NAMES[0]):
            raise OnnxError(f"{path}: inputs {sorted(shapes)}; expected an MS-TCN step with inputs {STEP_NAMES[0]}")
        self.state_shape = tuple(shapes["state"])
        self.reset()

    def reset(self) -> None:
        """Zeros: the state before a video's first frame."""
        self.state = np.zeros(self.state_shape, np.float32)

    def push(self, feature: np.ndarray) -> np.ndarray:
        """The logits at the new frame, given its feature."""
        logits, self.state = self.session(np.asarray(feature, np.float32).reshape(1, -1), self.state)
        return logits[0]

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        """:meth:`push` of a torch feature ``(D,)`` (the interface of ``streaming.mstcn.MSTCNStream``)."""
        return torch.from_numpy(self.push(feature.detach().cpu().numpy()))
