"""Stage 0: train the image teacher as an image MAE on single frames, and write it as a teacher checkpoint.

Loss: the mean squared error between :class:`surgvista.models.image_mae.ImageMAE`'s predictions and the masked
patches' pixels, per-patch normalised (:func:`surgvista.modules.objective.pixel_targets` on one-frame clips, the
same targets as the video objectives). After every training epoch the encoder is written atomically to
``teacher_out`` in the EndoSSL teacher layout: ``model.teacher.ckpt=<teacher_out>`` (teacher preset and input size
as trained) loads it strictly into :class:`surgvista.models.teacher.ImageTeacher`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from surgvista.layers.masking import take
from surgvista.models.image_mae import ImageMAE
from surgvista.modules.objective import pixel_targets
from surgvista.modules.schedule import adamw_warmup_cosine
from surgvista.utils.io import atomic_torch_save

log = logging.getLogger(__name__)


def image_mae_loss(net: ImageMAE, images: torch.Tensor, normalize: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE of the predicted masked patches against their (per-patch normalised) pixels."""
    pred, masked = net(images, generator)
    targets = pixel_targets(images.unsqueeze(2), 1, net.patch_size, normalize=normalize)
    return ((pred.float() - take(targets, masked)) ** 2).mean()


class TeacherMAEModule(L.LightningModule):
    """Image-MAE pre-training of the teacher ViT; ``teacher_out``: the teacher ``.pth`` written each epoch."""

    def __init__(
        self,
        net: ImageMAE,
        teacher_out: str | None = None,
        batch_size: int = 32,
        base_lr: float = 1.5e-4,
        min_lr: float = 1.0e-6,
        lr_scale_batch: int = 256,
        warmup_epochs: float = 1.0,
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1.0e-8,
        normalize_pixels: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = image_mae_loss(self.net, images, self.hparams.normalize_pixels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    def validation_step(self, images: torch.Tensor, batch_idx: int) -> None:
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)  # the same masks every epoch
        loss = image_mae_loss(self.net, images, self.hparams.normalize_pixels, generator)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(images))

    def on_train_epoch_end(self) -> None:
        if self.hparams.teacher_out:
            self.save_teacher(self.hparams.teacher_out)

    @rank_zero_only
    def save_teacher(self, path: str | Path) -> Path:
        """Write the encoder to ``path`` (atomic) in the EndoSSL teacher layout."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.net.teacher_state_dict(), path)
        log.info("teacher checkpoint (epoch %d): %s", self.current_epoch, path)
        return Path(path)

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token"))
            (no_decay if skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        hp = self.hparams
        return adamw_warmup_cosine(groups, self.trainer, hp.batch_size, hp.base_lr, hp.min_lr, hp.lr_scale_batch,
                                   hp.warmup_epochs, hp.betas, hp.eps)
