"""TeCNO on a stream: each frame's feature computed once, exactly as the feature cache computed it, then one
step of the incremental MS-TCN (:mod:`surgvista.streaming.mstcn`).

The extractor is the run's own (``data.extractor`` of its config, built by
:func:`surgvista.features.frames.build_extractor`): the causal clip of ``clip_len`` frames at ``clip_stride``
ending at the frame (:func:`~surgvista.data.sampling.causal_clip_indices`), each frame resized and normalised once
(:func:`~surgvista.data.transforms.to_normalized_clip` is per frame) and kept in a ring buffer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from surgvista.data.sampling import causal_clip_indices
from surgvista.data.transforms import to_normalized_clip
from surgvista.features.frames import build_extractor, resolve_settings
from surgvista.streaming.clip import FrameRing
from surgvista.utils.errors import ConfigError


class FrameFeatures:
    """``__call__(frame H×W×3 uint8) -> feature (D,)`` of the next frame, as the run's feature cache has it."""

    def __init__(self, settings: Mapping, device: str = "cpu") -> None:
        s = resolve_settings(settings)
        if int(s["frame_stride"]) != 1:
            raise ConfigError(
                f"data.extractor.frame_stride is {s['frame_stride']}: a stream needs features of every frame (1)"
            )
        self.settings, self.device = s, torch.device(device)
        self.extractor = build_extractor(s).to(self.device)
        self.clip_len, self.stride, self.size = int(s["clip_len"]), int(s["clip_stride"]), int(s["input_size"])
        self.dtype = getattr(torch, s["dtype"])
        self.ring = FrameRing((self.clip_len - 1) * self.stride + 1)
        self.count = 0

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        x = to_normalized_clip(torch.from_numpy(np.ascontiguousarray(frame[None])), self.size)  # (3, 1, S, S)
        self.ring.add(self.count, x[:, 0].to(self.device)[None])
        ids = causal_clip_indices(self.count, self.clip_len, self.stride)
        self.count += 1
        clip = self.ring.clip(ids)  # (1, 3, T, S, S)
        return self.extractor(clip)[0].float().cpu().to(self.dtype).float()
