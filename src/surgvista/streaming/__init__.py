"""Online (streaming) phase recognition: :class:`~surgvista.streaming.stream.PhaseStream` (docs/streaming.md)."""

from surgvista.streaming.stream import PhaseStream, Prediction, StreamError

__all__ = ["PhaseStream", "Prediction", "StreamError"]
