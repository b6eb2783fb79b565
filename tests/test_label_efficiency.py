"""Label efficiency (nested, seeded video subsets, k-shot per class, the curve and its plot) and long clips (chunked
feature extraction, a 64-frame probe run on the demo data)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers import SMALL_DEMO, run_script, small_demo_set
from test_probe import probe_dm

from surgvista.cli import label_efficiency as cli
from surgvista.data.subsets import k_shot_indices, nested_video_subset, subset_size
from surgvista.evaluation.label_efficiency import collect_curves, plot_label_efficiency, write_label_efficiency
from surgvista.features.clips import chunked_features
from surgvista.models.zoo import StudentBackbone, TimmFrameBackbone
from surgvista.utils.errors import ConfigError

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


def test_video_subsets_are_nested_seeded_and_never_empty():
    ids = [f"video{i:02d}" for i in range(40)]
    subsets = [nested_video_subset(ids, f, seed=3) for f in FRACTIONS]
    assert [len(s) for s in subsets] == [1, 2, 4, 10, 40]  # round(f × 40), at least one video
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)  # the 5 % videos contain the 1 % ones
    assert nested_video_subset(list(reversed(ids)), 0.25, seed=3) == subsets[3]  # a function of the ids, not order
    assert nested_video_subset(ids, 0.25, seed=4) != subsets[3]  # another seed, another draw
    assert len(nested_video_subset(ids[:3], 0.01)) == 1 and subset_size(0.25, 6) == 2
    with pytest.raises(ConfigError, match="train_fraction=0"):
        nested_video_subset(ids, 0.0)


def test_k_shot_per_class_is_nested_and_skips_unannotated():
    targets = np.array([0] * 10 + [1] * 3 + [2] * 6 + [-1] * 5)
    one, five = k_shot_indices(targets, 1, seed=0), k_shot_indices(targets, 5, seed=0)
    assert sorted(np.bincount(targets[one])) == [1, 1, 1]
    assert list(np.bincount(targets[five])) == [5, 3, 5]  # a class with fewer samples: all of them
    assert set(one) <= set(five) and all(targets[i] >= 0 for i in five)
    assert k_shot_indices(targets, 5, seed=1) != five
    with pytest.raises(ConfigError, match="single-label"):
        k_shot_indices(np.zeros((4, 3)), 1)


def test_probe_data_keeps_whole_videos_and_k_shots(demo_root, tmp_path):
    full = probe_dm(demo_root, tmp_path)
    full.prepare_data()
    full.setup("fit")
    ids = full.meta["video_ids"]["train"]
    assert len(ids) == SMALL_DEMO["num_videos"] - SMALL_DEMO["num_val_videos"]
    for fraction in (0.01, 0.5):
        dm = probe_dm(demo_root, tmp_path)
        dm.subset["train_fraction"] = fraction
        dm.setup("fit")
        kept = set(nested_video_subset(ids, fraction, 0))
        want = [ids[int(v)] in kept for v in full.data["train"]["video_index"]]  # every sample of a kept video
        torch.testing.assert_close(dm.data["train"]["pooled"], full.data["train"]["pooled"][torch.tensor(want)])
        assert dm.subset_record()["train_videos"] == len(kept) >= 1
        assert torch.equal(dm.data["val"]["pooled"], full.data["val"]["pooled"])  # evaluation splits untouched
    shots = probe_dm(demo_root, tmp_path)
    shots.subset["train_shots"] = 2
    shots.setup("fit")
    counts = torch.bincount(shots.data["train"]["target"])
    assert counts.max() <= 2 and (counts > 0).sum() == full.data["train"]["target"].unique().numel()


def write_run(root, name: str, fraction: float, top1: float, ci: dict | None = None) -> None:
    run = root / name
    run.mkdir(parents=True)
    rec = {"dataset": "demo", "backbone": "b", "protocol": "linear", "train_fraction": fraction}
    rec |= {"metrics": {"test/top1": top1}, **({"ci": ci} if ci else {})}
    (run / "probe.json").write_text(json.dumps(rec))


def test_curve_bands_and_plot_file(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", 0.1, 40.0)
    write_run(sweep, "1", 0.1, 50.0)  # a second subset seed: the band is the range over seeds
    write_run(sweep, "2", 1.0, 80.0, ci={"top1": {"lo": 70.0, "hi": 88.0}})  # a bootstrap interval: the band
    curves = collect_curves(sweep)
    (c,) = curves.values()
    assert list(c["fraction"]) == [0.1, 1.0] and list(c["mean"]) == [45.0, 80.0]
    assert list(c["lo"]) == [40.0, 70.0] and list(c["hi"]) == [50.0, 88.0] and list(c["runs"]) == [2, 1]
    png = write_label_efficiency(sweep)
    assert png == sweep / "label_efficiency.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().endswith(f"label efficiency: {png}")
    rows = list(csv.DictReader((sweep / "label_efficiency.csv").open()))
    assert [float(r["top1_mean"]) for r in rows] == [45.0, 80.0]
    arrays = {"x": {"fraction": [0.01, 1.0], "mean": [1.0, 2.0], "lo": [0.5, 1.5], "hi": [1.5, 2.5]}}
    assert plot_label_efficiency(arrays, tmp_path / "p.png", "top1").stat().st_size > 0
    assert cli.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "label_efficiency.png").is_file()


def test_chunked_extraction_equals_unchunked():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 8, 32, 32)
    frames = TimmFrameBackbone("vit_tiny_patch16_224", model_kwargs={"img_size": 32, "depth": 1}).eval()
    with torch.no_grad():  # a per-frame backbone: chunks of 2 frames give exactly the whole clip's features
        whole, chunks = frames.features(video), chunked_features(frames, video, 2)
    for a, b in zip(chunks, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    student = StudentBackbone(preset="tiny", img_size=32, num_frames=4, depth=1).eval()
    with torch.no_grad():  # a 4-frame video backbone: each chunk is its own clip, tokens in time order
        tokens, pooled = chunked_features(student, video, 4)
        parts = [student.features(video[:, :, i : i + 4]) for i in (0, 4)]
        assert torch.equal(chunked_features(student, video[:, :, :4], 4)[0], parts[0][0])  # one chunk: one call
    torch.testing.assert_close(tokens, torch.cat([p[0] for p in parts], 1))
    torch.testing.assert_close(pooled, (parts[0][1] + parts[1][1]) / 2)
    with pytest.raises(ConfigError, match="chunk_frames=3"):
        chunked_features(student, video, 3)


@pytest.mark.slow  # ~17 s: 64-frame clips decoded and extracted in chunks, then a probe
def test_64_frame_clips_run_on_the_demo_data(demo_root, tmp_path):
    run_script(
        "train.py",
        "experiment=probe_demo_long",
        *small_demo_set(demo_root),
        f"data.cache_root={tmp_path / 'cache'}",
        "data.input_size=32",
        "backbone.num_frames=4",
        "+backbone.depth=1",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.val_target_stride=4",
        "data.test_target_stride=4",
        "trainer.max_epochs=1",
        "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    record = json.loads((tmp_path / "run" / "probe.json").read_text())
    meta = json.loads((next((tmp_path / "cache" / "clips").iterdir()) / "meta.json").read_text())
    assert meta["storage"]["chunk_frames"] == 4 and meta["backbone"]["num_frames"] == 4
    assert 0 <= record["metrics"]["test/top1"] <= 100
