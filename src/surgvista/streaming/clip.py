"""The online clip classifier on a stream: a ring buffer of transformed frames and the causal clip of each frame.

Each frame is normalised and resized once (:class:`~surgvista.data.clip_augment.EvalClipTransform` on that frame
alone: both steps are per frame, so a clip of buffered frames equals the transform of the clip). The clip ending
at frame ``t`` is :func:`~surgvista.data.sampling.causal_clip_indices` (the start padding included), as in
``eval.py``. Optionally the tubelet embeddings are cached by the frames they cover (exact: positions are added
after the embedding, and a tubelet of the same frames gives the same tokens in every clip).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from surgvista.data.clip_augment import EvalClipTransform
from surgvista.data.sampling import causal_clip_indices
from surgvista.layers.vit import TubeletEmbed, run_blocks
from surgvista.models.classifier import VideoClassifier


class FrameRing:
    """The last ``size`` transformed frames, addressed by their stream index."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.frames: OrderedDict[int, torch.Tensor] = OrderedDict()

    def add(self, index: int, frame: torch.Tensor) -> None:
        self.frames[index] = frame
        while len(self.frames) > self.size:
            self.frames.popitem(last=False)

    def clip(self, indices: list[int]) -> torch.Tensor:
        """``(views, 3, T, S, S)`` of buffered frames ``indices``."""
        return torch.stack([self.frames[i] for i in indices], dim=2)


class ClipPredictor:
    """Per-frame phase probabilities of a :class:`VideoClassifier` fine-tuned on causal clips."""

    def __init__(
        self,
        net: VideoClassifier,
        num_frames: int,
        sampling_rate: int,
        input_size: int,
        views: list[str],
        reuse_tubelets: bool = False,
        device: str = "cpu",
        onnx: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.net, self.num_frames, self.rate, self.device = net.to(device).eval(), num_frames, sampling_rate, device
        self.onnx = onnx  # an exported clip model (streaming.onnx.OnnxSession) run instead of the network
        self.transform = EvalClipTransform(input_size, views)
        self.ring = FrameRing((num_frames - 1) * sampling_rate + 1)
        self.reuse = reuse_tubelets
        self.tubelets: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.count, self.hits, self.misses = 0, 0, 0
        # the clip of frame t shares all but one tubelet with the clip of frame t - 2s: keep the last 2s + 2 clips'
        self.cache_size = (2 * sampling_rate + 2) * num_frames

    def _transform(self, frame: np.ndarray) -> torch.Tensor:
        x = self.transform(frame[None])  # (3, 1, S, S) or (V, 3, 1, S, S)
        x = x if x.ndim == 5 else x[None]
        return x[:, :, 0].to(self.device)

    def _embed(self, clip: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Patch embedding of the clip; with reuse, one tubelet at a time, cached by its frame ids."""
        embed = self.net.patch_embed
        if not self.reuse:
            return embed(clip)
        frame_level = not isinstance(embed, TubeletEmbed)  # FrameEmbed: a Conv2d per frame
        step = 1 if frame_level else embed.tubelet_size
        parts = []
        for k in range(0, len(ids), step):
            key = tuple(ids[k : k + step])
            self.hits += key in self.tubelets
            if key not in self.tubelets:
                self.misses += 1
                tub = clip[:, :, k : k + step]
                x = embed.proj(tub[:, :, 0]) if frame_level else embed.proj(tub)
                self.tubelets[key] = x.flatten(2).transpose(1, 2)
            parts.append(self.tubelets[key])
        while len(self.tubelets) > self.cache_size:
            self.tubelets.popitem(last=False)
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def push(self, frame: np.ndarray, predict: bool = True) -> np.ndarray | None:
        """Add frame ``count``; the probabilities ``(C,)`` of the clip ending at it (views averaged), or ``None``
        with ``predict=False`` (the frame is buffered for later clips, the model does not run)."""
        index = self.count
        self.ring.add(index, self._transform(frame))
        self.count += 1
        if not predict:
            return None
        ids = causal_clip_indices(index, self.num_frames, self.rate)
        clip = self.ring.clip(ids)
        if self.onnx is not None:
            logits = torch.cat([torch.from_numpy(self.onnx(view[None].cpu().numpy())) for view in clip])
            return logits.float().softmax(-1).mean(0).numpy()
        x = self._embed(clip, ids)
        if self.net.pos_embed is not None:
            x = x + self.net.pos_embed.type_as(x)
        logits = self.net.forward_head(run_blocks(self.net.blocks, x, False))
        return logits.float().softmax(-1).mean(0).cpu().numpy()
