"""Stage 0: an image MAE whose encoder is exactly the image teacher's ViT, so its weights *are* a teacher checkpoint.

The encoder (:func:`surgvista.models.teacher.teacher_vit`) sees the visible patches of a frame (random masking at
``mask_ratio``, :class:`surgvista.layers.masking.MaskGenerator` on a one-frame grid) plus its CLS token; a small
decoder (our ViT blocks, fixed sin-cos positions) puts mask tokens at the hidden positions and predicts their
pixels. The loss (normalised pixel targets) lives in :mod:`surgvista.modules.teacher_mae`.
:meth:`ImageMAE.teacher_state_dict` gives the encoder in the EndoSSL layout that ``model.teacher.ckpt`` reads.
"""

from __future__ import annotations

import torch
from torch import nn

from surgvista.layers.masking import MaskGenerator, take, token_order
from surgvista.layers.position import position_table
from surgvista.layers.vit import Block, init_weights
from surgvista.models.teacher import teacher_vit, timm_to_endossl
from surgvista.utils.seeding import seeded


class ImageMAE(nn.Module):
    """Masked-image autoencoder around a teacher-layout ViT ``preset`` at ``img_size`` with ``patch_size`` patches.

    ``forward(images (B,3,H,W))`` returns the predicted pixels of the masked patches ``(B, N_masked, p·p·3)``
    (channel fastest, as :func:`surgvista.layers.patchify.patchify` lays a token out) and their positions
    ``(B, N_masked)``.
    """

    def __init__(
        self,
        preset: str = "tiny",
        img_size: int = 112,
        patch_size: int = 16,
        mask_ratio: float = 0.75,
        decoder_dim: int = 96,
        decoder_depth: int = 1,
        decoder_heads: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        side = img_size // patch_size
        self.grid = (1, side, side)
        self.patch_size = patch_size
        self.masking = MaskGenerator("random", mask_ratio)
        with seeded(seed):
            self.encoder = teacher_vit(preset, img_size, patch_size)
            dim = self.encoder.embed_dim
            self.decoder_embed = nn.Linear(dim, decoder_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
            self.decoder = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
            self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
            self.head = nn.Linear(decoder_dim, patch_size * patch_size * 3)
            for part in (self.decoder_embed, self.decoder, self.decoder_norm, self.head):
                part.apply(init_weights)
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", position_table("sincos3d", decoder_dim, self.grid), persistent=False)

    def encode(self, images: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder tokens ``(B, 1 + N_visible, D)`` after the final norm (CLS first) of the ``visible`` patches
        (positions ``(B, N_visible)``; ``None``: all)."""
        x = self.encoder.patch_embed(images) + self.encoder.pos_embed
        if visible is not None:
            x = take(x, visible)
        cls = self.encoder.cls_token.expand(x.shape[0], -1, -1)
        x = self.encoder.norm_pre(torch.cat([cls, x], dim=1))
        for blk in self.encoder.blocks:
            x = blk(x)
        return self.encoder.norm(x)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted pixels of the masked patches and their positions (masks drawn from ``generator``)."""
        b, n = images.shape[0], self.grid[1] * self.grid[2]
        mask = self.masking(b, self.grid, images.device, generator)
        visible, masked = token_order(mask, self.masking.num_masked(self.grid))
        latent = self.decoder_embed(self.encode(images, visible)[:, 1:])
        tokens = self.mask_token.expand(b, n, -1).clone()
        rows = torch.arange(b, device=images.device).unsqueeze(1)
        tokens[rows, visible] = latent.to(tokens.dtype)
        x = tokens + self.decoder_pos
        for blk in self.decoder:
            x = blk(x)
        return self.head(self.decoder_norm(take(x, masked))), masked

    def teacher_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights in the EndoSSL teacher layout (what ``ImageTeacher.load_checkpoint`` reads)."""
        return {k: v.detach().cpu().clone() for k, v in timm_to_endossl(self.encoder.state_dict()).items()}
