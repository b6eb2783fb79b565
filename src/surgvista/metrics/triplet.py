"""Surgical action triplet recognition: video-wise AP of ``ivtmetrics``.

The protocol (component disentangling by max, per-video AP, nanmean over videos then classes, ``ignore_null``)
and the scikit-learn version trap of ``ivtmetrics`` are in ``docs/metrics.md``. ``ivtmetrics`` itself is not
imported; the tests check equality with ``ivtmetrics==0.1.5``. Everything in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from surgvista.data.vocab import CHOLECT50_INSTRUMENTS, CHOLECT50_IVT, CHOLECT50_TARGETS, CHOLECT50_VERBS
from surgvista.metrics.ap import average_precision_per_class
from surgvista.metrics.stats import nanmean

COMPONENTS = ("i", "v", "t", "iv", "it", "ivt")


@dataclass(frozen=True)
class ComponentMap:
    """Decomposition of ``N`` triplet classes into instrument/verb/target ids.

    ``ivt``: (N, 3) ``(i, v, t)`` per triplet id; ``iv = i * num_verbs + v``, ``it = i * num_targets + t``;
    ``null_triplets``: ids dropped from ``ivt`` by ``ignore_null``.
    """

    ivt: tuple[tuple[int, int, int], ...]
    instruments: tuple[str, ...]
    verbs: tuple[str, ...]
    targets: tuple[str, ...]
    null_triplets: tuple[int, ...] = ()
    _columns: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = np.asarray(self.ivt, dtype=np.int64).reshape(-1, 3)
        for col, names, what in (
            (0, self.instruments, "instrument"),
            (1, self.verbs, "verb"),
            (2, self.targets, "target"),
        ):
            if table.size and (table[:, col].min() < 0 or table[:, col].max() >= len(names)):
                raise ValueError(f"ComponentMap: {what} ids must lie in [0, {len(names) - 1}]")
        bad = [k for k in self.null_triplets if not 0 <= k < len(table)]
        if bad:
            raise ValueError(f"ComponentMap: null triplet ids {bad} outside [0, {len(table) - 1}]")
        i, v, t = table.T
        self._columns.update(
            {
                "ivt": np.arange(len(table)),
                "i": i,
                "v": v,
                "t": t,
                "iv": i * len(self.verbs) + v,
                "it": i * len(self.targets) + t,
            }
        )

    @property
    def num_triplets(self) -> int:
        return len(self.ivt)

    def column(self, component: str) -> np.ndarray:
        """Component id of every triplet, shape (N,)."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown triplet component {component!r}; expected one of {COMPONENTS}")
        return self._columns[component]

    def classes(self, component: str) -> np.ndarray:
        """The component's class ids (distinct values of its column, increasing)."""
        return np.unique(self.column(component))

    def class_names(self, component: str) -> list[str]:
        """Readable names of ``classes(component)`` (``"hook,dissect,gallbladder"``, ``"hook,dissect"``, ...)."""
        nv, nt = len(self.verbs), len(self.targets)
        if component == "ivt":
            return [f"{self.instruments[i]},{self.verbs[v]},{self.targets[t]}" for i, v, t in self.ivt]
        fmt = {
            "i": lambda k: self.instruments[k],
            "v": lambda k: self.verbs[k],
            "t": lambda k: self.targets[k],
            "iv": lambda k: f"{self.instruments[k // nv]},{self.verbs[k % nv]}",
            "it": lambda k: f"{self.instruments[k // nt]},{self.targets[k % nt]}",
        }[component]
        return [fmt(int(k)) for k in self.classes(component)]

    def decompose(self, x: np.ndarray, component: str) -> np.ndarray:
        """(F, N) triplet scores or labels -> (F, K) component values: max over the triplets of each class."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_triplets:
            raise ValueError(f"expected an (F, {self.num_triplets}) triplet array, got shape {x.shape}")
        if component == "ivt":
            return x
        col = self.column(component)
        return np.stack([x[:, col == k].max(axis=1) for k in self.classes(component)], axis=1)


CHOLECT50 = ComponentMap(
    CHOLECT50_IVT, CHOLECT50_INSTRUMENTS, CHOLECT50_VERBS, CHOLECT50_TARGETS, null_triplets=tuple(range(94, 100))
)


def _check(targets_per_video, probs_per_video, num_classes: int) -> tuple[list, list]:
    targets = [np.asarray(t) for t in targets_per_video]
    probs = [np.asarray(p, dtype=np.float64) for p in probs_per_video]
    if len(targets) != len(probs) or not targets:
        raise ValueError(
            f"triplet AP: got {len(probs)} probability and {len(targets)} target arrays; expected the "
            "same non-zero number of videos"
        )
    for i, (t, p) in enumerate(zip(targets, probs)):
        if t.ndim != 2 or t.shape[1] != num_classes or t.shape != p.shape:
            raise ValueError(
                f"triplet AP: video {i} targets {t.shape} / probabilities {p.shape}; expected two "
                f"(frames, {num_classes}) arrays"
            )
    return targets, probs


def video_ap(
    targets_per_video,
    probs_per_video,
    component: str = "ivt",
    component_map: ComponentMap | None = CHOLECT50,
    ignore_null: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(class_ids, AP per class, mAP)`` of one component, video-wise (``docs/metrics.md``), in percent.

    The AP vector covers all classes of the component (null triplets included); ``mAP`` excludes the null
    triplets for ``ivt`` when ``ignore_null``. ``component_map=None``: plain multi-label AP over the columns
    (``ivt`` only, no null handling).
    """
    if component_map is None:
        if component != "ivt":
            raise ValueError(f"component {component!r} needs a component_map; without one only 'ivt' is defined")
        num = np.asarray(targets_per_video[0]).shape[-1] if len(targets_per_video) else 0
    else:
        num = component_map.num_triplets
    targets, probs = _check(targets_per_video, probs_per_video, num)
    per_video = []
    for t, p in zip(targets, probs):
        if component_map is not None:
            t, p = component_map.decompose(t, component), component_map.decompose(p, component)
        per_video.append(average_precision_per_class(t, p))
    ap = np.array([nanmean(col) for col in np.stack(per_video, axis=1)]) * 100
    ids = component_map.classes(component) if component_map is not None else np.arange(num)
    keep = np.ones(len(ids), dtype=bool)
    if ignore_null and component == "ivt" and component_map is not None:
        keep[list(component_map.null_triplets)] = False
    return ids, ap, nanmean(ap[keep])


def triplet_scores(
    targets_per_video,
    probs_per_video,
    component_map: ComponentMap | None = CHOLECT50,
    components: Sequence[str] = COMPONENTS,
    ignore_null: bool = True,
) -> dict[str, float]:
    """``{"mAP_i": ..., ..., "mAP_ivt": ...}`` (percent) for per-video (frames, N) multi-hot targets and
    probabilities (sigmoid outputs)."""
    return {
        f"mAP_{c}": video_ap(targets_per_video, probs_per_video, c, component_map, ignore_null)[2] for c in components
    }
