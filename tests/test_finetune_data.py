"""Fine-tuning data: samplers, clip-consistent augmentation, Mixup/CutMix on clips, prediction files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from surgvista.data.clip_augment import ClipRandAugment, EvalClipTransform, TrainClipTransform, make_mixup, mix_clips
from surgvista.data.downstream import DownstreamDataset, uniform_clip_indices
from surgvista.data.manifest import ManifestError, read_manifest, write_manifest
from surgvista.evaluation.predictions import (
    PredictionCollector,
    PredictionFileError,
    read_prediction_file,
    write_prediction_files,
)


def test_uniform_clip_indices_follow_the_reference():
    assert uniform_clip_indices(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert uniform_clip_indices(35, 8) == [0, 4, 8, 12, 16, 20, 24, 28]  # tail beyond T·interval dropped
    assert uniform_clip_indices(5, 8) == [0, 1, 2, 3, 4, 4, 4, 4]  # padded with the last frame


def _textured_clip(t: int = 4, h: int = 48, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return np.repeat(frame[None], t, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_train_augmentation_is_identical_on_every_frame(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    transform = TrainClipTransform(32, hflip=0.5, reprob=1.0)  # erasing always on
    out = transform(_textured_clip())
    assert out.shape == (3, 4, 32, 32)
    frames = out.transpose(0, 1)
    # Same ops/crop/flip: identical pixels outside the erased box; the box itself is the same on all frames
    # (its noise is drawn per frame), so the set of differing pixels is one rectangle shared by all frames.
    diff = (frames[1:] != frames[:1]).any(1)  # (T-1, H, W)
    for d in diff:
        assert torch.equal(d, diff[0])
    if diff[0].any():
        ys, xs = torch.nonzero(diff[0], as_tuple=True)
        box = diff[0][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.float().mean() > 0.9  # a rectangle


def test_randaugment_draws_once_per_clip():
    from PIL import Image

    random.seed(1)
    np.random.seed(1)
    aug = ClipRandAugment("rand-m9-n4-mstd0.5-inc1")
    img = Image.fromarray(_textured_clip(1)[0])
    outs = aug([img, img, img])
    assert all(np.array_equal(np.asarray(outs[0]), np.asarray(o)) for o in outs[1:])
    changed = 0
    for _ in range(5):  # and it does augment
        changed += not np.array_equal(np.asarray(aug([img])[0]), np.asarray(img))
    assert changed


def test_eval_views():
    clip = _textured_clip()
    assert EvalClipTransform(32)(clip).shape == (3, 4, 32, 32)
    multi = EvalClipTransform(32, ("squash", "hflip", "center"))(clip)
    assert multi.shape == (3, 3, 4, 32, 32)
    assert torch.allclose(multi[1], multi[0].flip(-1))
    with pytest.raises(ValueError, match="unknown eval view"):
        EvalClipTransform(32, ("tencrop",))


def test_cutmix_box_is_shared_by_all_frames():
    torch.manual_seed(0)
    np.random.seed(0)
    mixup = make_mixup(5, mixup=0.0, cutmix=1.0, label_smoothing=0.1)
    video = torch.stack([torch.full((3, 4, 16, 16), 0.0), torch.full((3, 4, 16, 16), 1.0)])
    mixed, soft = mix_clips(mixup, video.clone(), torch.tensor([0, 3]))
    box = mixed[0, 0, 0] == 1.0
    assert box.any()
    assert all(torch.equal(mixed[0, c, t] == 1.0, box) for c in range(3) for t in range(4))
    assert soft.shape == (2, 5) and torch.allclose(soft.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="even batch"):
        mix_clips(mixup, video[:1], torch.tensor([0]))


def _phase_manifest(demo_root, tmp_path, names=None):
    m = read_manifest(demo_root / "train.jsonl")
    entry = m.entries[0]
    entry.labels["phase"][:3] = [-1, -1, -1]
    meta = {"label_names": {"phase": names if names is not None else m.meta["label_names"]["phase"]}}
    return write_manifest(tmp_path / "m.jsonl", [entry], meta), entry


def test_frame_sampler_skips_unannotated_targets_but_keeps_context(demo_root, tmp_path):
    path, entry = _phase_manifest(demo_root, tmp_path)
    ds = DownstreamDataset(path, "phase", 7, EvalClipTransform(32), num_frames=4, sampling_rate=2, backend="pyav")
    assert len(ds) == entry.num_frames - 3
    assert ds.samples[0].tolist() == [0, 3]
    assert ds.frame_ids(0) == [1, 1, 1, 3]  # frames 1 (unannotated) are context
    item = ds[0]
    assert item["video"].shape == (3, 4, 32, 32) and int(item["target"]) == entry.labels["phase"][3]
    assert (item["video_index"], item["frame_index"], item["index"]) == (0, 3, 0)


def test_class_count_disagreeing_with_the_manifest_is_an_error(demo_root, tmp_path):
    path, _ = _phase_manifest(demo_root, tmp_path)
    with pytest.raises(ManifestError, match=r"has 7 classes but the model has num_classes=5"):
        DownstreamDataset(path, "phase", 5, EvalClipTransform(32), backend="pyav")
    path, _ = _phase_manifest(demo_root, tmp_path, names=None)
    m = read_manifest(path)
    m.entries[0].labels["phase"][5] = 9
    bad = write_manifest(tmp_path / "bad.jsonl", m.entries)  # no names: values are range-checked
    with pytest.raises(ManifestError, match=r"frame 5: label 'phase' must be an int in \[0, 7\)"):
        DownstreamDataset(bad, "phase", 7, EvalClipTransform(32), backend="pyav")


def test_prediction_files_roundtrip_and_malformed_files(tmp_path):
    col = PredictionCollector()
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    # sample 1 twice (distributed padding): its probabilities are averaged
    col.update(
        torch.tensor([2, 0, 1]), torch.tensor([1, 0, 0]), torch.tensor([0, 0, 5]), probs[:3], torch.tensor([2, 0, 1])
    )
    col.update(torch.tensor([1]), torch.tensor([0]), torch.tensor([5]), probs[3:], torch.tensor([1]))
    preds = col.compute()
    assert preds["index"].tolist() == [0, 1, 2]
    assert np.allclose(preds["probs"][1], [0.25, 0.25, 0.5])
    files = write_prediction_files(tmp_path, preds, ["vid/a", "vid_b"], ["x", "y", "z"])
    assert [f.name for f in files] == ["vid_a.csv", "vid_b.csv"]
    back = read_prediction_file(files[0])
    assert back["frame"].tolist() == [0, 5] and back["target"].tolist() == [0, 1]
    assert back["prediction"].tolist() == [1, 2] and back["classes"] == ["x", "y", "z"]

    bad = tmp_path / "bad.csv"
    bad.write_text("frame,target,prediction,prob_x\n0,1,1,0.5\n1,1,oops,0.5\n")
    with pytest.raises(PredictionFileError, match=r"bad.csv:3: non-numeric"):
        read_prediction_file(bad)
    bad.write_text("frame,label\n0,1\n")
    with pytest.raises(PredictionFileError, match=r"bad.csv:1: expected header"):
        read_prediction_file(bad)
    bad.write_text("frame,target,prediction,prob_x,prob_y\n0,1,1,0.5\n")
    with pytest.raises(PredictionFileError, match=r"bad.csv:2: expected 5 columns, got 4"):
        read_prediction_file(bad)
