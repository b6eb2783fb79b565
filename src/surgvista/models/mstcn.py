"""Causal multi-stage temporal convolutional network (MS-TCN) of TeCNO (phase recognition over frame features).

Architecture, causal padding and receptive field: docs/tecno.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DilatedResidualLayer(nn.Module):
    """``x + Dropout(Conv1x1(ReLU(DilatedConv3(x))))``; causal: left padding ``2·dilation``, none on the right."""

    def __init__(self, dilation: int, channels: int, dropout: float = 0.5, causal: bool = True) -> None:
        super().__init__()
        self.causal, self.dilation = causal, dilation
        self.conv_dilated = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (2 * self.dilation, 0) if self.causal else (self.dilation, self.dilation)
        out = F.relu(self.conv_dilated(F.pad(x, pad)))
        return x + self.dropout(self.conv_1x1(out))


class SingleStage(nn.Module):
    """One MS-TCN stage: ``(B, in_dim, T) -> (B, num_classes, T)`` logits."""

    def __init__(
        self, num_layers: int, num_f_maps: int, in_dim: int, num_classes: int, dropout: float = 0.5, causal: bool = True
    ) -> None:
        super().__init__()
        self.conv_1x1 = nn.Conv1d(in_dim, num_f_maps, 1)
        self.layers = nn.Sequential(
            *(DilatedResidualLayer(2**i, num_f_maps, dropout, causal) for i in range(num_layers))
        )
        self.conv_out = nn.Conv1d(num_f_maps, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.layers(self.conv_1x1(x)))


class MSTCN(nn.Module):
    """Multi-stage TCN over per-frame features.

    ``forward(features (B, T, input_dim))`` returns the logits of every stage, ``(num_stages, B, T, num_classes)``
    (the last stage is the prediction). Stages after the first take the softmax of the previous stage's logits.
    ``receptive_field`` is the number of past frames (including ``t``) one output sees.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        num_stages: int = 2,
        num_layers: int = 8,
        num_f_maps: int = 32,
        dropout: float = 0.5,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if num_stages < 1 or num_layers < 1:
            raise ValueError(f"MSTCN needs num_stages >= 1 and num_layers >= 1, got {num_stages}, {num_layers}")
        self.input_dim, self.num_classes, self.causal = input_dim, num_classes, causal
        self.stages = nn.ModuleList(
            SingleStage(num_layers, num_f_maps, input_dim if s == 0 else num_classes, num_classes, dropout, causal)
            for s in range(num_stages)
        )
        self.receptive_field = 1 + num_stages * 2 * (2**num_layers - 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(f"MSTCN expects features (B, T, {self.input_dim}), got {tuple(features.shape)}")
        x = features.transpose(1, 2)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.softmax(x, dim=1))
            outputs.append(x)
        return torch.stack(outputs).transpose(2, 3)
