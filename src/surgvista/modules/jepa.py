"""The V-JEPA latent-prediction objective: predict an EMA target encoder's features of the hidden tokens.

For every mask set ``m`` (:class:`~surgvista.layers.multiblock.MultiBlockMasks`) with context ids ``c`` and target
ids ``t``::

    h   = LN(target_encoder(video))                       # full clip, no gradient, LayerNorm without affine
    z_m = predictor(encoder(video, keep=c), c, t, m)       # the context encoder sees only its tokens
    loss_latent = mean_m mean(|z_m − h[t]|^p) / p          # p = loss_exp (1: L1, V-JEPA 2's default)

After every optimiser step ``target ← m·target + (1 − m)·encoder`` with the momentum ``m`` of the step (linear
from ``momentum`` to ``momentum_end`` over the run; V-JEPA 2: 0.99925 constant). A step the non-finite guard
skipped leaves the target untouched. Equations, defaults and sources: docs/objectives.md.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from surgvista.checkpoints.vjepa import load_vjepa, read_vjepa
from surgvista.layers.masking import take
from surgvista.layers.multiblock import MaskSet, MultiBlockMasks
from surgvista.models.predictor import Predictor

log = logging.getLogger(__name__)

# Parts of a SurgVISTA student that the target encoder does not need (the decoders and their inputs).
DECODER_PARTS = ("down_img", "decoder_img", "mask_token_img", "pos_embed_img",
                 "down_vid", "decoder_vid", "mask_token_vid", "pos_embed_vid")


def encoder_copy(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` without its decoders (the target encoder: only ``encode`` is used)."""
    target = copy.deepcopy(student)
    for name in DECODER_PARTS:
        if hasattr(target, name):
            delattr(target, name)
    target.decoder_img = target.decoder_vid = None
    return target.requires_grad_(False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 ``DTensor`` parameter (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


class LatentPrediction(nn.Module):
    """Predictor, EMA target encoder, multi-block masks and the latent loss (see the module docstring)."""

    def __init__(
        self,
        predictor: Callable[..., Predictor],
        masks: MultiBlockMasks,
        weight: float = 1.0,
        loss_exp: float = 1.0,
        momentum: float = 0.99925,
        momentum_end: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("momentum", momentum), ("momentum_end", momentum_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"model.latent.{name} must be in [0, 1], got {value}")
        if loss_exp <= 0:
            raise ValueError(f"model.latent.loss_exp must be > 0, got {loss_exp}")
        self.make_predictor, self.masks = predictor, masks
        self.predictor: Predictor | None = None
        self.weight, self.loss_exp = weight, loss_exp
        self.momentum_start = momentum
        self.momentum_end = momentum if momentum_end is None else momentum_end
        self.target: nn.Module | None = None

    def attach(self, student: nn.Module) -> None:
        """Build the predictor for ``student``'s width and token grid and the target encoder, a frozen copy of its
        encoder (call once, before loading weights)."""
        self.predictor = self.make_predictor(embed_dim=student.embed_dim, token_grid=student.token_grid)
        self.target = encoder_copy(student)

    def momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum at optimiser step ``step`` of ``total_steps`` (linear from start to end)."""
        frac = min(1.0, step / max(1, total_steps))
        return self.momentum_start + frac * (self.momentum_end - self.momentum_start)

    @torch.no_grad()
    def encode_target(self, video: torch.Tensor) -> torch.Tensor:
        """Target-encoder features of the full clip ``(B, N, D)``, fp32, before the LayerNorm of the loss."""
        self.target.eval()
        h = self.target.encode(video).float()
        if hasattr(self.target, "reshard"):  # FSDP2 keeps a root unsharded after forward (no backward here)
            self.target.reshard()
        return h

    def targets(self, video: torch.Tensor) -> torch.Tensor:
        """LayerNormed target-encoder features of the full clip ``(B, N, D)`` (fp32)."""
        h = self.encode_target(video)
        return F.layer_norm(h, (h.shape[-1],))

    def forward(
        self, student: nn.Module, video: torch.Tensor, masks: list[MaskSet]
    ) -> dict[str, torch.Tensor]:
        """``loss_latent`` and the std of its targets (``target_std``) for ``video`` under ``masks``."""
        h = self.targets(video)
        losses = []
        for index, (context, target) in enumerate(masks):
            z = student.encode(video, context)
            pred = self.predictor(z, context, target, index).float()
            diff = (pred - take(h, target)).abs()
            losses.append(diff.pow(self.loss_exp).mean() / self.loss_exp)
        # Mask tokens of unused mask-set indices join with weight 0: DDP needs every parameter in the graph.
        unused = [t.sum() for i, t in enumerate(self.predictor.mask_tokens) if i >= len(masks)]
        loss = torch.stack(losses).mean() + 0.0 * sum(unused)
        return {"loss_latent": loss, "target_std": h.flatten(0, 1).std(dim=0).mean()}  # per dimension, all tokens

    @torch.no_grad()
    def update_target(self, student: nn.Module, momentum: float, skipped: torch.Tensor | None = None) -> None:
        """``target ← m·target + (1 − m)·student`` on the local shards; no update where ``skipped`` is 1."""
        names = dict(student.named_parameters())
        pairs = [(local(p), local(names[n])) for n, p in self.target.named_parameters()]
        tgt = [t for t, _ in pairs]
        delta = torch._foreach_sub([s.detach() for _, s in pairs], tgt)
        weight = torch.tensor(1.0 - momentum, device=tgt[0].device)
        if skipped is not None:
            weight = weight * (1.0 - skipped.to(weight.device, torch.float32))
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(tgt, delta)


def init_from_vjepa(path: str, student: nn.Module, latent: LatentPrediction) -> None:
    """Continue from V-JEPA 2 weights (an HF ``VJEPA2Model`` folder or the official ``.pt``): the encoder into the
    student's encoder, the target encoder (or the encoder, where the file has none) into the target and the
    predictor into the predictor, each strictly (a key that does not fit is an error naming it); reports logged."""
    weights = read_vjepa(path, img_size=student.img_size, num_frames=student.num_frames)
    encoder = encoder_copy(student)  # encoder keys only: the student's decoders (if any) stay as initialised
    reports = load_vjepa(weights, encoder, latent.predictor)
    student.load_state_dict(encoder.state_dict(), strict=False)
    part = "target_encoder" if weights.target_encoder is not None else "encoder"
    reports["target"] = load_vjepa(weights, latent.target, part=part)[part]
    for name, report in reports.items():
        log.info("V-JEPA init (%s):\n%s", name, report)
