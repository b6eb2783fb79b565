"""Heads of the frozen-backbone protocols: linear probe, attentive probe (V-JEPA style) and k-NN.

Each head maps cached backbone features to logits ``(B, num_classes)`` and is the ``net`` of a fine-tuning task
module (:mod:`surgvista.modules.finetune`), so the probes share its losses, metrics and prediction files. The
input width is only known once the features are extracted: ``build(dim)`` creates the layers (called by
:class:`surgvista.callbacks.probing.ProbeCallback` in ``setup``; pass ``input_dim`` to build at once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProbeHead(nn.Module):
    """Shared bits: ``num_classes``, lazy ``build``, no layer-wise decay grouping, ``inputs`` (which features)."""

    inputs = "pooled"  # pooled (B, D) | tokens (B, N, D)

    def __init__(self, num_classes: int, input_dim: int | None = None) -> None:
        super().__init__()
        self.num_classes, self.input_dim = num_classes, None
        if input_dim is not None:
            self.build(input_dim)

    def build(self, dim: int) -> None:
        """Create the layers for ``dim``-wide features (a no-op when already built for that width)."""
        if self.input_dim is not None and self.input_dim != dim:
            raise ValueError(f"{type(self).__name__} was built for {self.input_dim}-d features, got {dim}-d")
        if self.input_dim is None:
            self._build(dim)
            self.input_dim = dim

    def _build(self, dim: int) -> None:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        return set()

    def _check_built(self) -> None:
        if self.input_dim is None:
            raise RuntimeError(f"{type(self).__name__} is not built: call build(feature_dim) first")


class LinearProbe(ProbeHead):
    """Batch norm without affine parameters (feature standardisation, as MAE's linear probe), then a linear layer."""

    def _build(self, dim: int) -> None:
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, self.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        self._check_built()
        return self.head(self.norm(pooled.float()))


def _heads(dim: int, wanted: int) -> int:
    """The largest head count <= ``wanted`` that divides ``dim``."""
    return next(h for h in range(min(wanted, dim), 0, -1) if dim % h == 0)


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block over the tokens: ``x = x + attn(norm(x))``, ``x = x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_attn, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class AttentiveProbe(ProbeHead):
    """Learnable queries cross-attend to the frozen tokens (V-JEPA's attentive pooler), then a linear classifier.

    ``depth - 1`` pre-norm self-attention blocks over the tokens (:class:`SelfAttentionBlock`; SurgMotion's
    ``num_probe_blocks: 4`` is ``depth=4``), then one cross-attention block:
    ``q = query + attn(norm(query), norm(tokens))``, ``q = q + mlp(norm(q))``; the queries are averaged and
    classified. ``num_heads`` (every block's) is lowered to the nearest divisor of the feature width. ``depth=1``
    (the default) is the head without self-attention blocks, with the same parameters and initialisation draws.
    """

    inputs = "tokens"

    def __init__(
        self,
        num_classes: int,
        input_dim: int | None = None,
        num_queries: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        depth: int = 1,
    ) -> None:
        if int(depth) != depth or depth < 1:
            raise ValueError(f"AttentiveProbe: depth must be an integer >= 1 (1 = cross-attention only), got {depth}")
        self.num_queries, self.num_heads, self.mlp_ratio, self.depth = num_queries, num_heads, mlp_ratio, int(depth)
        super().__init__(num_classes, input_dim)

    def _build(self, dim: int) -> None:
        self.query = nn.Parameter(torch.zeros(1, self.num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _heads(dim, self.num_heads), batch_first=True)
        hidden = int(dim * self.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_classes)
        heads = _heads(dim, self.num_heads)  # after the layers above: depth 1 draws exactly as before
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, self.mlp_ratio) for _ in range(self.depth - 1))

    def no_weight_decay(self) -> set[str]:
        return {"query"}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_built()
        tokens = tokens.float()
        for block in self.blocks:
            tokens = block(tokens)
        kv = self.norm_kv(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(self.norm_out(q.mean(1)))


class KNNProbe(ProbeHead):
    """Weighted k-NN on cosine similarity (DINO's rule: votes ``exp(sim / temperature)`` of the ``k`` nearest).

    ``fit(features, targets)`` stores the training bank (class ids, or multi-hot rows when ``multilabel``).
    The output is ``log p`` (single-label: softmax gives ``p`` back) or ``logit(p)`` (multi-label: sigmoid gives
    ``p``), so the task modules' probabilities are the vote shares. No trainable parameters.
    """

    def __init__(
        self,
        num_classes: int,
        input_dim: int | None = None,
        k: int = 20,
        temperature: float = 0.07,
        multilabel: bool = False,
    ) -> None:
        self.k, self.temperature, self.multilabel = k, temperature, multilabel
        super().__init__(num_classes, input_dim)

    def _build(self, dim: int) -> None:
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("bank_targets", torch.zeros(0, self.num_classes))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Store L2-normalised ``features (N, D)`` and their targets (``(N,)`` ids or ``(N, C)`` multi-hot)."""
        self.build(features.shape[1])
        if targets.ndim == 1:
            targets = F.one_hot(targets.long(), self.num_classes)
        self.bank = F.normalize(features.float(), dim=1).to(self.bank.device)
        self.bank_targets = targets.float().to(self.bank.device)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        self._check_built()
        if not len(self.bank):
            raise RuntimeError("KNNProbe has an empty bank: call fit(train_features, train_targets) first")
        sim = F.normalize(pooled.float(), dim=1) @ self.bank.T
        top, idx = sim.topk(min(self.k, len(self.bank)), dim=1)
        weights = (top / self.temperature).exp()
        votes = (weights.unsqueeze(-1) * self.bank_targets[idx]).sum(1) / weights.sum(1, keepdim=True)
        p = votes.clamp(1e-6, 1 - 1e-6)
        return p.log() - (1 - p).log() if self.multilabel else p.log()
