"""A probe grid: K heads of one protocol, one per (learning rate, weight decay), trained in one pass.

:class:`ProbeGrid` stores the K heads' parameters stacked (every parameter of a
:class:`~surgvista.models.probes.LinearProbe` or :class:`~surgvista.models.probes.AttentiveProbe` with a leading
K axis) and computes all K outputs from one read of the shared input: the linear grid is one batch norm and one
einsum over the ``(K, C, D)`` weight; the attentive grid one score matmul and one weighted sum of the normalised
tokens for every (head, query, attention head) at once, the key/value projections being moved onto the query side,
which is exact (:meth:`ProbeGrid.attentive_all`); attentive heads with self-attention blocks (``depth > 1``)
change the tokens per head, so they run one after the other (:meth:`ProbeGrid.each_head`).
:meth:`ProbeGrid.param_groups` carries each head's lr factor and weight decay for
:class:`surgvista.modules.grid_optim.GridAdamW`, which updates head k as AdamW would with that lr and weight decay.
In training ``forward`` returns ``(K, B, C)``; in evaluation the ``active`` head's ``(B, C)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from surgvista.models.probes import AttentiveProbe, LinearProbe, ProbeHead


def _key(name: str) -> str:
    return name.replace(".", "__")


class ProbeGrid(ProbeHead):
    """``settings[k] = (lr_k, wd_k)``; ``template`` (a linear or attentive head, built or not) gives the architecture;
    each head starts from its own draw of the template's initialisation."""

    def __init__(self, template: ProbeHead, settings: Sequence[Sequence[float]], default: int = 0) -> None:
        if not isinstance(template, (LinearProbe, AttentiveProbe)):
            raise TypeError(f"a probe grid batches LinearProbe or AttentiveProbe heads, got {type(template).__name__}")
        if not settings:
            raise ValueError("a probe grid needs at least one (lr, weight decay) setting")
        settings = [(float(lr), float(wd)) for lr, wd in settings]
        if not 0 <= default < len(settings):
            raise ValueError(f"probe grid: default head {default} is not one of the {len(settings)} heads")
        super().__init__(template.num_classes)
        self.settings, self.inputs, self.default, self.active = settings, template.inputs, default, default
        self.proto = copy.deepcopy(template)  # the architecture (and, linear: the shared batch norm)
        self.stacked = nn.ParameterDict()
        if template.input_dim is not None:
            self.build(template.input_dim)

    def __len__(self) -> int:
        return len(self.settings)

    def _build(self, dim: int) -> None:
        self.proto.build(dim)
        heads = []
        for _ in self.settings:
            head = copy.deepcopy(self.proto)
            head._build(dim)  # a fresh draw of the head's initialisation
            heads.append(head)
        self.load_heads(heads)

    def load_heads(self, heads: Sequence[ProbeHead]) -> None:
        """Take the K heads' parameters (built heads of the template's kind, e.g. to start from known weights)."""
        if len(heads) != len(self):
            raise ValueError(f"probe grid of {len(self)} heads given {len(heads)}")
        for name, _ in self.proto.named_parameters():
            stacked = torch.stack([dict(h.named_parameters())[name].detach() for h in heads])
            self.stacked[_key(name)] = nn.Parameter(stacked.clone())
        self.proto.requires_grad_(False)

    def param(self, name: str) -> torch.Tensor:
        """The stacked ``(K, …)`` parameter of a head parameter ``name`` (e.g. ``head.weight``)."""
        return self.stacked[_key(name)]

    def head_params(self, k: int) -> dict[str, torch.Tensor]:
        return {name: self.param(name)[k] for name, _ in self.proto.named_parameters()}

    def head(self, k: int) -> ProbeHead:
        """Head ``k`` as a standalone module (a copy of its parameters and of the shared buffers)."""
        self._check_built()
        single = copy.deepcopy(self.proto).requires_grad_(True)
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(self.param(name)[k])
        return single

    def param_groups(self, base_lr: float) -> list[dict]:
        """Two groups (decayed; not: 1-D per-head tensors, biases, the template's ``no_weight_decay``), each with
        ``head_lr`` = ``lr_k / base_lr`` (the schedule scales ``lr`` for every head alike) and ``head_wd``."""
        skip = self.proto.no_weight_decay()
        lr = torch.tensor([s[0] / base_lr for s in self.settings])
        wd = torch.tensor([s[1] for s in self.settings])
        decay, other = [], []
        for name, _ in self.proto.named_parameters():
            p = self.param(name)
            (decay if p.ndim > 2 and name not in skip else other).append(p)
        groups = [{"params": decay, "head_lr": lr, "head_wd": wd}, {"params": other, "head_lr": lr, "head_wd": 0 * wd}]
        return [g for g in groups if g["params"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_built()
        if not self.training:  # the active head's own forward
            buffers = dict(self.proto.named_buffers())
            return functional_call(self.proto, {**self.head_params(self.active), **buffers}, (x,))
        return self.forward_all(x)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head, ``(K, B, C)``."""
        self._check_built()
        if isinstance(self.proto, LinearProbe):
            return self.linear_all(x)
        if len(getattr(self.proto, "blocks", ())):
            return self.each_head(x)
        return self.attentive_all(x)

    def each_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head from its own forward (no shared shortcut), stacked: ``(K, B, C)``."""
        buffers = dict(self.proto.named_buffers())
        logits = [functional_call(self.proto, {**self.head_params(k), **buffers}, (x,)) for k in range(len(self))]
        return torch.stack(logits)

    def linear_all(self, pooled: torch.Tensor) -> torch.Tensor:
        """The batch norm has no parameters: one for all heads (its running statistics are every head's)."""
        self.proto.norm.train(self.training)
        z = self.proto.norm(pooled.float())
        return torch.einsum("bd,kcd->kbc", z, self.param("head.weight")) + self.param("head.bias")[:, None]

    def attentive_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """All K attentive heads from one pass over the tokens.

        For head k, query q, attention head h the score of token n is ``qp·(Wk (γ⊙x̂_n + β) + b_k)/√d`` with
        ``x̂`` the tokens normalised without affine (shared by every head): up to a constant that the softmax
        removes it is ``x̂_n · u`` with ``u = γ ⊙ (Wk_hᵀ qp_h)/√d``. The weights ``a`` sum to one, so the attention
        output is ``Wv_h (γ ⊙ Σ_n a_n x̂_n + β) + b_v``: only the (K·Q·H)-column score matmul and the weighted sum
        touch the N tokens.
        """
        p, dim, nh = self.param, self.proto.input_dim, self.proto.attn.num_heads
        xhat = F.layer_norm(tokens.float(), (dim,), eps=self.proto.norm_kv.eps)  # (B, N, D)
        gamma, beta = p("norm_kv.weight"), p("norm_kv.bias")  # (K, D)
        query = p("query")[:, 0]  # (K, Q, D)
        w_in, b_in = p("attn.in_proj_weight"), p("attn.in_proj_bias")  # (K, 3D, D), (K, 3D)
        qp = self.norm_k(query, "norm_q", 0) @ w_in[:, :dim].transpose(1, 2) + b_in[:, None, :dim]
        k_, q_ = qp.shape[:2]
        qp = qp.view(k_, q_, nh, dim // nh)  # (K, Q, H, dh)
        wk = w_in[:, dim : 2 * dim].view(k_, nh, dim // nh, dim)  # (K, H, dh, D)
        u = torch.einsum("kqhe,khed->kqhd", qp, wk) * gamma[:, None, None] / math.sqrt(dim // nh)
        # Two plain matmuls over the tokens (every head, query and attention head as one column): (B, N, KQH).
        attn = (xhat @ u.reshape(-1, dim).T).softmax(1)
        pooled = (attn.transpose(1, 2) @ xhat).view(xhat.shape[0], k_, q_, nh, dim)
        pooled = pooled * gamma[:, None, None] + beta[:, None, None]
        wv = w_in[:, 2 * dim :].view(k_, nh, dim // nh, dim)
        out = torch.einsum("bkqhd,khed->bkqhe", pooled, wv).flatten(3) + b_in[:, 2 * dim :][:, None]
        out = out + 0.0 * b_in[:, dim : 2 * dim].sum()  # the key bias shifts a head's scores alike: zero gradient
        q = query[:, None] + self.linear_k(out.transpose(0, 1), "attn.out_proj")  # (K, B, Q, D): heads first
        hidden = F.gelu(self.linear_k(self.norm_k(q, "norm_mlp", 0), "mlp.0"))
        q = q + self.linear_k(hidden, "mlp.2")
        return self.linear_k(self.norm_k(q.mean(2), "norm_out", 0), "head")  # (K, B, C)

    def linear_k(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Each head's Linear ``name`` on its slice ``x[k]`` (heads first): one batched matmul, weights read
        transposed in place (an einsum would copy the ``(K, out, in)`` weights at every call)."""
        weight, bias = self.param(f"{name}.weight"), self.param(f"{name}.bias")
        flat = x.reshape(len(self), -1, x.shape[-1])
        return torch.baddbmm(bias[:, None], flat, weight.transpose(1, 2)).view(*x.shape[:-1], weight.shape[1])

    def norm_k(self, x: torch.Tensor, name: str, axis: int) -> torch.Tensor:
        """Each head's LayerNorm ``name`` on its slice of ``x`` (the head index is dimension ``axis``)."""
        shape = [1] * x.ndim
        shape[axis], shape[-1] = len(self), x.shape[-1]
        z = F.layer_norm(x, x.shape[-1:], eps=getattr(self.proto, name).eps)
        return z * self.param(f"{name}.weight").view(shape) + self.param(f"{name}.bias").view(shape)
