"""Image models run on every frame: timm models (with released checkpoint layouts), the EndoSSL ViT-L (SurgVISTA's
teacher) and torchvision CNNs. Each reads the layout its weights were released in (:mod:`surgvista.checkpoints.layouts`)
and refuses any other with one line naming the file and the key."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.models.zoo.base import FrameBackbone
from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


def resolve_classes(names: Mapping[str, str] | None) -> dict[str, type]:
    """``{'mlp_act': 'torch.nn.ReLU'}`` → ``{'mlp_act': torch.nn.ReLU}`` (model arguments that are classes)."""
    out: dict[str, type] = {}
    for arg, dotted in (names or {}).items():
        module, _, attr = str(dotted).rpartition(".")
        try:
            out[arg] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"class_kwargs.{arg}: {dotted!r} is not an importable class") from None
    return out


class TimmFrameBackbone(FrameBackbone):
    """A timm image model run on every frame.

    Weights: ``pretrained_file`` (a file in the timm model's own layout, through timm's ``pretrained_cfg_overlay``)
    or ``ckpt`` (a released file in another layout: ``layout`` holds the
    :class:`~surgvista.checkpoints.layouts.Layout` fields that locate and rename its keys, ``timm_filter`` then applies
    the timm model's ``checkpoint_filter_fn`` (e.g. the original MetaFormer layout → timm's), and the load is
    exact). ``model_kwargs`` go to ``timm.create_model`` (e.g. ``img_size`` for ViTs), ``class_kwargs`` too after
    importing their dotted class paths (activations). Input: ``mean``/``std`` if given, else the model's
    ``pretrained_cfg``; ``bgr`` feeds the channels in BGR order. Tokens: every frame's ``forward_features`` (CNN: map
    cells); pooled: the model's pre-logits per frame, averaged over time.
    """

    def __init__(
        self,
        name: str,
        pretrained_file: str | None = None,
        seed: int = 0,
        model_kwargs: Mapping | None = None,
        ckpt: str | None = None,
        layout: Mapping | None = None,
        timm_filter: bool = False,
        class_kwargs: Mapping[str, str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        bgr: bool = False,
    ) -> None:
        super().__init__()
        import timm

        kwargs = {**dict(model_kwargs or {}), **resolve_classes(class_kwargs)}
        if pretrained_file and ckpt:
            raise ConfigError(f"timm backbone {name}: give pretrained_file (timm layout) or ckpt, not both")
        if pretrained_file:
            if not Path(pretrained_file).is_file():
                raise FileNotFoundError(f"timm backbone {name}: pretrained_file not found: {pretrained_file}")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
        with seeded(seed):
            self.model = timm.create_model(name, num_classes=0, **kwargs)
        self.embed_dim = int(self.model.num_features)
        cfg = self.model.pretrained_cfg or {}
        self.mean = tuple(mean or cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = tuple(std or cfg.get("std", IMAGENET_DEFAULT_STD))
        self.bgr = bgr
        if ckpt:
            self.load_released(ckpt, dict(layout or {}), timm_filter, name)

    def load_released(self, ckpt: str, layout: Mapping, timm_filter: bool, name: str) -> None:
        """Load a released file exactly (after the layout's renaming and, optionally, timm's own filter)."""
        from surgvista.checkpoints.errors import CheckpointError
        from surgvista.checkpoints.layouts import load_exact

        state = read_layout(ckpt, layout)
        if timm_filter:
            try:
                state = sys.modules[type(self.model).__module__].checkpoint_filter_fn(state, self.model)
            except KeyError as e:  # timm's filter looks every renamed key up in the model
                raise CheckpointError(
                    f"{ckpt}: unexpected key (renamed by timm) {e}; expected the layout of {name}"
                ) from None
        load_exact(state, self.model, ckpt, f"timm {name} (num_classes=0)")
        log.info("zoo timm %s: loaded %d tensors from %s", name, len(state), ckpt)

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(frames)
        return feats, self.model.forward_head(feats, pre_logits=True)


def read_layout(ckpt: str, layout: Mapping) -> dict[str, torch.Tensor]:
    """The weights of a released file under the library model's keys (``layout``: the ``Layout`` fields)."""
    from surgvista.checkpoints.layouts import Layout

    fields = dict(layout)
    fields["strip_prefixes"] = tuple(fields.get("strip_prefixes") or ())
    fields["prefix_map"] = dict(fields.get("prefix_map") or {})
    try:
        spec = Layout(**fields)
    except TypeError:
        raise ConfigError(
            f"layout {sorted(fields)}: expected keys among {sorted(Layout.__dataclass_fields__)}"
        ) from None
    return spec.read(ckpt)


class EndoSSLBackbone(FrameBackbone):
    """The EndoSSL ViT (SurgVISTA's image teacher, :class:`~surgvista.models.teacher.ImageTeacher`'s network and
    checkpoint reader: separate ``attn.q/k/v``, position table over the patches only) on every frame, trainable.

    Tokens: class + patch tokens after the final norm; pooled: the normed class token (MSN's representation).
    Input normalisation: ImageNet's, as SurgVISTA feeds its teacher.
    """

    def __init__(
        self, preset: str = "large", img_size: int = 224, patch_size: int = 16, ckpt: str | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        from surgvista.models.teacher import ImageTeacher

        teacher = ImageTeacher(preset, img_size, patch_size, ckpt=ckpt, frame_stride=1, seed=seed)
        self.model = teacher.vit.requires_grad_(True)
        self.embed_dim = teacher.embed_dim

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(frames)
        return feats, self.model.forward_head(feats, pre_logits=True)


class TorchvisionFrameBackbone(FrameBackbone):
    """A torchvision CNN with ``features``/``avgpool``/``classifier`` (ConvNeXt, EfficientNet, ...) on every frame.

    ``ckpt`` is read with a ``layout`` as in :class:`TimmFrameBackbone` and loaded exactly into
    ``torchvision.models.get_model(name)`` without its last classifier layer. Tokens: the cells of ``features``'
    map; pooled: ``classifier(avgpool(map))`` with its last layer removed (ConvNeXt: the LayerNorm'd average),
    averaged over time.
    """

    def __init__(
        self,
        name: str,
        ckpt: str | None = None,
        seed: int = 0,
        layout: Mapping | None = None,
        mean: Sequence[float] = tuple(IMAGENET_DEFAULT_MEAN),
        std: Sequence[float] = tuple(IMAGENET_DEFAULT_STD),
    ) -> None:
        super().__init__()
        import torchvision

        with seeded(seed):
            self.model = torchvision.models.get_model(name, weights=None)
        if not all(hasattr(self.model, a) for a in ("features", "avgpool", "classifier")):
            raise ConfigError(f"torchvision model {name!r} has no features/avgpool/classifier (e.g. convnext_large)")
        self.embed_dim = int(self.model.classifier[-1].in_features)
        self.model.classifier[-1] = torch.nn.Identity()
        self.mean, self.std = tuple(mean), tuple(std)
        if ckpt:
            from surgvista.checkpoints.layouts import load_exact

            state = read_layout(ckpt, dict(layout or {}))
            load_exact(state, self.model, ckpt, f"torchvision {name} without its last classifier layer")

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.features(frames)
        return feats, torch.flatten(self.model.classifier(self.model.avgpool(feats)), 1)
