"""The causal MS-TCN of a live stream, one frame at a time at constant cost: :class:`MSTCNStream` keeps the packed
layer states of :class:`~surgvista.streaming.mstcn_step.IncrementalMSTCN` (each causal dilated layer's last
``2·dilation`` inputs) between frames, so :meth:`MSTCNStream.step` equals :class:`~surgvista.models.mstcn.MSTCN` run
on the whole prefix (tests/test_streaming.py checks it to 1e-5)."""

from __future__ import annotations

import torch

from surgvista.models.mstcn import MSTCN
from surgvista.streaming.mstcn_step import IncrementalMSTCN


class MSTCNStream:
    """``step(feature (D,)) -> logits (C,)`` of the last stage at the new frame; needs a causal MS-TCN."""

    def __init__(self, net: MSTCN) -> None:
        self.step_module = IncrementalMSTCN(net)
        self.state = self.step_module.initial_state(device=next(net.parameters()).device)
        self.count = 0

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.step_module(feature[None], self.state)
        self.count += 1
        return logits[0]
