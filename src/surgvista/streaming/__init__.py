"""Online (streaming) phase recognition: :class:`~surgvista.streaming.stream.PhaseStream` (docs/streaming.md),
deployment export (``onnx.py``, docs/streaming_export.md) and overlay videos (``overlay.py``)."""

from surgvista.streaming.stream import PhaseStream, Prediction, StreamError

__all__ = ["PhaseStream", "Prediction", "StreamError"]
