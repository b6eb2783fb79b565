"""Evaluation metrics for surgical video tasks (see ``docs/metrics.md``), pure numpy/torch.

Functional forms work on numpy arrays; the ``torchmetrics`` classes gather predictions across processes and
average DistributedSampler duplicates, so results do not depend on the number of GPUs. All values are percent.
"""

from surgvista.metrics.ap import average_precision
from surgvista.metrics.bootstrap import bootstrap_ci, paired_bootstrap
from surgvista.metrics.classification import (
    balanced_accuracy,
    clip_scores,
    multilabel_balanced_accuracy,
    per_class_ap,
    topk_accuracy,
)
from surgvista.metrics.phase import (
    aggregate_phase_scores,
    phase_scores,
    phase_table,
    relaxation_rules,
    relaxed_correct,
    video_macro_scores,
    video_phase_scores,
)
from surgvista.metrics.segments import edit_score, overlap_counts, segment_scores
from surgvista.metrics.table import metrics_table, nan_to_none
from surgvista.metrics.triplet import CHOLECT50, COMPONENTS, ComponentMap, triplet_scores, video_ap

__all__ = [
    "CHOLECT50",
    "COMPONENTS",
    "ClipMetrics",
    "ComponentMap",
    "PhaseMetrics",
    "TripletMetrics",
    "aggregate_phase_scores",
    "average_precision",
    "balanced_accuracy",
    "bootstrap_ci",
    "clip_scores",
    "edit_score",
    "metrics_table",
    "multilabel_balanced_accuracy",
    "nan_to_none",
    "overlap_counts",
    "paired_bootstrap",
    "per_class_ap",
    "phase_scores",
    "phase_table",
    "relaxation_rules",
    "relaxed_correct",
    "segment_scores",
    "topk_accuracy",
    "triplet_scores",
    "video_ap",
    "video_macro_scores",
    "video_phase_scores",
]
_LAZY = {"ClipMetrics", "PhaseMetrics", "TripletMetrics"}  # torchmetrics: imported on first use


def __getattr__(name: str):
    """The torchmetrics classes on first use, so that numpy-only users (``surgvista-score``) skip its import."""
    if name in _LAZY:
        from surgvista.metrics import torchmetrics_wrappers

        return getattr(torchmetrics_wrappers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
