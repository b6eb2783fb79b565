"""Prepare a surgical video dataset: official download → manifests (+ extracted frames, checksums, stats).

    python -m surgvista.prepare cholec80 --raw /data/raw/cholec80 --out /data/surgvista/cholec80

Output (``<out>`` = ``${paths.data_dir}/<dataset>``): ``<split>.jsonl`` per split (``pretrain.jsonl`` lists the
videos used for pre-training), ``frames/<video_id>/<n>.jpg`` numbered 0..N-1 (unless ``--no-extract``: the
manifests then point into the original videos, read by decord at ``fps``), ``checksums.sha256`` (every source
file), ``stats.json`` (printed as a table) and ``splits.json`` where the split is seeded-random.

Resumable: a finished video leaves ``.prepare/<video_id>.json``; a re-run with the same options skips it.
Owned: ``.surgvista-written.json`` lists what prepare wrote; an ``--out`` holding other files is refused (unless
``--overwrite``, which writes beside them), and a file at one of prepare's names that it did not write is never
replaced.
See ``docs/datasets.md`` for every dataset's expected layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from surgvista.data.adapters import REGISTRY, PrepareError, Source, Timeline
from surgvista.data.adapters.base import as_fraction, native_indices, numeric_key
from surgvista.data.manifest import ManifestError, VideoEntry, frame_files, write_manifest
from surgvista.utils.io import atomic_write_text, same_or_nested, sha256_file
from surgvista.utils.owned_files import MARKER, PREPARE, foreign_names, record_written, shown, written_by

log = logging.getLogger("surgvista.prepare")
MARKER_VERSION = 1


class BadVideoError(PrepareError):
    """A source video that cannot be decoded or is too short."""


@dataclass(frozen=True)
class Options:
    """Frame extraction options (part of the resume key)."""

    fps: str | None = "1"  # manifest rate as a fraction string; None = every native frame
    extract: bool = True
    size: tuple[int, int] | None = None  # (W, H)
    keep_aspect: bool = False
    jpeg_quality: int = 90
    crop_black: bool = False

    def key(self) -> dict:
        return {"v": MARKER_VERSION, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}}


# --- image processing -------------------------------------------------------------------------------------
def crop_black_margin(img: Image.Image, threshold: int = 15, blur: int = 19, border: int = 10) -> Image.Image:
    """Cholec80 cut-margin (TMRNet): bounding box of non-black pixels of a height-300 copy (median-blurred)."""
    w, h = img.size
    scale = 300 / h
    small = img.convert("L").resize((max(1, round(w * scale)), 300), Image.BILINEAR)
    mask = Image.fromarray(((np.asarray(small) > threshold) * 255).astype(np.uint8)).filter(
        ImageFilter.MedianFilter(blur)
    )
    arr = np.asarray(mask)[:, border:-border] if mask.size[0] > 2 * border else np.asarray(mask)
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return img  # an all-black frame: keep it whole
    off = border if mask.size[0] > 2 * border else 0
    box = ((xs.min() + off) / scale, ys.min() / scale, (xs.max() + off + 1) / scale, (ys.max() + 1) / scale)
    return img.crop(tuple(int(round(v)) for v in box))


def process_image(img: Image.Image, opts: Options) -> Image.Image:
    """RGB conversion (RGBA, greyscale, palette → RGB), optional margin crop and resize."""
    img = img.convert("RGB")
    if opts.crop_black:
        img = crop_black_margin(img)
    if opts.size:
        w, h = opts.size
        if opts.keep_aspect:
            scale = min(w / img.width, h / img.height)
            w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        img = img.resize((w, h), Image.BILINEAR)
    return img


# --- per-video worker -------------------------------------------------------------------------------------
def _probe(path: Path) -> tuple[Fraction, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = stream.frames
            if not count:
                count = sum(1 for _ in container.demux(stream) if _.size)
    except (av.FFmpegError, IndexError, OSError) as e:
        raise BadVideoError(f"cannot open video {path}: {e}") from e
    if not rate or count <= 0:
        raise BadVideoError(f"video {path} has no frames or no frame rate (rate={rate}, frames={count})")
    return as_fraction(Fraction(rate.numerator, rate.denominator)), count


def _clip_indices(job: dict, native_fps: Fraction, count: int, fps: Fraction | None) -> list[int]:
    if job["clip"] is None:
        return native_indices(count, native_fps, fps)
    start, end = job["clip"]
    first = round(Fraction(start) * native_fps)
    last = min(math.floor(Fraction(end) * native_fps), count - 1)
    if job["clip_frame_limit"] is not None:
        last = min(last, job["clip_frame_limit"] - 1)
    return [first + k for k in native_indices(max(0, last - first + 1), native_fps, fps)]


def _save(img: Image.Image, folder: Path, positions: list[int], opts: Options) -> None:
    img = process_image(img, opts)
    for p in positions:
        img.save(folder / f"{p}.jpg", quality=opts.jpeg_quality)


def _extract_video(path: Path, wanted: list[int], folder: Path, opts: Options) -> int:
    """Decode ``path`` once, saving native frames ``wanted`` as ``<i>.jpg``; returns the decoded frame count."""
    import av

    where: dict[int, list[int]] = {}
    for i, k in enumerate(wanted):
        where.setdefault(k, []).append(i)
    last, decoded = max(wanted, default=-1), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in enumerate(container.decode(stream)):
                decoded = k + 1
                if k in where:
                    _save(frame.to_image(), folder, where[k], opts)
                if k >= last:
                    break
    except (av.FFmpegError, OSError) as e:
        raise BadVideoError(f"cannot decode video {path} (frame {decoded}): {e}") from e
    return decoded


def process_video(job: dict) -> dict:
    """Probe/extract one source; returns its timeline, digests and frame count (or ``{"error": …}``)."""
    opts: Options = job["options"]
    marker = Path(job["marker"])
    finished = _finished(job, marker, opts)
    if finished is not None:
        return finished
    fps = Fraction(opts.fps) if opts.fps is not None else None
    try:
        checksums, sha256, native_fps, count = _digest_source(job)
        native = _clip_indices(job, native_fps, count, fps)
        if opts.extract:
            native, count = _extract_frames(job, native, count, opts)
    except BadVideoError as e:
        shutil.rmtree(Path(job["frames_out"] + ".partial"), ignore_errors=True)
        return {"video_id": job["video_id"], "error": str(e)}
    result = {
        "video_id": job["video_id"],
        "options": opts.key(),
        "source": job["source_key"],
        "sha256": sha256,
        "native_fps": f"{native_fps.numerator}/{native_fps.denominator}",
        "native_count": count,
        "native": native,
        "checksums": checksums,
    }
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(result))
    return result


def _finished(job: dict, marker: Path, opts: Options) -> dict | None:
    """The result saved by an earlier run with the same options and source (marked ``resumed``), else ``None``."""
    if not marker.is_file():
        return None
    cached = json.loads(marker.read_text())
    done = not opts.extract or Path(job["frames_out"]).is_dir()
    if done and cached.get("options") == opts.key() and cached.get("source") == job["source_key"]:
        return {**cached, "resumed": True}
    return None


def _digest_source(job: dict) -> tuple[dict[str, str], str, Fraction, int]:
    """``(checksums by file, source digest, native fps, native frame count)`` of a video file or a frame folder
    (the folder's digest: of its files' digests and names)."""
    checksums = {}
    if job["frames"] is None:
        path = Path(job["path"])
        checksums[str(path)] = sha256 = sha256_file(path)
        probed = job.get("probed")  # from check_source: no second probe
        native_fps, count = (Fraction(probed[0]), probed[1]) if probed else _probe(path)
        return checksums, sha256, native_fps, count
    files = [Path(f) for f in job["frames"]]
    if not files:
        raise BadVideoError(f"frame folder {job['path']} has no image files")
    for f in files:
        checksums[str(f)] = sha256_file(f)
    sha256 = hashlib.sha256("".join(f"{checksums[str(f)]}  {f.name}\n" for f in files).encode()).hexdigest()
    return checksums, sha256, Fraction(job["frame_rate"]), len(files)


def _extract_frames(job: dict, native: list[int], count: int, opts: Options) -> tuple[list[int], int]:
    """Write native frames ``native`` as ``<frames_out>/<i>.jpg`` (through a ``.partial`` folder renamed when
    complete); returns ``(native, count)``, cut to what was decodable when the header promised more frames."""
    folder = Path(job["frames_out"])
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    if job["frames"] is None:
        decoded = _extract_video(Path(job["path"]), native, partial, opts)
        if native and decoded <= native[-1]:
            # the header promised more frames than the stream holds: keep what was decoded
            if job["clip"] is None:
                count = decoded
            native = [k for k in native if k < decoded]
    else:
        files = [Path(f) for f in job["frames"]]
        for i, k in enumerate(native):
            try:
                with Image.open(files[k]) as img:
                    _save(img, partial, [i], opts)
            except OSError as e:
                raise BadVideoError(f"cannot read frame image {files[k]}: {e}") from e
    partial.rename(folder)
    return native, count


def check_output_folder(out: str | Path, **raw_folders: str | Path | None) -> None:
    """Refuse an ``--out`` equal to, inside or containing a raw folder, before anything is written."""
    for flag, raw in raw_folders.items():
        if raw is None or not Path(raw).exists():
            continue
        if same_or_nested(out, raw):
            o, r = Path(out).resolve(), Path(raw).resolve()
            how = "is" if o == r else "is inside" if o.is_relative_to(r) else "contains"
            raise PrepareError(
                f"--out {out} {how} --{flag} {raw}: prepare never writes into the raw download; "
                "choose an output folder outside it (normally ${paths.data_dir}/<dataset>)"
            )


def _check_previous(out: Path, dataset: str) -> None:
    """A re-run resumes its own output; an output folder prepared for another dataset is never overwritten."""
    stats = out / "stats.json"
    if stats.is_file():
        try:
            previous = json.loads(stats.read_text()).get("dataset")
        except (ValueError, AttributeError):
            previous = None
        if previous not in (None, dataset):
            raise PrepareError(
                f"--out {out} holds the prepared {previous!r} dataset ({stats}); choose another output folder "
                f"for {dataset} (normally ${{paths.data_dir}}/{dataset})"
            )


FIXED_NAMES = ("frames", ".prepare", "checksums.sha256", "stats.json")  # what prepare writes besides manifests


def prepare_names(splits: tuple[str, ...]) -> set[str]:
    """Every top-level name prepare may write into ``--out`` for an adapter with ``splits``."""
    return {*FIXED_NAMES, "splits.json", *(f"{sp}.jsonl" for sp in (*splits, "val"))}


def _earlier_prepare(out: Path, dataset: str) -> bool:
    """``out`` holds an output of a prepare that kept no marker yet (its ``.prepare/`` or ``stats.json``)."""
    if (out / ".prepare").is_dir():
        return True
    try:
        return json.loads((out / "stats.json").read_text()).get("dataset") == dataset
    except (OSError, ValueError, AttributeError):
        return False


def check_out_owner(out: Path, dataset: str, splits: tuple[str, ...], overwrite: bool) -> None:
    """``--out`` is new, empty or prepare's own output (:mod:`surgvista.utils.owned_files`); files prepare did not
    write are refused unless ``overwrite``, and those at the names prepare writes are refused even then."""
    planned = prepare_names(splits)
    own = written_by(out, PREPARE)
    if own is None and out.is_dir() and _earlier_prepare(out, dataset):
        own = planned
    foreign = foreign_names(out, own or set())
    clash = [name for name in foreign if name in planned]
    if clash:
        raise PrepareError(
            f"--out {out} holds {shown(clash)}, which surgvista-prepare did not write (its {MARKER} does not list "
            "it); prepare never replaces files it did not write, even with --overwrite: move them away or choose "
            "another output folder"
        )
    if foreign and not overwrite:
        raise PrepareError(
            f"--out {out} holds files that surgvista-prepare did not write: {shown(foreign)}; choose a new or empty "
            "output folder, or pass --overwrite to write beside them (only prepare's own files are replaced)"
        )


def check_source(job: dict, min_frames: int, min_seconds: float) -> tuple[str, str] | None:
    """Cheap check of one source before any extraction (open + frame count, no decoding):
    ``("bad", reason)``, ``("short", reason)`` (shorter than the adapter's ``min_seconds``) or ``None``."""
    opts: Options = job["options"]
    try:
        if job["frames"] is None:
            native_fps, count = _probe(Path(job["path"]))
            job["probed"] = (f"{native_fps.numerator}/{native_fps.denominator}", count)
        elif not job["frames"]:
            return "bad", f"frame folder {job['path']} has no image files"
        else:
            native_fps, count = Fraction(job["frame_rate"]), len(job["frames"])
    except BadVideoError as e:
        return "bad", str(e)
    n = len(_clip_indices(job, native_fps, count, Fraction(opts.fps) if opts.fps is not None else None))
    if n < min_frames:
        return "bad", (
            f"{job['path']}: {n} frame(s) at the manifest rate, fewer than the required {min_frames} (one clip)"
        )
    if min_seconds and count / native_fps < min_seconds:
        return "short", f"{job['path']}: {float(count / native_fps):.1f} s, shorter than {min_seconds:g} s"
    return None


def validate_sources(
    jobs: list[dict], min_frames: int, min_seconds: float, progress: bool, dataset: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``(bad, dropped)``: reasons by video id, from :func:`check_source` on every job (with a progress bar)."""
    bad, dropped = {}, {}
    for job in tqdm(jobs, desc=f"check {dataset}", unit="video", disable=not progress, file=sys.stderr):
        found = check_source(job, min_frames, min_seconds)
        if found is not None:
            (bad if found[0] == "bad" else dropped)[job["video_id"]] = found[1]
    return bad, dropped


def _bad_videos(dataset: str, bad: dict[str, str], on_bad_video: str) -> None:
    """With ``on_bad_video=error``, one error listing every bad source."""
    if bad and on_bad_video == "error":
        listing = "; ".join(bad[v] for v in sorted(bad, key=numeric_key))
        raise BadVideoError(f"{dataset}: {len(bad)} bad video(s): {listing} (use --on-bad-video skip to skip them)")


# --- splits, stats ----------------------------------------------------------------------------------------
def random_split(ids: list[str], shares: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Seeded shuffle of ``ids`` cut by ``shares`` (the last split takes the rest)."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    total, out, start = sum(shares.values()), {}, 0
    names = list(shares)
    for i, name in enumerate(names):
        n = len(order) - start if i == len(names) - 1 else round(len(order) * shares[name] / total)
        out[name] = sorted(order[start : start + n])
        start += n
    return out


def load_or_make_split(path: Path, ids: list[str], shares: dict[str, float], seed: int) -> dict[str, list[str]]:
    """The saved split at ``path`` if it covers exactly ``ids`` and ``seed``; else a new one, saved."""
    if path.is_file():
        saved = json.loads(path.read_text())
        splits = saved.get("splits", {})
        if saved.get("seed") == seed and sorted(sum(splits.values(), [])) == sorted(ids):
            return splits
        log.warning("%s does not match the current videos/seed: writing a new split", path)
    splits = random_split(ids, shares, seed)
    atomic_write_text(path, json.dumps({"seed": seed, "shares": shares, "splits": splits}, indent=1) + "\n")
    return splits


def _per_frame(name: str, values) -> list:
    """One value per frame: a clip-level label (or a flat criteria vector) counts as one value."""
    if not isinstance(values, list):
        return [values]
    flat_criteria = name.endswith("criteria") and values and all(isinstance(v, (int, float)) for v in values)
    return [values] if flat_criteria else values


def check_annotated(dataset: str, counts: dict[str, dict[str, dict[str, int]]], sources: list[Source]) -> None:
    """A written split whose label column has no annotated frame is an error (wrong annotation file?)."""
    for split, per_label in counts.items():
        for name, c in per_label.items():
            if not any(n for k, n in c.items() if k not in ("unannotated", "-1")):
                files = sorted({str(f) for s in sources if split in s.splits for f in s.annotation_files})
                raise PrepareError(
                    f"{dataset}: split {split!r} has no frame with a {name!r} label ({sum(c.values())} frames, all "
                    f"unannotated); check the annotation file(s) {files[:3]}"
                )


def label_counts(entries: list[VideoEntry]) -> dict[str, dict[str, int]]:
    """Per label name: frames (or clips) per class id; ``-1``/``null`` = unannotated, ``none`` = no triplet."""
    counts: dict[str, Counter] = {}
    for e in entries:
        for name, values in e.labels.items():
            c = counts.setdefault(name, Counter())
            for v in _per_frame(name, values):
                if v is None:
                    c["unannotated"] += 1
                elif name.endswith("criteria"):
                    c["annotated"] += 1
                elif isinstance(v, list):
                    c["none"] += not v
                    for t in v:
                        c[str(t)] += 1
                else:
                    c[str(v)] += 1
    return {k: dict(sorted(v.items(), key=lambda kv: (len(kv[0]), kv[0]))) for k, v in counts.items()}


def print_table(stats: dict) -> None:
    """Videos, frames and hours per split (a rich console table), then the label counts and skipped videos."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats['dataset']}: {stats['out']}", title_justify="left")
    table.add_column("split")
    for name in ("videos", "frames", "hours"):
        table.add_column(name, justify="right")
    for split, v in stats["splits"].items():
        table.add_row(split, str(v["videos"]), str(v["frames"]), f"{v['hours']:.2f}")
    Console().print(table)
    for split, v in stats["splits"].items():
        for name, counts in v["labels"].items():
            shown = ", ".join(f"{k}:{n}" for k, n in counts.items() if n)
            print(f"  {split} {name}: {shown}")
    if stats["skipped"]:
        print(f"  skipped {len(stats['skipped'])}: " + "; ".join(s["reason"] for s in stats["skipped"][:5]))


# --- prepare ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareOptions:
    """How :func:`prepare` samples, extracts and checks a dataset (the options of ``surgvista-prepare``)."""

    fps: float | str | None = "default"  # manifest rate; "default": the dataset's; None: every native frame
    extract: bool = True  # False: the manifests point into the original videos
    size: tuple[int, int] | None = None  # (W, H) of extracted frames
    keep_aspect: bool = False
    jpeg_quality: int = 90
    crop_black: bool = False
    workers: int = 1
    on_bad_video: str = "error"  # or "skip"
    split: str | None = None  # official split variant
    seed: int = 0  # of random splits
    min_frames: int = 1
    progress: bool = True  # progress bars and the stats table
    videos: str | Path | None = None  # another download that holds the videos (Cholec80-CVS: the Cholec80 root)
    overwrite: bool = False  # write into an --out holding other files (prepare's own files only are replaced)

    def frame_options(self, fps_frac: Fraction | None) -> Options:
        """The frame extraction options (the resume key) at the resolved rate ``fps_frac``."""
        fps_text = None if fps_frac is None else f"{fps_frac.numerator}/{fps_frac.denominator}"
        size = tuple(self.size) if self.size else None
        return Options(fps_text, self.extract, size, self.keep_aspect, self.jpeg_quality, self.crop_black)


def prepare(dataset: str, raw: str | Path, out: str | Path, options: PrepareOptions | None = None) -> dict:
    """Prepare ``dataset`` from its official download ``raw`` into ``out``; returns the stats dict.

    ``options``: :class:`PrepareOptions` (default: its defaults). Nothing is ever written into ``raw`` or
    ``options.videos``.
    """
    options = options or PrepareOptions()
    adapter = _open_adapter(dataset, raw, out, options)
    fps_frac = _resolve_fps(adapter.default_fps if options.fps == "default" else options.fps)
    out = Path(out)
    _check_previous(out, dataset)
    check_out_owner(out, dataset, adapter.splits, options.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    record_written(out, PREPARE, FIXED_NAMES + (("splits.json",) if adapter.random_split else ()))
    sources = _discover(adapter, dataset, out, options.seed)
    opts = options.frame_options(fps_frac)
    jobs = [_job(s, out, opts) for s in sources]
    results = _process(jobs, adapter, dataset, options)
    entries, skipped, checksums, hours = _collect(dataset, sources, results, fps_frac, out, opts, adapter.splits)
    common = _manifest_meta(dataset, adapter, fps_frac, options.extract, raw)
    if common.get("val_is_test") and "test" in entries:
        entries["val"] = list(entries["test"])
    counts = {sp: label_counts(es) for sp, es in entries.items() if es}
    check_annotated(dataset, counts, sources)
    written = _write_manifests(out, entries, sources, common, adapter.splits)
    _write_checksums(out / "checksums.sha256", checksums, Path(raw))
    stats = {
        "dataset": dataset,
        "out": str(out),
        "variant": adapter.variant,
        "extracted": options.extract,
        "fps": common["fps"],
        "splits": _split_stats(entries, counts, hours),
        "skipped": skipped + [{"video_id": None, "reason": r} for r in getattr(adapter, "skipped", [])],
        "manifests": {sp: str(p) for sp, p in written.items()},
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    if options.progress:
        print_table(stats)
    return stats


def _manifest_meta(dataset: str, adapter, fps_frac: Fraction | None, extract: bool, raw) -> dict:
    """Every manifest's ``_meta``: dataset, labels, sampling, variant, the raw folder and the adapter's extras."""
    return {
        "version": 1,
        "dataset": dataset,
        "label_names": adapter.label_names,
        "fps": None if fps_frac is None else float(fps_frac),
        "extracted": extract,
        "variant": adapter.variant,
        "raw": str(Path(raw).resolve()),
        **adapter.meta(),
    }


def _open_adapter(dataset: str, raw, out, options: PrepareOptions):
    """The dataset's adapter over ``raw``, after checking the output folder and the options."""
    videos = options.videos
    check_output_folder(out, raw=raw, videos=videos)
    if dataset not in REGISTRY:
        raise PrepareError(f"unknown dataset {dataset!r}; expected one of {sorted(REGISTRY)}")
    if options.on_bad_video not in ("error", "skip"):
        raise ValueError(f"on_bad_video must be 'error' or 'skip', got {options.on_bad_video!r}")
    adapter = REGISTRY[dataset](Path(raw), options.split, Path(videos) if videos else None)
    if not options.extract and not adapter.supports_no_extract:
        raise PrepareError(
            f"{dataset}: --no-extract is not possible (its frames or clips are not addressable in the "
            "original files); run with frame extraction"
        )
    return adapter


def _resolve_fps(fps: float | str | None) -> Fraction | None:
    """The sampling rate as an exact fraction (``None``: every native frame)."""
    fps_frac = as_fraction(fps) if fps is not None else None
    if fps_frac is not None and fps_frac <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return fps_frac


def _discover(adapter, dataset: str, out: Path, seed: int) -> list[Source]:
    """The adapter's videos, with unique ids and, for datasets without an official split, a stored random one."""
    sources = adapter.discover()
    if not sources:
        raise PrepareError(
            f"{dataset}: no videos found under {adapter.raw}; expected {adapter.description} (docs/datasets.md)"
        )
    ids = Counter(s.video_id for s in sources)
    dups = [k for k, n in ids.items() if n > 1]
    if dups:
        raise PrepareError(f"{dataset}: duplicate video ids {dups[:5]} under {adapter.raw}")
    if adapter.random_split:
        splits = load_or_make_split(out / "splits.json", [s.video_id for s in sources], adapter.random_split, seed)
        member = {v: split for split, vs in splits.items() for v in vs}
        for s in sources:
            s.splits = (member[s.video_id],)
    return sources


def _process(jobs: list[dict], adapter, dataset: str, options: PrepareOptions) -> dict[str, dict]:
    """Validate and process every job; ``video_id`` → result, with ``error`` for the videos left out."""
    min_frames, on_bad_video, progress = options.min_frames, options.on_bad_video, options.progress
    bad, dropped = validate_sources(jobs, min_frames, adapter.min_seconds, progress, dataset)
    _bad_videos(dataset, bad, on_bad_video)
    todo = [j for j in jobs if j["video_id"] not in bad and j["video_id"] not in dropped]
    results = _run(todo, options.workers, progress, dataset)
    for res in results.values():  # a header that promised more frames than the stream holds
        if "error" not in res and len(res["native"]) < min_frames:
            res["error"] = f"{res['video_id']}: {len(res['native'])} decodable frame(s), fewer than {min_frames}"
    _bad_videos(dataset, {v: r["error"] for v, r in results.items() if "error" in r}, on_bad_video)
    for video_id in {**dropped, **bad}:
        results[video_id] = {"error": bad.get(video_id) or dropped[video_id], "dropped": video_id in dropped}
    return results


def _collect(
    dataset: str,
    sources: list[Source],
    results: dict[str, dict],
    fps_frac: Fraction | None,
    out: Path,
    opts: Options,
    splits: tuple[str, ...],
) -> tuple[dict[str, list[VideoEntry]], list[dict], dict, Counter]:
    """Manifest entries per split (every split of ``splits`` present), the videos skipped, file checksums and hours
    per split."""
    entries: dict[str, list[VideoEntry]] = {sp: [] for sp in splits}
    skipped, checksums, hours = [], {}, Counter()
    for src in sources:
        res = results[src.video_id]
        if "error" in res:
            (log.info if res.get("dropped") else log.warning)("skipping %s: %s", src.video_id, res["error"])
            skipped.append({"video_id": src.video_id, "reason": res["error"]})
            continue
        tl = Timeline(Fraction(res["native_fps"]), res["native_count"], fps_frac, res["native"])
        entry = _entry(dataset, src, res, tl, out, opts)
        for sp in src.splits:
            entries.setdefault(sp, []).append(entry)
            hours[sp] += float(len(tl.native) / tl.fps if tl.fps and src.clip else tl.duration) / 3600
        checksums.update(res["checksums"])
    for s in sources:
        for f in s.annotation_files:
            checksums.setdefault(str(f), None)
    return entries, skipped, checksums, hours


def _split_stats(entries: dict[str, list[VideoEntry]], counts: dict, hours: Counter) -> dict:
    """Per non-empty split: its videos, frames, hours and label counts (``stats.json``)."""
    return {
        sp: {"videos": len(es), "frames": sum(e.num_frames for e in es), "hours": round(hours[sp], 6),
             "labels": counts[sp]}
        for sp, es in entries.items()
        if es
    }  # fmt: skip


def _write_manifests(
    out: Path, entries: dict[str, list[VideoEntry]], sources: list[Source], common: dict, splits: tuple[str, ...]
) -> dict[str, Path]:
    """``<out>/<split>.jsonl`` of every non-empty split (atomic); a split emptied since an earlier run is removed."""
    same_video = {s.video_id: s.meta["same_video_as"] for s in sources if s.meta.get("same_video_as")}
    record_written(out, PREPARE, [f"{sp}.jsonl" for sp, es in entries.items() if es])
    written = {}
    for sp, es in entries.items():
        if not es:
            continue
        same = {e.video_id: same_video[e.video_id] for e in es if e.video_id in same_video}
        meta = {**common, "split": sp, **({"same_video_as": same} if same else {})}
        written[sp] = write_manifest(out / f"{sp}.jsonl", sorted(es, key=lambda e: numeric_key(e.video_id)), meta)
    for sp in set(splits) - set(written):
        (out / f"{sp}.jsonl").unlink(missing_ok=True)
    return written


def _job(src: Source, out: Path, opts: Options) -> dict:
    frames = None if src.is_video else [str(f) for f in src.frames]
    if src.is_video:
        st = src.path.stat()
        key = f"{src.path}:{st.st_size}:{st.st_mtime_ns}"
    else:
        key = f"{src.path}:{len(frames)}:{frames[-1] if frames else ''}"
    if src.clip is not None:
        key += f"@{src.clip}:{src.meta.get('clip_frame_limit')}"
    return {
        "video_id": src.video_id,
        "path": str(src.path),
        "frames": frames,
        "frame_rate": str(src.frame_rate),
        "clip": src.clip,
        "clip_frame_limit": src.meta.get("clip_frame_limit"),
        "options": opts,
        "frames_out": str(out / "frames" / src.video_id),
        "marker": str(out / ".prepare" / f"{src.video_id}.json"),
        "source_key": key,
    }


def _run(jobs: list[dict], workers: int, progress: bool, dataset: str) -> dict[str, dict]:
    results = {}
    bar = tqdm(total=len(jobs), desc=f"prepare {dataset}", unit="video", disable=not progress, file=sys.stderr)
    if workers <= 1:
        for job in jobs:
            results[job["video_id"]] = process_video(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_video, job): job["video_id"] for job in jobs}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    resumed = sum(1 for r in results.values() if r.get("resumed"))
    if resumed:
        log.info("%s: %d of %d videos already prepared (resumed)", dataset, resumed, len(jobs))
    return results


def _entry(dataset: str, src: Source, res: dict, tl: Timeline, out: Path, opts: Options) -> VideoEntry:
    labels = src.labels(tl) if src.labels else {}
    n = len(tl.native)
    for name, values in labels.items():
        if isinstance(values, list) and len(values) != n:
            raise PrepareError(
                f"{dataset}: adapter produced {len(values)} {name!r} labels for {n} frames of {src.video_id} (bug)"
            )
    rate = float(tl.fps) if tl.fps is not None else None
    if opts.extract:
        return VideoEntry(
            dataset,
            src.video_id,
            "frames",
            (out / "frames" / src.video_id).resolve(),
            n,
            rate if rate is not None else float(tl.native_fps),
            labels,
            res["sha256"],
        )
    if src.is_video:
        return VideoEntry(dataset, src.video_id, "video", src.path.resolve(), n, rate, labels, res["sha256"])
    # an image sequence read in place: it must already be numbered 0..N-1 and used whole
    try:
        files = frame_files(src.path)
    except ManifestError as e:
        raise PrepareError(f"{dataset}: --no-extract needs frame folders numbered 0..N-1: {e}") from e
    if len(files) != n:
        raise PrepareError(
            f"{dataset}: --no-extract cannot subsample {src.path} ({len(files)} frames at "
            f"{float(tl.native_fps):g} fps) to {rate} fps; extract instead"
        )
    return VideoEntry(
        dataset, src.video_id, "frames", src.path.resolve(), n, float(tl.native_fps), labels, res["sha256"]
    )


def _write_checksums(path: Path, checksums: dict[str, str | None], raw: Path) -> None:
    raw = raw.resolve()
    lines = []
    for name in sorted(checksums):
        p = Path(name).resolve()
        digest = checksums[name] or sha256_file(p)
        rel = p.relative_to(raw) if p.is_relative_to(raw) else p
        lines.append(f"{digest}  {rel}")
    atomic_write_text(path, "\n".join(lines) + "\n")
