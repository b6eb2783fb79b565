"""Dataset adapters: each parses one dataset's official download into sources, splits and labels.

``REGISTRY`` maps the dataset name (the ``prepare`` CLI argument) to its adapter class.
"""

from surgvista.data.adapters import cataract, cholec, cvs, laparo, misc, triplet  # noqa: F401  (registration)
from surgvista.data.adapters.base import REGISTRY, Adapter, LabelLengthError, PrepareError, Source, Timeline

PRETRAIN_DATASETS = (
    "cholec80",
    "m2cai16",
    "heichole",
    "pitvis",
    "psiava",
    "autolaparo",
    "bernbypass70",
    "strasbypass70",
    "gensurgery",
)
DOWNSTREAM_DATASETS = (
    "cholec80",
    "m2cai16",
    "autolaparo",
    "cataracts",
    "cataract21",
    "cataract101",
    "esd57",
    "pmlr50",
    "cholect50",
    "prostate21",
    "cholec80_cvs",
    "endoscapes",
    "surgicalactions160",
)

__all__ = [
    "REGISTRY",
    "Adapter",
    "LabelLengthError",
    "PrepareError",
    "Source",
    "Timeline",
    "PRETRAIN_DATASETS",
    "DOWNSTREAM_DATASETS",
]
