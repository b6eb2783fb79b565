"""V-JEPA 2 predictor: context features and mask tokens at the target positions through a narrow RoPE ViT."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from surgvista.layers.vit import Block, init_weights, rescale_residual_projections, run_blocks


class Predictor(nn.Module):
    """Predict the encoder features of target tokens from context tokens (the V-JEPA 2 predictor).

    Module names are those of the official checkpoints (``predictor_embed``, ``mask_tokens.<i>``,
    ``predictor_blocks.<i>``, ``predictor_norm``, ``predictor_proj``). ``forward`` embeds the context into the
    predictor width, appends one learned mask token (``mask_tokens[mask_index % num_mask_tokens]``) per target
    position, runs the blocks with 3-D RoPE at the tokens' ids on ``token_grid``, and projects the normed target
    part back to the encoder width. Attention sees positions only through RoPE, so the token order does not matter
    (the reference sorts the tokens by position first; the results agree up to float rounding).
    """

    def __init__(
        self,
        embed_dim: int,
        token_grid: tuple[int, int, int],
        pred_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 10,
        zero_init_mask_tokens: bool = True,
        ln_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be at least 1, got {num_mask_tokens}")
        self.embed_dim, self.pred_dim, self.token_grid = embed_dim, pred_dim, tuple(token_grid)
        self.predictor_embed = nn.Linear(embed_dim, pred_dim)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, pred_dim)) for _ in range(num_mask_tokens))
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        block = partial(Block, qkv_bias="fused", attn_backend=attn_backend, rope=True, grid=self.token_grid)
        self.predictor_blocks = nn.ModuleList(block(pred_dim, num_heads, mlp_ratio, r, ln_eps) for r in rates)
        self.predictor_norm = nn.LayerNorm(pred_dim, eps=ln_eps)
        self.predictor_proj = nn.Linear(pred_dim, embed_dim)
        self.grad_checkpointing = False
        self.reset_parameters(zero_init_mask_tokens)

    def reset_parameters(self, zero_init_mask_tokens: bool = True) -> None:
        """V-JEPA 2 init: Linear ``N(0, 0.02²)`` truncated at ±2, zero biases, unit LayerNorms, block ``i``'s output
        projections divided by ``sqrt(2i)``; mask tokens zero, or ``N(0, 0.02²)`` when not ``zero_init_mask_tokens``."""
        self.apply(partial(init_weights, linear_init=partial(nn.init.trunc_normal_, std=0.02)))
        rescale_residual_projections(self.predictor_blocks)
        for token in self.mask_tokens:
            if zero_init_mask_tokens:
                nn.init.zeros_(token)
            else:
                nn.init.trunc_normal_(token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-block activation checkpointing."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay by exact match (none: V-JEPA 2 decays every parameter)."""
        return set()

    def forward(
        self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor, mask_index: int = 0
    ) -> torch.Tensor:
        """Predictions ``(B, Nt, embed_dim)`` for the tokens ``target_ids (B, Nt)`` from the encoder features
        ``context (B, Nc, embed_dim)`` of the tokens ``context_ids (B, Nc)`` (flat ids on ``token_grid``)."""
        if context.shape[:2] != context_ids.shape or target_ids.shape[0] != context.shape[0]:
            raise ValueError(
                f"context {tuple(context.shape)} needs context_ids (B, Nc) = {tuple(context.shape[:2])} and "
                f"target_ids (B, Nt); got {tuple(context_ids.shape)} and {tuple(target_ids.shape)}"
            )
        x = self.predictor_embed(context)
        token = self.mask_tokens[mask_index % len(self.mask_tokens)].type_as(x)
        b, nt = target_ids.shape
        x = torch.cat([x, token.expand(b, nt, -1)], dim=1)
        ids = torch.cat([context_ids, target_ids], dim=1)
        x = run_blocks(self.predictor_blocks, x, self.grad_checkpointing, ids)
        return self.predictor_proj(self.predictor_norm(x[:, context.shape[1] :]))
