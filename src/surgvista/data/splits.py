"""Consistency of one dataset's train / val / test manifests, checked before a fine-tuning run does any work.

* A video is in one split: two split files that share a ``video_id`` are refused (a model would be evaluated on a
  video it was trained on, or one split's predictions would be filed under another's video). One file used for two
  splits (``test_manifest: null`` = the val file) and a val file that is a copy of the test file (an adapter's
  ``_meta.val_is_test``, or the same rows) are one split under two names, not an overlap.
* Every split names the same classes: ``_meta.label_names[label]`` of each split that has it must be equal (the
  prediction files and figures of every split use one list of names).

Uniqueness *within* a manifest is checked when it is read (:func:`surgvista.data.manifest.check_unique_videos`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from surgvista.data.manifest import Manifest, ManifestError

SPLIT_ORDER = ("train", "val", "test")


def _rows(m: Manifest) -> list[tuple]:
    return [(e.dataset, e.video_id, str(e.source), e.num_frames, e.fps) for e in m.entries]


def _same_split(a: tuple[str, Manifest], b: tuple[str, Manifest]) -> bool:
    """Whether two split manifests are one split under two names (one file, or a copy of it)."""
    (name_a, ma), (name_b, mb) = a, b
    if Path(ma.path).resolve() == Path(mb.path).resolve():
        return True
    if {name_a, name_b} == {"val", "test"} and ma.meta.get("val_is_test") and mb.meta.get("val_is_test"):
        return True
    return _rows(ma) == _rows(mb)


def check_disjoint(splits: Mapping[str, Manifest] | Sequence[tuple[str, Manifest]]) -> None:
    """Raise :class:`ManifestError` naming both files and the shared ids if two split files share a ``video_id``
    (``splits``: ``{split: manifest}``, or ``(split, manifest)`` pairs where a split has several files)."""
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    items = list(splits.items()) if isinstance(splits, Mapping) else list(splits)
    named = sorted(items, key=lambda item: rank.get(item[0], len(rank)))
    for i, a in enumerate(named):
        for b in named[i + 1 :]:
            if _same_split(a, b):
                continue
            ids_b = {e.video_id for e in b[1].entries}
            shared = sorted({e.video_id for e in a[1].entries if e.video_id in ids_b})
            if shared:
                more = f" (and {len(shared) - 10} more)" if len(shared) > 10 else ""
                raise ManifestError(
                    f"{a[1].path} ({a[0]}) and {b[1].path} ({b[0]}) share video_id(s) {shared[:10]}{more}: a video "
                    "belongs to one split; remove it from one of them (one file for two splits, e.g. "
                    "data.test_manifest=null, is fine)"
                )


def _label_names(m: Manifest, label: str) -> list | None:
    names = (m.meta.get("label_names") or {}) if isinstance(m.meta, dict) else {}
    value = names.get(label) if isinstance(names, dict) else None
    return list(value) if value is not None else None


def _difference(ours: list, theirs: list) -> str:
    if len(ours) != len(theirs):
        return f"{len(ours)} classes vs {len(theirs)}"
    k = next(i for i, (x, y) in enumerate(zip(ours, theirs, strict=True)) if x != y)
    return f"class {k} is {ours[k]!r} vs {theirs[k]!r}"


def check_label_names(splits: Mapping[str, Manifest], label: str) -> None:
    """Raise :class:`ManifestError` if two splits' ``_meta.label_names[label]`` differ (splits without names are
    not compared)."""
    named = [(s, m, _label_names(m, label)) for s, m in splits.items()]
    named = [(s, m, n) for s, m, n in named if n is not None]
    for split, m, names in named[1:]:
        ref_split, ref, ref_names = named[0]
        if names != ref_names:
            raise ManifestError(
                f"{m.path} ({split}): _meta.label_names[{label!r}] differs from {ref.path} ({ref_split}): "
                f"{_difference(names, ref_names)}; every split must name the same classes in the same order"
            )


def check_class_count(splits: Mapping[str, Manifest], label: str, num_classes: int) -> None:
    """Raise :class:`ManifestError` if a split's ``_meta.label_names[label]`` does not have ``num_classes`` names."""
    for m in splits.values():
        names = _label_names(m, label)
        if names is not None and len(names) != num_classes:
            raise ManifestError(
                f"{m.path}: _meta.label_names[{label!r}] has {len(names)} classes but the model has "
                f"num_classes={num_classes}; set model.net.num_classes={len(names)} or fix the manifest"
            )


def check_splits(splits: Mapping[str, Manifest], label: str, num_classes: int | None = None) -> None:
    """The checks of this module over ``{split: manifest}`` (the splits a run uses); the class count only with
    ``num_classes``."""
    check_disjoint(splits)
    check_label_names(splits, label)
    if num_classes is not None:
        check_class_count(splits, label, num_classes)
