"""The pre-training data path: mixture, leakage guard, K clips per visit, on-device normalisation, data-wait
metric, bad media handling and the throughput benchmark (tiny mode)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import av
import lightning as L
import numpy as np
import pytest
import torch
from helpers import ROOT
from PIL import Image

from surgvista.data.clips import VideoClipDataset, collate_clips
from surgvista.data.datamodule import MixtureDataModule, MixtureSampler
from surgvista.data.leakage import LeakageError, resolve_split
from surgvista.data.manifest import ManifestError, VideoEntry, write_manifest
from surgvista.data.readers import VideoDecodeError
from surgvista.data.transforms import CenterCrop, MultiScaleCrop, normalize_clip

SIZE = (40, 32)  # width, height of the synthetic frames


def frame_folder(folder: Path, n: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
        img.convert(mode).save(folder / f"{i:05d}.png")
    return folder


def mp4(path: Path, n: int, faststart: bool = False) -> Path:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = *SIZE, "yuv420p"
        for _ in range(n):
            frame = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    return path


def dataset_dir(root: Path, name: str, videos: dict[str, int], split: str = "pretrain", sha: dict | None = None):
    entries = [VideoEntry(name, vid, "frames", frame_folder(root / name / "frames" / vid, n, seed=len(vid)), n, 1.0,
                          sha256=(sha or {}).get(vid)) for vid, n in videos.items()]
    return write_manifest(root / name / f"{split}.jsonl", entries)


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    dataset_dir(root, "cholec80", {"video01": 8, "video41": 6}, sha={"video41": "ab" * 32})
    dataset_dir(root, "heichole", {"Hei-Chole1": 10})
    dataset_dir(root, "cholec80", {"video41": 6, "video42": 4}, split="test")
    return root


def mix(root: Path, **kw) -> MixtureDataModule:
    args = {"include": ["cholec80", "heichole"], "batch_size": 2, "num_workers": 0, "num_frames": 4,
            "sampling_rate": 2, "input_size": 16, "pin_memory": False}
    dm = MixtureDataModule(str(root), **{**args, **kw})
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------------------------- mixture
def test_mixture_concatenates_included_datasets_with_overridable_manifests(mix_root, tmp_path):
    dm = mix(mix_root)
    assert len(dm.train_set) == 8 + 6 + 10
    assert [e.dataset for e in dm.train_set.entries] == ["cholec80", "cholec80", "heichole"]
    assert dm.train_set.manifest_sizes(2) == [14, 10]
    other = dataset_dir(tmp_path, "elsewhere", {"v1": 5})
    dm = mix(mix_root, include=["heichole", "gensurgery"], manifests={"gensurgery": str(other)})
    assert dm.train_set.manifest_sizes(2) == [10, 5]
    assert dm.train_dataloader().sampler.order is None  # a plain permutation: proportional to frames
    with pytest.raises(FileNotFoundError, match=r"pitvis/pretrain.jsonl"):
        mix(mix_root, include=["pitvis"])


def test_mixture_weights_set_dataset_shares(mix_root):
    dm = mix(mix_root, weights={"cholec80": 1, "heichole": 3})
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler.order.__self__, MixtureSampler) and len(sampler) == 24
    draws = []
    for epoch in range(40):  # a new draw every epoch, the same draw for the same epoch
        sampler.set_epoch(epoch)
        draws += [i for i, _ in sampler]
    sampler.set_epoch(3)
    assert [i for i, _ in sampler] == draws[3 * 24 : 4 * 24]
    assert abs(np.mean(np.asarray(draws) >= 14) - 0.75) < 0.05
    assert set(draws) == set(range(24))
    with pytest.raises(ValueError, match=r"missing \['heichole'\]"):
        mix(mix_root, weights={"cholec80": 1})


# --------------------------------------------------------------------------------------------- leakage
def test_leakage_guard_refuses_a_test_video_and_names_it(mix_root):
    with pytest.raises(LeakageError, match=r"cholec80/video41 .* of .*cholec80/test.jsonl \(same dataset and video id"):
        mix(mix_root, exclude_from=["cholec80_test"])
    mix(mix_root, include=["heichole"], exclude_from=["cholec80_test"])  # no overlap: fine
    assert resolve_split("autolaparo_val", "/d") == Path("/d/autolaparo/val.jsonl")
    with pytest.raises(ValueError, match="<dataset>_<split>"):
        resolve_split("cholec80", "/d")


def test_leakage_guard_matches_sha256_across_names_and_override_logs(mix_root, tmp_path, caplog):
    renamed = dataset_dir(tmp_path, "endoscapes", {"renamed": 3}, split="test", sha={"renamed": "AB" * 32})
    with pytest.raises(LeakageError, match=r"cholec80/video41 .* is endoscapes/renamed .*same sha256"):
        mix(mix_root, exclude_from=[str(renamed)])
    with caplog.at_level(logging.WARNING):
        dm = mix(mix_root, exclude_from=["cholec80_test", str(renamed)], allow_leakage=True)
    assert len(dm.train_set) == 24
    assert "allow_leakage=true" in caplog.text and "cholec80/video41" in caplog.text


# ------------------------------------------------------------------------------- clips and normalisation
def test_k_clips_per_visit_have_independent_crops_and_flatten(mix_root):
    ds = VideoClipDataset([mix_root / "heichole" / "pretrain.jsonl"], MultiScaleCrop(16, normalize=False), 4, 2,
                          num_clips=3)
    random.seed(0)
    items = [ds[i] for i in (5, 9)]
    assert items[0]["video"].shape == (3, 3, 4, 16, 16) and items[0]["video"].dtype == torch.uint8
    assert len({c.float().sum().item() for c in items[0]["video"]}) > 1  # different crops of the same frames
    batch = collate_clips(items)
    assert batch["video"].shape == (6, 3, 4, 16, 16)
    assert batch["index"].tolist() == [5, 5, 5, 9, 9, 9] and batch["skipped"] == 0


def test_on_device_normalisation_equals_cpu_normalisation(mix_root):
    batches = []
    for on_device in (False, True):
        dm = mix(mix_root, normalize_on_device=on_device)
        random.seed(0)
        torch.manual_seed(0)
        batches.append(next(iter(dm.train_dataloader())))
    cpu, raw = batches
    assert raw["video"].dtype == torch.uint8 and cpu["video"].dtype == torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moved = {**raw, "video": raw["video"].to(device)}
    out = dm.on_after_batch_transfer(moved, 0)
    torch.testing.assert_close(out["video"].cpu(), cpu["video"], rtol=1e-6, atol=1e-6)
    assert normalize_clip(torch.full((3, 1, 1, 1), 255, dtype=torch.uint8))[:, 0, 0, 0].tolist() == pytest.approx(
        [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)])


def test_tiny_fit_logs_data_wait_and_scales_lr_by_clips_per_sample(demo_root, tmp_path):
    from test_train import make_module

    from surgvista.callbacks.data_monitor import DataMonitor
    from surgvista.data.datamodule import DemoDataModule

    data = DemoDataModule(str(demo_root), num_videos=3, num_val_videos=1, video_frames=(60, 80), video_size=(96, 80),
                          batch_size=2, num_workers=0, num_frames=4, sampling_rate=2, input_size=64,
                          num_clips_per_video=2, normalize_on_device=True, pin_memory=False)
    model = make_module(clips_per_sample=2)
    monitor = DataMonitor()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, accelerator="cpu", devices=1,
                        logger=False, callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    pct = trainer.callback_metrics["train/data_wait_pct"].item()
    assert 0 <= pct <= 100 and 0 <= trainer.callback_metrics["train/data_wait_pct_epoch"].item() <= 100
    # global batch = 2 samples x 2 clips → lr = base_lr x 4 / 256
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.05 * 4 / 256)


# ------------------------------------------------------------------------------------------ bad media
def one_video(tmp_path: Path, entry: VideoEntry) -> Path:
    return write_manifest(tmp_path / f"{entry.video_id}.jsonl", [entry])


def test_corrupt_mp4_errors_or_is_skipped_counted_and_logged(tmp_path, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    good = mp4(tmp_path / "good.mp4", 12)
    manifest = write_manifest(tmp_path / "m.jsonl", [VideoEntry("x", "broken", "video", broken, 10, None),
                                                      VideoEntry("x", "good", "video", good, 12, None)])
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        VideoClipDataset([manifest], CenterCrop(16), 4, 1)[0]
    ds = VideoClipDataset([manifest], CenterCrop(16), 4, 1, on_bad_video="skip")
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in (0, 3, 9)]
    assert all(it["index"] >= 10 for it in items)  # replaced by samples of the good video (own index)
    assert [it["skipped"] for it in items] == [1, 1, 1] and ds.num_skipped == 3
    assert caplog.text.count("skipping x/broken") == 1 and "broken.mp4" in caplog.text
    assert collate_clips(items)["skipped"] == 3


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_truncated_mp4_is_named(tmp_path, backend):
    whole = mp4(tmp_path / "whole.mp4", 40, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    manifest = one_video(tmp_path, VideoEntry("x", "cut", "video", cut, 40, None))
    ds = VideoClipDataset([manifest], CenterCrop(16), 4, 1, backend=backend)
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        ds[39]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_shorter_than_its_manifest_row_is_named(tmp_path, backend):
    short = mp4(tmp_path / "short.mp4", 10)
    ds = VideoClipDataset([one_video(tmp_path, VideoEntry("x", "short", "video", short, 30, None))], CenterCrop(16),
                          4, 1, backend=backend)
    assert ds[9]["video"].shape == (3, 4, 16, 16)
    with pytest.raises(VideoDecodeError, match=r"short.mp4 has only 10 decoded frames .* needs frame 20"):
        ds[20]


def test_video_shorter_than_one_clip_is_refused_or_left_out(tmp_path, caplog):
    manifest = write_manifest(tmp_path / "m.jsonl", [
        VideoEntry("x", "tiny", "frames", frame_folder(tmp_path / "tiny", 3), 3, 1.0),
        VideoEntry("x", "ok", "frames", frame_folder(tmp_path / "ok", 6), 6, 1.0),
    ])
    with pytest.raises(ManifestError, match=r"tiny .*x/tiny.* has 3 frames, fewer than min_video_frames=4"):
        VideoClipDataset([manifest], CenterCrop(16), 4, 1, min_video_frames=4)
    with caplog.at_level(logging.WARNING):
        ds = VideoClipDataset([manifest], CenterCrop(16), 4, 1, min_video_frames=4, on_bad_video="skip")
    assert len(ds) == 6 and ds.num_dropped_videos == 1 and "left out 1 bad video" in caplog.text


def test_missing_frame_file_is_named_or_skipped(tmp_path):
    folder = frame_folder(tmp_path / "vid", 6)
    other = frame_folder(tmp_path / "other", 6)
    manifest = write_manifest(tmp_path / "m.jsonl", [VideoEntry("x", "vid", "frames", folder, 6, 1.0),
                                                      VideoEntry("x", "other", "frames", other, 6, 1.0)])
    ds = VideoClipDataset([manifest], CenterCrop(16), 4, 1)
    ds[0]  # the folder's reader is open (file list read)
    (folder / "00004.png").unlink()
    with pytest.raises(VideoDecodeError, match=r"cannot read frame image .*vid/00004.png"):
        ds[5]
    ds.on_bad_video = "skip"
    assert ds[5]["index"] >= 6 and ds.num_skipped == 1
    with pytest.raises(ManifestError, match=r"vid has a gap: missing frames \[4\]"):  # checked when indexed
        VideoClipDataset([manifest], CenterCrop(16), 4, 1)
    fresh = VideoClipDataset([manifest], CenterCrop(16), 4, 1, on_bad_video="skip")
    assert len(fresh) == 6 and fresh.num_dropped_videos == 1


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_greyscale_palette_and_alpha_frames_become_rgb(tmp_path, mode):
    folder = tmp_path / "vid"
    folder.mkdir()
    for i in range(3):
        grey = Image.new("L", SIZE, 100 + 50 * i)
        img = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257) if mode == "I;16" else grey.convert(mode)
        img.save(folder / f"{i}.png")
    ds = VideoClipDataset([one_video(tmp_path, VideoEntry("x", "vid", "frames", folder, 3, 1.0))],
                          CenterCrop(16, normalize=False), 3, 1)
    clip = ds[2]["video"]
    assert clip.shape == (3, 3, 16, 16)
    assert clip[:, :, 8, 8].tolist() == [[100, 150, 200]] * 3


# ------------------------------------------------------------------------------------------ benchmark
def test_throughput_benchmark_tiny_mode_runs(tmp_path):
    from helpers import run_script

    proc = run_script("bench/data_throughput.py", "--tiny", "--out", str(tmp_path / "bench"), cwd=ROOT)
    out = proc.stdout
    for name in ("reference", "frames", "decord", "torchcodec", "shards"):
        assert name in out
    assert "ratio to reference" in out and "shards/frames" in out


# ------------------------------------------------------------------------------------------ readers
def test_pyav_random_access_equals_sequential_decoding(demo_root, caplog):
    from surgvista.data.readers import PyAVReader, open_reader

    video = demo_root / "videos" / "video01.mp4"  # h264 with B-frames, GOP 12
    reader = open_reader(video, "pyav")
    assert isinstance(reader, PyAVReader)
    n = len(reader)
    for ids in ([0, 3, 17, n - 1], [40, 41, 44, 52, 60], [5, 5, 1, 30, 29], [n - 1, 0]):
        np.testing.assert_array_equal(reader.read(ids), reader._read_sequential(ids))
    assert np.abs(reader.read([7, 33]).astype(int) - open_reader(video).read([7, 33]).astype(int)).mean() < 2
    broken = PyAVReader(video)
    broken.fps *= 2  # timestamps no longer map onto frame numbers: must fall back, not return wrong frames
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(broken.read([3, 9]), reader._read_sequential([3, 9]))
    assert "decoding it sequentially" in caplog.text
