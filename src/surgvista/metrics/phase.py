"""Surgical phase recognition metrics: the ``Evaluate.m``/``Main.m`` convention.

Definitions, the ``Main.m`` aggregation (clipping at 100, N-1 standard deviations, NaN propagation) and the
relaxed-boundary rules are in ``docs/metrics.md``. Unlike the MATLAB drivers, only the videos actually given
are aggregated. All values are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from surgvista.metrics.segments import DEFAULT_OVERLAPS, segment_scores, segments
from surgvista.metrics.stats import mean, nanmean, nanmean_rows, nanstd, std

RELAX_SECONDS = 10.0


@dataclass(frozen=True)
class RelaxationRules:
    """Forgiven values of ``d = pred - gt`` per ground-truth phase (0-based ids).

    ``late[p]``: forgiven in the first ``window`` frames of a ground-truth run of ``p`` (the model still predicts
    an earlier phase). ``early[p]``: forgiven in its last ``window`` frames (the model already predicts a later
    phase).
    """

    name: str
    late: tuple[frozenset[int], ...]
    early: tuple[frozenset[int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.late)


def _cholec_rules(name: str, num_general: int) -> RelaxationRules:
    """Cholec80-style rules: ``num_general`` general phases, then 2 phases with the +2 early rule (Gallbladder
    dissection/packaging) and 2 with +-2 (Cleaning/coagulation, Gallbladder retraction)."""
    one, two = frozenset({-1}), frozenset({-1, -2})
    up1, up2 = frozenset({1}), frozenset({1, 2})
    late = (one,) * num_general + (one, one) + (two, two)
    early = (up1,) * num_general + (up2, up2) + (up2, up2)
    return RelaxationRules(name, late, early)


#: ``Evaluate.m`` (Cholec80, also used for AutoLaparo by ``Main_AutoLaparo.m``) and ``Evaluate_m2cai.m``
#: (TrocarPlacement first, so the special rules sit one id later). Cataract-101's script has no relaxation.
RELAXATION_RULES: dict[str, RelaxationRules] = {
    "cholec80": _cholec_rules("cholec80", 3),
    "autolaparo": _cholec_rules("autolaparo", 3),
    "m2cai16": _cholec_rules("m2cai16", 4),
}
_ALIASES = {"m2cai": "m2cai16", "m2cai16workflow": "m2cai16"}


def normalise_dataset(name: str) -> str:
    """``"Cholec80"`` -> ``"cholec80"``, ``"M2CAI16-workflow"`` -> ``"m2cai16"`` (case, ``-`` and ``_`` ignored)."""
    key = name.lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key, key)


def relaxation_rules(dataset: str, num_classes: int | None = None) -> RelaxationRules:
    """The relaxed-boundary rules of ``dataset``; errors if it has none or its class count differs."""
    key = normalise_dataset(dataset)
    if key not in RELAXATION_RULES:
        raise ValueError(
            f"no relaxed-boundary rules for dataset {dataset!r}; rules exist for "
            f"{sorted(RELAXATION_RULES)} (use relaxed=False for the others)"
        )
    rules = RELAXATION_RULES[key]
    if num_classes is not None and num_classes != rules.num_classes:
        raise ValueError(f"relaxed-boundary rules of {key} expect num_classes={rules.num_classes}, got {num_classes}")
    return rules


#: The frame rates at which the official scripts score the relaxed metric: Cholec80 and AutoLaparo at the 1-fps
#: frame indices the Surgformer conversion writes for ``Main.m``; M2CAI16 at 25 fps (``Evaluate_m2cai.m`` on the
#: raw labels) or at the benchmark's 1 fps. Elsewhere the 10 s window changes meaning with the rate (a 1-fps
#: sequence declared as 25 fps forgives 250 s around each transition).
RELAXED_FPS = {"cholec80": (1.0,), "autolaparo": (1.0,), "m2cai16": (1.0, 25.0)}


def check_relaxed_rate(dataset: str, fps: float) -> None:
    """Refuse the relaxed metric of ``dataset`` at a frame rate its official evaluation does not use."""
    allowed = RELAXED_FPS.get(normalise_dataset(dataset))
    if allowed is not None and not any(math.isclose(fps, a) for a in allowed):
        rates = " or ".join(f"{a:g}" for a in allowed)
        raise ValueError(
            f"relaxed {normalise_dataset(dataset)} metrics are defined at {rates} fps (the official evaluation's "
            f"rate), got fps={fps:g}: resample predictions and ground truth to {allowed[0]:g} fps first "
            "(surgvista-score --resample) or turn relaxation off (relaxed=False)"
        )


def relax_window(fps: float, seconds: float = RELAX_SECONDS) -> int:
    """Relaxation window in frames: ``round(seconds * fps)`` (10 frames at 1 fps)."""
    window = int(round(seconds * fps))
    if window < 1:
        raise ValueError(f"relaxation window of {seconds} s at fps={fps} is below one frame")
    return window


def relaxation(dataset: str, num_classes: int, fps: float) -> tuple[RelaxationRules, int]:
    """The relaxed-boundary rules and window (frames) of ``dataset`` at ``fps``; refuses a dataset without rules,
    another class count and a rate its official evaluation does not use (:func:`check_relaxed_rate`)."""
    rules = relaxation_rules(dataset, num_classes)
    check_relaxed_rate(dataset, fps)
    return rules, relax_window(fps)


# Our own code on purpose: no library reproduces Evaluate.m's relaxed-boundary rules (and their indexing quirk).
def relaxed_correct(target, pred, rules: RelaxationRules, window: int, matlab_compatible: bool = True) -> np.ndarray:
    """Boolean (N,) mask of frames counted correct under relaxed boundaries.

    ``d = pred - gt``; for each ground-truth run ``[s, e]`` of phase ``p`` with length ``L`` and
    ``t = min(window, L)``: (1) *late rule*: frame ``s+i`` (``i < t``) with ``d in late[p]`` becomes correct;
    (2) *early rule*, evaluated after (1): the condition is ``d[e-t+1+i] in early[p]``, and the frame it clears is

    * ``matlab_compatible=True``: frame ``s+i`` - what ``Evaluate.m`` does (a length-``t`` logical index applied
      to the whole run), so the rule only touches the first ``t`` frames: it is a no-op when ``L <= window`` and
      otherwise can clear a wrong frame near the start while leaving the early transition at the end unforgiven;
    * ``matlab_compatible=False`` (corrected): frame ``e-t+1+i`` itself, the intended rule.
    """
    gt = np.asarray(target, dtype=np.int64)
    d = np.asarray(pred, dtype=np.int64) - gt
    labels, starts, ends = segments(gt)
    for p, s, e in zip(labels.tolist(), starts.tolist(), ends.tolist()):
        cur = d[s:e]  # a view: edits land in d
        t = min(window, e - s)
        head = cur[:t]
        head[np.isin(head, list(rules.late[p]))] = 0
        tail_hit = np.isin(cur[e - s - t :], list(rules.early[p]))
        if matlab_compatible:
            cur[:t][tail_hit] = 0
        else:
            cur[e - s - t :][tail_hit] = 0
    return d == 0


@dataclass
class VideoPhaseScores:
    """Unclipped per-phase scores (K,) and the accuracy of one video, in percent."""

    jaccard: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    accuracy: float


def video_phase_scores(target, pred, num_classes: int, correct=None) -> VideoPhaseScores:
    """Per-phase J/P/R/F1 and accuracy of one video; ``correct`` (N,) defaults to ``pred == target``."""
    gt, pr = np.asarray(target), np.asarray(pred)
    correct = (gt == pr) if correct is None else np.asarray(correct, dtype=bool)
    jac, prec, rec = (np.full(num_classes, np.nan) for _ in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for p in range(num_classes):
            is_gt, is_pred = gt == p, pr == p
            n_gt = np.float64(is_gt.sum())
            if n_gt == 0:
                continue
            union = is_gt | is_pred
            tp = np.float64((correct & union).sum())
            jac[p] = (tp / np.float64(union.sum())) * 100
            prec[p] = (tp * 100) / np.float64(is_pred.sum())
            rec[p] = (tp * 100) / n_gt
        f1 = 2 * (prec * rec) / (prec + rec)
        acc = (np.float64(correct.sum()) / np.float64(gt.size)) * 100 if gt.size else math.nan
    return VideoPhaseScores(jac, prec, rec, f1, float(acc))


def aggregate_phase_scores(videos: Sequence[VideoPhaseScores], prefix: str = "") -> dict[str, float]:
    """The ``Main.m`` aggregation (``docs/metrics.md``) of per-video scores; keys prefixed with ``prefix``."""
    if not videos:
        raise ValueError("aggregate_phase_scores: no videos to aggregate")

    def clipped(name: str) -> np.ndarray:  # (K, V), > 100 -> 100, NaN kept
        m = np.stack([getattr(v, name) for v in videos], axis=1)
        return np.where(m > 100, 100.0, m)

    acc = [v.accuracy for v in videos]
    jac, prec, rec, f1 = (nanmean_rows(clipped(n)) for n in ("jaccard", "precision", "recall", "f1"))
    f1_per_video = nanmean_rows(clipped("f1").T)
    out = {
        "video_accuracy_mean": mean(acc),
        "video_accuracy_std": std(acc),
        "precision": nanmean(prec),
        "precision_std": nanstd(prec),
        "recall": mean(rec),
        "recall_std": std(rec),
        "jaccard": mean(jac),
        "jaccard_std": std(jac),
        "f1": mean(f1),
        "f1_std": std(f1_per_video),
        # Never NaN while any phase occurs: the mean over the phases present in the evaluated ground truth.
        "f1_nanmean": nanmean(f1),
    }
    return {prefix + k: v for k, v in out.items()}


def video_macro_scores(target, pred) -> tuple[float, float, float]:
    """Unrelaxed macro precision, recall, F1 (percent) of one video over the classes in ``target`` or ``pred``.

    The per-video convention of TeCNO (pycm) and of the Surgformer Python ``agg="video"`` variant
    (scikit-learn ``average="macro"`` on the present labels): per class ``P = TP/#pred``, ``R = TP/#gt`` with
    0/0 -> 0, ``F1 = 2TP/(2TP + FP + FN)``; macro = plain mean over the present classes.
    """
    gt, pr = np.asarray(target), np.asarray(pred)
    classes = np.union1d(gt, pr)
    tp = np.array([np.count_nonzero((gt == c) & (pr == c)) for c in classes], dtype=np.float64)
    n_pred = np.array([np.count_nonzero(pr == c) for c in classes], dtype=np.float64)
    n_gt = np.array([np.count_nonzero(gt == c) for c in classes], dtype=np.float64)
    prec = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    rec = np.divide(tp, n_gt, out=np.zeros_like(tp), where=n_gt > 0)
    f1 = 2 * tp / (n_pred + n_gt)
    return mean(prec) * 100, mean(rec) * 100, mean(f1) * 100


def check_videos(preds_per_video, targets_per_video, num_classes: int) -> tuple[list, list]:
    """Flattened per-video label arrays; errors for mismatched lengths, empty videos, non-integer or out-of-range
    labels."""
    preds = [np.asarray(p).ravel() for p in preds_per_video]
    targets = [np.asarray(t).ravel() for t in targets_per_video]
    if len(preds) != len(targets):
        raise ValueError(f"phase_scores: {len(preds)} prediction sequences for {len(targets)} target sequences")
    if not preds:
        raise ValueError("phase_scores: no videos given")
    for i, (p, t) in enumerate(zip(preds, targets)):
        if p.shape != t.shape or p.size == 0:
            raise ValueError(
                f"phase_scores: video {i} has {p.size} predicted and {t.size} target frames; expected "
                "the same non-zero number"
            )
        for what, x in (("prediction", p), ("target", t)):
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"phase_scores: video {i} {what} labels must be integers, got dtype {x.dtype}")
            if x.min() < 0 or x.max() >= num_classes:
                raise ValueError(
                    f"phase_scores: video {i} {what} labels must lie in [0, {num_classes - 1}] "
                    f"(num_classes={num_classes}), got range [{x.min()}, {x.max()}]"
                )
    return preds, targets


def resolve_relaxed(relaxed: bool | str, dataset: str) -> bool:
    """``relaxed="auto"``: on iff ``dataset`` has relaxed-boundary rules."""
    if relaxed == "auto":
        return normalise_dataset(dataset) in RELAXATION_RULES
    if isinstance(relaxed, bool):
        return relaxed
    raise ValueError(f"relaxed must be True, False or 'auto', got {relaxed!r}")


def phase_scores(
    preds_per_video,
    targets_per_video,
    num_classes: int,
    *,
    fps: float = 1.0,
    relaxed: bool | str = "auto",
    matlab_compatible: bool = True,
    dataset: str = "cholec80",
    overlaps: Sequence[float] = DEFAULT_OVERLAPS,
) -> dict[str, float]:
    """All phase metrics of a test set given per-video label sequences (integer arrays in temporal order).

    Returns (percent): ``accuracy`` (frame-pooled, the SurgVISTA runner's top-1), the unrelaxed
    ``video_accuracy_mean/_std``, ``precision``, ``recall``, ``jaccard``, ``f1`` (+ ``_std``), the same prefixed
    ``relaxed_`` when relaxation is on (plus ``relaxed_accuracy``, frame-pooled), the per-video macro scores
    ``macro_precision/_recall/_f1`` (mean, ``_std`` over videos; ``video_macro_scores``), ``edit`` and
    ``f1@10/25/50``.
    ``relaxed="auto"`` relaxes iff ``dataset`` has rules (cholec80, autolaparo, m2cai16); the window is
    ``round(10 * fps)`` frames.
    """
    preds, targets = check_videos(preds_per_video, targets_per_video, num_classes)
    all_p, all_t = np.concatenate(preds), np.concatenate(targets)
    out = {"accuracy": float(np.count_nonzero(all_p == all_t)) / all_t.size * 100}
    out.update(aggregate_phase_scores([video_phase_scores(t, p, num_classes) for p, t in zip(preds, targets)]))
    if resolve_relaxed(relaxed, dataset):
        rules, window = relaxation(dataset, num_classes, fps)
        correct = [relaxed_correct(t, p, rules, window, matlab_compatible) for p, t in zip(preds, targets)]
        out["relaxed_accuracy"] = float(sum(int(c.sum()) for c in correct)) / all_t.size * 100
        videos = [video_phase_scores(t, p, num_classes, c) for p, t, c in zip(preds, targets, correct)]
        out.update(aggregate_phase_scores(videos, prefix="relaxed_"))
    macro = np.array([video_macro_scores(t, p) for p, t in zip(preds, targets)])
    for j, name in enumerate(("macro_precision", "macro_recall", "macro_f1")):
        out[name], out[name + "_std"] = mean(macro[:, j]), std(macro[:, j])
    out.update(segment_scores(preds, targets, overlaps))
    return out


def phase_table(
    preds_per_video,
    targets_per_video,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    fps: float = 1.0,
    relaxed: bool = False,
    matlab_compatible: bool = True,
    dataset: str = "cholec80",
) -> dict[str, dict[str, float]]:
    """Per-phase J/P/R/F1, unrelaxed or relaxed, keyed by class name: nanmean over videos of the clipped values
    (the rows ``Main.m`` prints) and their nanstd."""
    preds, targets = check_videos(preds_per_video, targets_per_video, num_classes)
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"phase_table: {len(names)} class names for num_classes={num_classes}")
    if relaxed:
        rules, window = relaxation(dataset, num_classes, fps)
        correct = [relaxed_correct(t, p, rules, window, matlab_compatible) for p, t in zip(preds, targets)]
    else:
        correct = [None] * len(preds)
    videos = [video_phase_scores(t, p, num_classes, c) for p, t, c in zip(preds, targets, correct)]
    table = {}
    for p, name in enumerate(names):
        row = {}
        for metric in ("jaccard", "precision", "recall", "f1"):
            vals = np.array([getattr(v, metric)[p] for v in videos])
            vals = np.where(vals > 100, 100.0, vals)
            row[metric], row[metric + "_std"] = nanmean(vals), nanstd(vals)
        table[name] = row
    return table
