"""Reconstruction panels (input / masked / prediction) and their logging to any active logger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.layers.patchify import patchify, unpatchify


@torch.no_grad()
def reconstruction_panel(
    video: torch.Tensor,
    mask: torch.Tensor,
    pixel_pred: torch.Tensor,
    grid: tuple[int, int, int],
    tubelet: int,
    patch: int,
    normalized_targets: bool = True,
    num_frames: int = 4,
) -> np.ndarray:
    """Rows input / masked input / reconstruction of one clip, as an ``(H, W, 3)`` uint8 image.

    ``video (3,T,H,W)`` normalised, ``mask (N,)``, ``pixel_pred (N_masked, D)``. Predicted patches in the
    normalised-target space are mapped back with the true patch mean/std, as VideoMAE visualises them.
    """
    video = video.float()
    mean, std = (
        torch.tensor(v, device=video.device).view(3, 1, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    )
    raw = patchify((video * std + mean)[None], tubelet, patch)[0].view(mask.shape[0], -1, 3)  # pixels in [0, 1]
    pred = pixel_pred.float().view(-1, raw.shape[1], 3)
    if normalized_targets:
        masked_raw = raw[mask]
        pred = pred * masked_raw.std(dim=1, unbiased=True, keepdim=True) + masked_raw.mean(dim=1, keepdim=True)
    recon = raw.clone()
    recon[mask] = pred
    hidden = raw.clone()
    hidden[mask] = 0.5
    rows = unpatchify(torch.stack((raw, hidden, recon)).flatten(2), grid, tubelet, patch)  # (3, 3, T, H, W)
    frames = np.linspace(0, rows[0].shape[1] - 1, num_frames).round().astype(int)
    panel = torch.cat([torch.cat([r[:, f] for f in frames], dim=2) for r in rows], dim=1)
    return (panel.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


PANEL_ROWS = ("input", "masked", "reconstruction")


def labelled_panel(panel: np.ndarray, caption: str, rows: tuple[str, ...] = PANEL_ROWS) -> np.ndarray:
    """``panel`` with its row names in a left margin and ``caption`` (stage, step, loss) in a top band."""
    from PIL import ImageDraw

    h, w = panel.shape[:2]
    margin, band = 96, 18
    canvas = Image.new("RGB", (w + margin, h + band), "white")
    canvas.paste(Image.fromarray(panel), (margin, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), caption, fill="black")
    for i, name in enumerate(rows):
        draw.text((4, band + int((i + 0.5) * h / len(rows)) - 5), name, fill="black")
    return np.asarray(canvas)


def log_image(
    loggers, key: str, image: np.ndarray, step: int, out_dir: str | Path, filename: str | None = None
) -> Path:
    """Save ``image`` as ``out_dir/<key>/step_XXXXXXX.png`` (or ``out_dir/<filename>``) and send it to W&B /
    TensorBoard if active."""
    path = Path(out_dir) / (filename or Path(key.replace("/", "_"), f"step_{step:07d}.png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    for logger in loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_image(key=key, images=[image], step=step)
        elif name == "TensorBoardLogger":
            logger.experiment.add_image(key, image, step, dataformats="HWC")
    return path
