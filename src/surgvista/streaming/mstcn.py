"""The causal MS-TCN one frame at a time, with cached layer states: constant cost per frame.

A causal dilated layer's output at ``t`` reads its input at ``t - 2d``, ``t - d`` and ``t`` (zeros before the
video start), so each layer keeps its last ``2·d`` inputs; the 1×1 convolutions and the softmax between stages
are per frame. :meth:`IncrementalMSTCN.step` therefore equals :class:`~surgvista.models.mstcn.MSTCN` run on the
whole prefix (tests/test_streaming.py checks it to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surgvista.models.mstcn import MSTCN, DilatedResidualLayer, SingleStage


class LayerState:
    """The last ``2·dilation`` inputs of one :class:`DilatedResidualLayer` (a ring of columns)."""

    def __init__(self, layer: DilatedResidualLayer, channels: int, device: torch.device) -> None:
        self.layer, self.d = layer, layer.dilation
        self.past = torch.zeros(2 * self.d, channels, device=device)
        self.pos = 0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Output at the new frame of input column ``x`` ``(C,)``."""
        n = 2 * self.d
        oldest, middle = self.past[self.pos % n], self.past[(self.pos + self.d) % n]
        window = torch.stack([oldest, middle, x], dim=1)[None]  # (1, C, 3)
        conv = self.layer.conv_dilated
        out = F.relu(F.conv1d(window, conv.weight, conv.bias))
        self.past[self.pos % n] = x
        self.pos += 1
        return x + self.layer.conv_1x1(out)[0, :, 0]


class StageState:
    """One :class:`SingleStage` run frame by frame."""

    def __init__(self, stage: SingleStage, device: torch.device) -> None:
        self.stage = stage
        channels = stage.conv_1x1.out_channels
        self.layers = [LayerState(layer, channels, device) for layer in stage.layers]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage.conv_1x1(x[None, :, None])[0, :, 0]
        for layer in self.layers:
            h = layer.step(h)
        return self.stage.conv_out(h[None, :, None])[0, :, 0]


class IncrementalMSTCN:
    """``step(feature (D,)) -> logits (C,)`` of the last stage at the new frame; needs a causal, eval-mode MS-TCN."""

    def __init__(self, net: MSTCN) -> None:
        if not net.causal:
            raise ValueError("an incremental MS-TCN needs a causal one (model.causal=true)")
        device = next(net.parameters()).device
        self.net = net.eval()
        self.stages = [StageState(stage, device) for stage in net.stages]
        self.count = 0

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        x = feature
        for i, stage in enumerate(self.stages):
            x = stage.step(x if i == 0 else F.softmax(x, dim=0))
        self.count += 1
        return x
