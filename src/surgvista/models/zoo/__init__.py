"""Backbone zoo: any video or image model behind one small interface, for frozen probes and fine-tuning.

Every backbone is a :class:`ZooBackbone`: ``features(video)`` takes clips ``(B, 3, T, H, W)`` normalised with the
ImageNet mean/std (what every surgvista data pipeline produces), converts them to the backbone's own input
normalisation (``mean``/``std``) and returns ``(tokens (B, N, D), pooled (B, D))`` with ``D = embed_dim``.

One file per kind of family: ``student.py`` (our ViT: SurgVISTA, VideoMAE v1/v2, MVD, UMT files), ``hf.py``
(``transformers`` video models on clips, DINOv3/DINOv2 on frames), ``frames.py`` (timm and torchvision image models
and the EndoSSL ViT on frames, reading released checkpoint layouts), ``timesformer.py`` (a divided space-time
video ViT: Endo-FM), ``internvideo2.py`` (InternVideo2's ViT), ``vjepa.py`` (V-JEPA 2 and 2.1 ``.pt`` files,
SurgMotion's, HF folders and our V-JEPA runs in the RoPE student). ``conf/model/backbone/*.yaml`` picks one by
``_target_: surgvista.models.zoo.<Class>``; the families, their weights and layouts are in docs/benchmark.md.
"""

from surgvista.models.zoo.base import FrameBackbone, ZooBackbone, ZooClassifier
from surgvista.models.zoo.frames import EndoSSLBackbone, TimmFrameBackbone, TorchvisionFrameBackbone
from surgvista.models.zoo.hf import HF_FRAME_KINDS, HF_KINDS, HFFrameBackbone, HFVideoBackbone
from surgvista.models.zoo.internvideo2 import InternVideo2Backbone
from surgvista.models.zoo.student import StudentBackbone
from surgvista.models.zoo.timesformer import TimeSformerBackbone
from surgvista.models.zoo.vjepa import VJEPABackbone

__all__ = [
    "HF_FRAME_KINDS",
    "HF_KINDS",
    "EndoSSLBackbone",
    "FrameBackbone",
    "HFFrameBackbone",
    "HFVideoBackbone",
    "InternVideo2Backbone",
    "StudentBackbone",
    "TimeSformerBackbone",
    "TimmFrameBackbone",
    "TorchvisionFrameBackbone",
    "VJEPABackbone",
    "ZooBackbone",
    "ZooClassifier",
]
