"""SurgVISTA video student: masked ViT encoder plus image-distillation and pixel decoders."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from surgvista.layers.masking import take, token_order
from surgvista.layers.position import check_pos_embed, position_table
from surgvista.layers.rope import check_rope_variant, rope_ref_side
from surgvista.layers.vit import Block, TubeletEmbed, init_weights, rescale_residual_projections, run_blocks
from surgvista.models.presets import STUDENT_PRESETS, lookup

INIT_KINDS = ("xavier", "trunc_normal")


class Decoder(nn.Module):
    """Light decoder: blocks, then norm and head on the trailing ``return_token_num`` (mask) tokens."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        drop_path: float,
        ln_eps: float,
        norm_eps: float | None = None,
        attn_backend: str = "sdpa",
    ):
        super().__init__()
        rates = np.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, 4.0, r, ln_eps, attn_backend=attn_backend) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=ln_eps if norm_eps is None else norm_eps)
        self.head = nn.Linear(dim, out_dim)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, -return_token_num:]))


class SurgVISTAStudent(nn.Module):
    """Masked video student whose ``state_dict`` matches the official SurgVISTA checkpoints key for key.

    ``forward(video, mask)`` takes ``video (B,3,T,H,W)`` and a bool ``mask (B, N)`` (True = masked, the same
    count per sample) and returns ``(image_pred, pixel_pred)``, each ``(B, N_masked, ·)`` in ascending token
    order, or ``None`` for a decoder that is switched off (``image_decoder=False`` gives VideoMAE).

    ``pos_embed`` picks the fixed tables of the encoder and both decoders: ``"sincos3d"`` (SurgVISTA/MVD, the
    default) or ``"sinusoid1d"`` (VideoMAE/HF: the 1-D table over the flat token index). With
    ``image_decoder=False, pos_embed="sinusoid1d", decoder_norm_eps=1e-5`` the student computes exactly what
    ``transformers.VideoMAEForPreTraining`` does (HF hard-codes eps 1e-5 on the decoder's final norm; its
    ``encoder_to_decoder`` has no bias, so load it with ``down_vid.bias`` = 0, or train with ``decoder_bias=False``
    as ``model=videomae_hf`` does). The ``state_dict`` layout is the same for both kinds.

    ``pos_embed="rope"`` gives V-JEPA 2's encoder: no table (no ``pos_embed`` key), 3-D RoPE in every encoder block
    (:mod:`surgvista.layers.rope`), ``sincos3d`` tables in the decoders. With ``qkv_bias="fused"`` and no
    decoders (``image_decoder=False, pixel_decoder=False``: an encoder-only student whose ``forward`` returns
    ``(None, None)``; use :meth:`encode`) its ``state_dict`` keys are those of the official V-JEPA 2 encoder.
    ``qkv_bias`` is the encoder blocks' bias layout (:class:`~surgvista.layers.vit.Attention`); ``init`` is
    ``"xavier"`` (the reference student) or ``"trunc_normal"`` (V-JEPA 2, see :meth:`reset_parameters`).
    ``rope_variant="vjepa21"`` gives V-JEPA 2.1's RoPE (interleaved frequencies, rows and columns stretched onto the
    256 px grid: :mod:`surgvista.layers.rope`); its released encoders load through
    :mod:`surgvista.checkpoints.vjepa21`.
    """

    def __init__(
        self,
        preset: str = "base",
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        ln_eps: float = 1e-6,
        image_decoder: bool = True,
        image_decoder_dim: int | None = None,
        image_decoder_depth: int = 2,
        image_decoder_heads: int | None = None,
        teacher_dim: int = 1024,
        pixel_decoder: bool = True,
        pixel_decoder_dim: int | None = None,
        pixel_decoder_depth: int = 4,
        pixel_decoder_heads: int | None = None,
        grad_checkpointing: bool = False,
        pos_embed: str = "sincos3d",
        decoder_norm_eps: float | None = None,
        attn_backend: str = "sdpa",
        decoder_bias: bool = True,
        qkv_bias: str = "divided",
        init: str = "xavier",
        rope_variant: str = "vjepa2",
    ) -> None:
        super().__init__()
        size = lookup(STUDENT_PRESETS, preset, "student preset")
        self.rope_variant = check_rope_variant(rope_variant)
        check_pos_embed(pos_embed, learned=False, rope=True)
        if init not in INIT_KINDS:
            raise ValueError(f"unknown init {init!r}; expected one of {INIT_KINDS}")
        dim = embed_dim or size.embed_dim
        self.embed_dim, self.num_frames, self.img_size = dim, num_frames, img_size
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        self.grad_checkpointing, self.pos_embed_kind, self.init = grad_checkpointing, pos_embed, init
        self.pixel_dim = tubelet_size * patch_size * patch_size * 3
        img_dim = (image_decoder_dim or size.image_decoder_dim) if image_decoder else None
        pix_dim = (pixel_decoder_dim or size.pixel_decoder_dim) if pixel_decoder else None
        self._add_position_tables(dim, img_dim, pix_dim)
        heads = num_heads or size.num_heads
        encoder = (depth or size.depth, heads, mlp_ratio, drop_path_rate, ln_eps, attn_backend, qkv_bias)
        self._add_encoder(*encoder)
        common = (drop_path_rate, ln_eps, decoder_norm_eps, attn_backend)
        self.decoder_img = self.decoder_vid = None
        if img_dim is not None:
            self.down_img = nn.Linear(dim, img_dim)
            heads = image_decoder_heads or size.image_decoder_heads
            self.decoder_img = Decoder(img_dim, image_decoder_depth, heads, teacher_dim, *common)
        if pix_dim is not None:
            self.down_vid = nn.Linear(dim, pix_dim, bias=decoder_bias)
            heads = pixel_decoder_heads or size.pixel_decoder_heads
            self.decoder_vid = Decoder(pix_dim, pixel_decoder_depth, heads, self.pixel_dim, *common)
        self.reset_parameters()
        self.set_grad_checkpointing(grad_checkpointing)

    def _add_position_tables(self, dim: int, img_dim: int | None, pix_dim: int | None) -> None:
        """The encoder's fixed position table (none with RoPE), then each enabled decoder's mask token and fixed
        table (``sincos3d`` for a RoPE encoder)."""
        grid = (
            self.num_frames // self.tubelet_size,
            self.img_size // self.patch_size,
            self.img_size // self.patch_size,
        )
        decoder_kind = "sincos3d" if self.pos_embed_kind == "rope" else self.pos_embed_kind

        def table(width: int, kind: str = decoder_kind) -> nn.Parameter:
            return nn.Parameter(position_table(kind, width, grid), requires_grad=False)

        if self.pos_embed_kind != "rope":
            self.pos_embed = table(dim, self.pos_embed_kind)
        if img_dim is not None:
            self.mask_token_img = nn.Parameter(torch.zeros(1, 1, img_dim))
            self.pos_embed_img = table(img_dim)
        if pix_dim is not None:
            self.mask_token_vid = nn.Parameter(torch.zeros(1, 1, pix_dim))
            self.pos_embed_vid = table(pix_dim)

    def _add_encoder(
        self,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_path_rate: float,
        ln_eps: float,
        attn_backend: str,
        qkv_bias: str,
    ) -> None:
        """Tubelet embedding, ``depth`` blocks (drop-path rising linearly to ``drop_path_rate``), final norm."""
        dim = self.embed_dim
        self.patch_embed = TubeletEmbed(self.img_size, self.patch_size, self.tubelet_size, self.num_frames, dim)
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        rope, grid = self.pos_embed_kind == "rope", self.patch_embed.grid
        variant = (self.rope_variant, rope_ref_side(self.patch_size))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, r, ln_eps, qkv_bias, attn_backend, rope, grid, *variant) for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=ln_eps)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """``(T', H', W')`` token grid of the encoder."""
        return self.patch_embed.grid

    def reset_parameters(self) -> None:
        """Initialise as the reference: Xavier Linear, unit LN, ±1σ-truncated mask tokens, default Conv3d.

        ``init="trunc_normal"`` initialises as V-JEPA 2 instead: Linear and tubelet weights ``N(0, 0.02²)``
        truncated at ±2, zero biases, then block ``i``'s ``attn.proj``/``mlp.fc2`` weights divided by ``sqrt(2i)``.
        """
        if self.init == "trunc_normal":
            self.apply(partial(init_weights, linear_init=partial(nn.init.trunc_normal_, std=0.02)))
            nn.init.trunc_normal_(self.patch_embed.proj.weight, std=0.02)
            nn.init.zeros_(self.patch_embed.proj.bias)
            rescale_residual_projections(self.blocks)
        else:
            self.apply(init_weights)
        for name in ("mask_token_img", "mask_token_vid"):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02, a=-0.02, b=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-block activation checkpointing in the encoder and both decoders."""
        self.grad_checkpointing = enable
        for dec in (self.decoder_img, self.decoder_vid):
            if dec is not None:
                dec.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay by exact match (the reference's set; mask tokens still decay)."""
        return {"pos_embed", "cls_token", "mask_token"}

    def forward_encoder(self, video: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """Encode the visible tokens: ``(B, N_visible, D)`` after the final norm.

        ``num_masked`` (masked tokens per row, :meth:`MaskGenerator.num_masked`) avoids a host read of ``mask``.
        """
        return self.encode(video, token_order(mask, num_masked)[0])

    def encode(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the tokens ``keep`` (flat token ids ``(B, K)``, ascending; ``None``: all): ``(B, K, D)``.

        Tubelet embedding (plus the position table, without RoPE), the kept tokens, the blocks (RoPE at the kept
        tokens' positions) and the final norm.
        """
        x = self.patch_embed(video)
        if self.pos_embed_kind != "rope":
            x = x + self.pos_embed.type_as(x)
        if keep is not None:
            x = take(x, keep)
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing, keep))

    def _decode(self, latent, order, down, decoder, pos_embed, mask_token) -> torch.Tensor:
        x_vis = down(latent)
        pe = pos_embed.type_as(x_vis)
        pe_vis, pe_mask = take(pe, order[0]), take(pe, order[1])
        x = torch.cat([x_vis + pe_vis, mask_token.type_as(x_vis) + pe_mask], dim=1)
        return decoder(x, pe_mask.shape[1])

    def forward(
        self,
        video: torch.Tensor,
        mask: torch.Tensor,
        num_masked: int | None = None,
        decoder_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Image-decoder and pixel-decoder predictions for the masked tokens (either ``None`` when disabled; both
        for an encoder-only student, which is trained through :meth:`encode`).

        ``decoder_positions (B, K)`` (dual masking, :class:`~surgvista.layers.masking.DecoderMask`): the pixel
        decoder gets mask tokens at these masked positions only and predicts ``(B, K, ·)``; the image decoder
        always reconstructs every masked token.
        """
        order = token_order(mask, num_masked)
        latent = self.encode(video, order[0])
        img = vid = None
        if self.decoder_img is not None:
            img = self._decode(latent, order, self.down_img, self.decoder_img, self.pos_embed_img, self.mask_token_img)
        if self.decoder_vid is not None:
            if decoder_positions is not None:  # dual masking: mask tokens at the decoded positions only
                order = (order[0], decoder_positions)
            vid = self._decode(latent, order, self.down_vid, self.decoder_vid, self.pos_embed_vid, self.mask_token_vid)
        return img, vid
