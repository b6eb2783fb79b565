"""One step of a trained causal MS-TCN (TeCNO) at a time: the new frame's feature and the cached layer states in,
the step's logits and the new states out; the cost per frame stays constant as the video grows.

Each causal dilated layer (kernel 3, dilation ``d``) at time ``t`` reads its inputs at ``t-2d``, ``t-d`` and ``t``,
so its state is its last ``2d`` inputs (zeros before the first frame: the full model's causal zero padding). All
other convolutions are 1x1, i.e. per frame. The states of every layer of every stage are packed, in order, along
the last axis of one tensor ``(B, num_f_maps, state_length)``, so the step has one state input and one state
output (simple to export to ONNX and to keep between calls). Equal to the full causal model on every prefix
(``tests/test_stream_onnx.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgvista.models.mstcn import MSTCN


class IncrementalMSTCN(nn.Module):
    """A causal :class:`~surgvista.models.mstcn.MSTCN`'s weights run one frame per call.

    ``forward(feature (B, input_dim), state (B, num_f_maps, state_length)) -> (logits (B, num_classes), state)``:
    the last stage's logits at the new frame (``MSTCN(features)[-1][:, t]``) and the updated state. Start from
    :meth:`initial_state`. The wrapped model's weights are shared, not copied; it runs in eval mode (no dropout).
    """

    def __init__(self, mstcn: MSTCN) -> None:
        super().__init__()
        if not isinstance(mstcn, MSTCN):
            raise TypeError(f"IncrementalMSTCN wraps an MSTCN, got {type(mstcn).__name__}")
        if not mstcn.causal:
            raise ValueError("IncrementalMSTCN needs a causal MSTCN (causal=True): an acausal one reads future frames")
        self.mstcn = mstcn.eval()
        self.dilations = [layer.dilation for stage in mstcn.stages for layer in stage.layers]
        self.num_f_maps = mstcn.stages[0].conv_1x1.out_channels
        self.state_length = sum(2 * d for d in self.dilations)

    def train(self, mode: bool = True) -> IncrementalMSTCN:
        """Always eval: a streaming step never applies dropout."""
        return super().train(False)

    def initial_state(self, batch: int = 1, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The state before the first frame: zeros ``(batch, num_f_maps, state_length)``."""
        return torch.zeros(batch, self.num_f_maps, self.state_length, dtype=dtype, device=device)

    def forward(self, feature: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (feature.shape[0], self.num_f_maps, self.state_length)
        if feature.ndim != 2 or feature.shape[1] != self.mstcn.input_dim or tuple(state.shape) != expected:
            raise ValueError(
                f"IncrementalMSTCN expects feature (B, {self.mstcn.input_dim}) and state {expected}, "
                f"got {tuple(feature.shape)} and {tuple(state.shape)}"
            )
        x = feature[:, :, None]  # (B, input_dim, 1)
        new_states, offset = [], 0
        for i, stage in enumerate(self.mstcn.stages):
            h = stage.conv_1x1(x if i == 0 else F.softmax(x, dim=1))
            for layer in stage.layers:
                span = 2 * layer.dilation
                window = torch.cat([state[:, :, offset : offset + span], h], dim=2)  # inputs t-2d .. t
                out = F.relu(layer.conv_dilated(window))  # (B, C, 1): taps at t-2d, t-d, t
                new_states.append(window[:, :, 1:])
                h = h + layer.conv_1x1(out)
                offset += span
            x = stage.conv_out(h)
        return x[:, :, 0], torch.cat(new_states, dim=2)

    @torch.no_grad()
    def run(self, features: torch.Tensor) -> torch.Tensor:
        """Step through ``features (B, T, input_dim)`` from the initial state: the logits ``(B, T, num_classes)``."""
        state = self.initial_state(features.shape[0], features.dtype, features.device)
        steps = []
        for t in range(features.shape[1]):
            logits, state = self(features[:, t], state)
            steps.append(logits)
        return torch.stack(steps, dim=1)
