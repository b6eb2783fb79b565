"""V-JEPA 2 and 2.1 video encoders as a zoo family: the official ``.pt`` files (and SurgMotion's, same layout), HF
``VJEPA2Model`` folders and our ``model=vjepa`` runs, in our RoPE student."""

from __future__ import annotations

import logging

import torch

from surgvista.models.zoo.base import ZooBackbone
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class VJEPABackbone(ZooBackbone):
    """The V-JEPA 2 encoder (an encoder-only RoPE :class:`~surgvista.models.student.SurgVISTAStudent`, fused qkv
    bias) with weights from ``ckpt``: an official V-JEPA 2 ``.pt`` (facebookresearch/vjepa2 ``save_checkpoint``),
    an HF ``VJEPA2Model`` folder or a ``model=vjepa`` run's ``.ckpt``, loaded strictly by
    :func:`~surgvista.checkpoints.load.load_backbone`. ``part``: ``target`` (the EMA target encoder, the default:
    what V-JEPA 2 evaluates and releases) or ``student`` (``encoder`` in the official files).

    Geometry kwargs (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``patch_size``, ``tubelet_size``)
    must be the checkpoint's (ViT-L: 1024/24/16/4; ViT-g: 1408/40/22/48/11); RoPE has no table, so ``img_size``
    and ``num_frames`` are free (multiples of the patch and tubelet). Input: ImageNet mean/std, as V-JEPA 2's
    evaluation transforms. Tokens: the encoder's output after its final norm; pooled: their mean (the released
    attentive probe is a trained head, not part of the backbone).

    V-JEPA 2.1 files (``ema_encoder``/``target_encoder`` with ``norms_block`` and modality embeddings,
    :mod:`surgvista.checkpoints.vjepa21`) need ``rope_variant="vjepa21"``; tokens are then the last block's output
    through the last of ``norms_block`` (2.1's default output). ``num_frames=1, tubelet_size=1`` gives 2.1's
    single-frame encoder (its image patch embedding and image modality embedding).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        part: str = "target",
        img_size: int = 256,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        ln_eps: float = 1e-6,
        attn_backend: str = "sdpa",
        seed: int = 0,
        rope_variant: str = "vjepa2",
    ) -> None:
        super().__init__()
        from surgvista.models.student import SurgVISTAStudent

        geometry = {"img_size": img_size, "num_frames": num_frames, "patch_size": patch_size}
        size = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio}
        with seeded(seed):  # a random-init backbone is a function of its config
            self.encoder = SurgVISTAStudent(
                tubelet_size=tubelet_size, **geometry, **size, ln_eps=ln_eps, drop_path_rate=0.0,
                pos_embed="rope", qkv_bias="fused", image_decoder=False, pixel_decoder=False,
                attn_backend=attn_backend, init="trunc_normal", rope_variant=rope_variant,
            )  # fmt: skip
        self.embed_dim = embed_dim
        if ckpt:
            from surgvista.checkpoints.load import load_backbone

            report = load_backbone(ckpt, self.encoder, part=part)
            log.info("zoo V-JEPA 2%s: %s", ".1" if rope_variant == "vjepa21" else "", report)

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder.encode(video)
        return tokens, tokens.mean(1)
