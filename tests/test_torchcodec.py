"""The torchcodec reader: the same pixels as decord and PyAV on the same files, errors that name the file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from surgvista.data import readers
from surgvista.data.clips import VideoClipDataset
from surgvista.data.manifest import VideoEntry, write_manifest
from surgvista.data.readers import EntryReader, TorchCodecReader, VideoDecodeError, open_reader, torchcodec_problem
from surgvista.data.transforms import MultiScaleCrop

# torchcodec needs the system's FFmpeg shared libraries (.ci/run installs them); without them there is nothing
# to test, and the reason says what is missing.
pytestmark = pytest.mark.skipif(torchcodec_problem() is not None, reason=f"torchcodec unusable: {torchcodec_problem()}")


def write_mp4(path, frames: np.ndarray, gop: int) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=1, options={"crf": "23"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.gop_size = gop
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


@pytest.fixture(scope="module")
def moving_frames() -> np.ndarray:
    """30 frames of a colour gradient with a square moving across it (every frame distinct)."""
    y, x = np.mgrid[0:48, 0:64]
    frames = np.empty((30, 48, 64, 3), np.uint8)
    for t in range(30):
        frames[t] = np.stack([x * 4, y * 5, np.full_like(x, 40 + 6 * t)], -1)
        frames[t, 10:26, 2 * t : 2 * t + 16] = (250, 250, 30)
    return frames


def read_all(path, backend: str, ids: list[int]) -> np.ndarray:
    reader = open_reader(path, backend)
    assert len(reader) == 30, backend
    return reader.read(ids)


def test_torchcodec_is_pixel_identical_to_decord_and_pyav_on_demo_video(demo_root):
    video = demo_root / "videos" / "video01.mp4"
    tc = open_reader(video, "torchcodec")
    assert isinstance(tc, TorchCodecReader)
    dec, pyav = open_reader(video, "decord"), open_reader(video, "pyav")
    assert len(tc) == len(dec) == len(pyav) and tc.fps == pytest.approx(25)
    ids = list(range(len(tc)))
    frames = tc.read(ids)
    assert frames.shape == (len(ids), 80, 96, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, dec.read(ids)) and np.array_equal(frames, pyav.read(ids))
    with pytest.raises(IndexError, match="out of range"):
        tc.read([len(tc)])


@pytest.mark.parametrize("gop", [1, 12])
def test_torchcodec_random_access_matches_sequential_decoding(tmp_path, moving_frames, gop):
    path = tmp_path / f"g{gop}.mp4"
    write_mp4(path, moving_frames, gop)
    everything = read_all(path, "pyav", list(range(30)))
    assert np.abs(everything.astype(int) - moving_frames.astype(int)).mean() < 10  # the file holds those frames
    ids = [29, 3, 17, 3, 0, 28, 12]  # backwards seeks, repeats, across GOPs
    for backend in ("torchcodec", "decord", "pyav"):
        assert np.array_equal(read_all(path, backend, ids), everything[ids]), backend


def test_clip_dataset_with_torchcodec_equals_decord(demo_root):
    manifest = demo_root / "train.jsonl"
    samples = {}
    for backend in ("torchcodec", "decord"):
        random.seed(3)
        ds = VideoClipDataset(
            [manifest], MultiScaleCrop(48, normalize=False), num_frames=8, sampling_rate=2, backend=backend
        )
        samples[backend] = torch.stack([ds[i]["video"] for i in (0, 7, len(ds) - 1)])
    assert samples["torchcodec"].dtype == torch.uint8
    assert torch.equal(samples["torchcodec"], samples["decord"])


def test_corrupt_mp4_is_named_by_torchcodec(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError, match="broken.mp4 with torchcodec"):
        open_reader(broken, "torchcodec")
    entry = VideoEntry("x", "broken", "video", broken, 10, None)
    manifest = write_manifest(tmp_path / "m.jsonl", [entry])
    ds = VideoClipDataset([manifest], MultiScaleCrop(32), 2, 1, backend="torchcodec")
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        ds[0]


def test_unusable_torchcodec_is_refused_at_construction(monkeypatch):
    monkeypatch.setattr(readers, "torchcodec_problem", lambda: "no FFmpeg (test)")
    with pytest.raises(ValueError, match="video backend 'torchcodec' is not usable: no FFmpeg"):
        EntryReader("torchcodec")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent")
def test_torchcodec_nvdec_matches_cpu(demo_root):
    video = demo_root / "videos" / "video02.mp4"
    cpu, gpu = open_reader(video, "torchcodec"), open_reader(video, "torchcodec-cuda")
    ids = [0, 9, 33, len(cpu) - 1]
    on_gpu = gpu.read_tensor(ids)
    assert on_gpu.is_cuda and on_gpu.shape == (4, 80, 96, 3)
    # NVDEC's YUV→RGB conversion is not swscale's: close, not bit-identical
    assert np.abs(on_gpu.cpu().numpy().astype(int) - cpu.read(ids).astype(int)).mean() < 2.0
