"""Clip sampling, crops, readers, manifests and the demo dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from surgvista.data.annotations import CHOLEC80_PHASES, AnnotationError, read_phase_file
from surgvista.data.clips import VideoClipDataset
from surgvista.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
from surgvista.data.readers import EntryReader, VideoDecodeError, open_reader
from surgvista.data.sampling import causal_clip_indices
from surgvista.data.transforms import CenterCrop, MultiScaleCrop, crop_offsets, crop_sizes


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        (0, [0] * 16),
        (5, [1] * 15 + [5]),
        (15, [3] * 13 + [7, 11, 15]),
        (20, [0] * 11 + [4, 8, 12, 16, 20]),
        (29, [1] * 9 + [5, 9, 13, 17, 21, 25, 29]),
        (69, list(range(9, 70, 4))),
    ],
)
def test_causal_sampler_reference_table(anchor, expected):
    assert causal_clip_indices(anchor, 16, 4) == expected


def test_crop_candidates_for_512x320():
    pairs = crop_sizes(512, 320, 224)
    assert {w for w, _ in pairs} == {320, 280, 240, 211} == {h for _, h in pairs}
    assert len(pairs) == 10
    assert all(abs([320, 280, 240, 211].index(w) - [320, 280, 240, 211].index(h)) <= 1 for w, h in pairs)
    offsets = crop_offsets(512, 320, 240, 211)
    assert len(offsets) == 13
    assert offsets[:5] == [(0, 0), (272, 0), (0, 108), (272, 108), (136, 54)]
    assert crop_sizes(1080, 1080, 224)[0] == (1080, 1080) and 224 in {w for w, _ in crop_sizes(256, 256, 224)}


def test_multiscale_crop_is_shared_by_all_frames_and_normalised():
    random.seed(0)
    frames = np.random.default_rng(0).integers(0, 255, (1, 80, 96, 3), dtype=np.uint8).repeat(4, 0)
    clip = MultiScaleCrop(64)(frames)
    assert clip.shape == (3, 4, 64, 64)
    assert torch.equal(clip[:, 0], clip[:, 3])
    flat = CenterCrop(64)(np.full((2, 80, 96, 3), 255, np.uint8))
    torch.testing.assert_close(
        flat[:, 0, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_decord_and_pyav_readers_agree_on_demo_video(demo_root):
    video = demo_root / "videos" / "video01.mp4"
    dec, pyav = open_reader(video, "decord"), open_reader(video, "pyav")
    assert len(dec) == len(pyav) and dec.fps == pytest.approx(25)
    ids = [0, 3, 17, len(dec) - 1]
    a, b = dec.read(ids), pyav.read(ids)
    assert a.shape == (4, 80, 96, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    with pytest.raises(IndexError, match="out of range"):
        dec.read([len(dec)])


def test_memory_reader_decodes_a_video_once_equal_to_pyav(demo_root, tmp_path):
    """``data.backend=memory``: the same frames as PyAV, decoded once per process and shared; a changed file is
    decoded again (the cache key holds its size and modification time)."""
    from surgvista.data.readers import MemoryReader

    video = tmp_path / "v.mp4"
    video.write_bytes(next((demo_root / "videos").glob("*.mp4")).read_bytes())
    pyav = open_reader(video, "pyav")
    first, second = open_reader(video, "memory"), open_reader(video, "memory")
    ids = [0, 3, 3, len(pyav) - 1, 7]
    np.testing.assert_array_equal(first.read(ids), pyav.read(sorted(set(ids)))[[0, 1, 1, 3, 2]])
    assert second.frames is first.frames and first.fps == pyav.fps and len(first) == len(pyav)
    video.write_bytes(video.read_bytes()[:-1] + b"\0")  # another file at the same path
    assert open_reader(video, "memory").frames is not first.frames
    with pytest.raises(IndexError, match="out of range"):
        first.read([len(first)])
    MemoryReader._videos.clear()


def test_entry_reader_maps_manifest_fps_to_native_frames(demo_root):
    entry = read_manifest(demo_root / "train.jsonl").entries[0]
    assert entry.fps == 5.0
    frames = EntryReader("decord").read(entry, [2])
    direct = open_reader(entry.source).read([10])
    assert np.array_equal(frames, direct)


def test_demo_labels_are_cholec80_format_in_phase_order(demo_root):
    label_file = demo_root / "phase_annotations" / "video01-phase.txt"
    lines = label_file.read_text().splitlines()
    assert lines[0] == "Frame\tPhase" and lines[1] == "0\tPreparation"
    phases = read_phase_file(label_file)
    assert phases == sorted(phases) and set(phases) == set(range(len(CHOLEC80_PHASES)))
    manifest = read_manifest(demo_root / "train.jsonl")
    assert manifest.meta["label_names"]["phase"] == list(CHOLEC80_PHASES)
    entry = manifest.entries[0]
    assert entry.labels["phase"] == [phases[5 * i] for i in range(entry.num_frames)]


def test_phase_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "video01-phase.txt"
    bad.write_text("Frame\tPhase\n0\tPreparation\n1\tSuturing\n")
    with pytest.raises(AnnotationError, match=r"video01-phase.txt:3: unknown phase 'Suturing'"):
        read_phase_file(bad)


def test_clip_dataset_samples_and_locates(demo_root):
    ds = VideoClipDataset([demo_root / "train.jsonl"], CenterCrop(64), num_frames=4, sampling_rate=2)
    counts = [e.num_frames for e in ds.entries]
    assert len(ds) == sum(counts)
    assert ds.locate(0) == (ds.entries[0], 0)
    assert ds.locate(counts[0]) == (ds.entries[1], 0)
    assert ds.locate(len(ds) - 1) == (ds.entries[1], counts[1] - 1)
    sample = ds[counts[0] + 5]
    assert sample["video"].shape == (3, 4, 64, 64) and sample["index"] == counts[0] + 5
    with pytest.raises(IndexError):
        ds.locate(len(ds))


def _write_frames(folder: Path, numbers, mode="RGB", ext=".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        Image.new(mode, (20, 10), color=(n * 20 % 255,) * len(mode)).save(folder / f"{n:05d}{ext}")


def test_frame_folder_reader_sorts_numerically_and_converts_to_rgb(tmp_path):
    folder = tmp_path / "vid"
    _write_frames(folder, range(12), mode="RGBA")
    reader = open_reader(folder)
    assert len(reader) == 12
    frames = reader.read([9, 10, 11])
    assert frames.shape == (3, 10, 20, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [180, 200, 220]  # 10 after 9, not after 1


def test_frame_folder_with_gap_is_refused(tmp_path):
    folder = tmp_path / "gappy"
    _write_frames(folder, [0, 1, 2, 4, 5], ext=".jpg")
    with pytest.raises(ManifestError, match=r"gappy has a gap: missing frames \[3\]"):
        open_reader(folder)
    entry = VideoEntry("x", "gappy", "frames", folder, 5, 1.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [entry])
    with pytest.raises(ManifestError, match="gappy has a gap"):
        read_manifest(manifest)


def test_missing_video_file_is_named(tmp_path):
    entry = VideoEntry("x", "v1", "video", tmp_path / "videos" / "v1.mp4", 10, None)
    manifest = write_manifest(tmp_path / "m.jsonl", [entry])
    with pytest.raises(FileNotFoundError, match=r"m.jsonl:1: video file not found: .*videos/v1.mp4"):
        read_manifest(manifest)


def test_corrupt_mp4_is_named(tmp_path, demo_root):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for backend in ("decord", "pyav"):
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            open_reader(broken, backend)
    entry = VideoEntry("x", "broken", "video", broken, 10, None)
    ds = VideoClipDataset([write_manifest(tmp_path / "m.jsonl", [entry])], CenterCrop(32), 2, 1)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        ds[0]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"dataset": "x", "video_id": "v", "format": "video", "source": "v.mp4"}, "missing key.*num_frames"),
        ({"dataset": "x", "video_id": "v", "format": "gif", "source": "v", "num_frames": 3}, "format 'gif'"),
        (
            {
                "dataset": "x",
                "video_id": "v",
                "format": "video",
                "source": "v",
                "num_frames": 3,
                "labels": {"phase": [0, 1]},
            },
            "label 'phase' has 2 values but num_frames is 3",
        ),
    ],
)
def test_malformed_manifest_rows(tmp_path, row, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path, check_media=False)
    path.write_text("{not json\n")
    with pytest.raises(ManifestError, match="m.jsonl:1: not valid JSON"):
        read_manifest(path)


def test_pyav_fallback_when_decord_is_missing(demo_root, monkeypatch, caplog):
    import importlib.util

    from surgvista.data.readers import PyAVReader, available_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real(name, *a))
    available_backend.cache_clear()
    try:
        readers = [open_reader(demo_root / "videos" / name, "decord") for name in ("video02.mp4", "video01.mp4")]
    finally:
        available_backend.cache_clear()  # the next test sees the real decord again
    assert all(isinstance(r, PyAVReader) for r in readers)
    assert caplog.text.count("decord is not installed") == 1  # the reader choice is logged once


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        EntryReader("opencv")
