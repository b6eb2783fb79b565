"""Frozen-probe protocols: the heads, the clip-feature cache (reuse by a second protocol, resume, keys) and a
small grid with its leaderboard (one row per backbone × protocol, finite metrics)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import pytest
import torch
from helpers import ROOT, SMALL_DEMO, run_script, small_demo_overrides, small_demo_set
from hydra.utils import instantiate

from surgvista.callbacks.probing import ProbeMonitor, probe_accuracy
from surgvista.cli import leaderboard, pretrain_probe
from surgvista.evaluation.pretrain_probe import resolve_run_dir
from surgvista.features.clip_data import ProbeDataModule
from surgvista.features.clips import ClipFeatureCache
from surgvista.models.probes import AttentiveProbe, KNNProbe, LinearProbe
from surgvista.utils.errors import ConfigError

BACKBONE = {
    "_target_": "surgvista.models.zoo.StudentBackbone",
    "preset": "tiny",
    "img_size": 32,
    "num_frames": 4,
    "depth": 1,
}
CLIP_GEOMETRY = {"num_frames": 4, "sampling_rate": 2, "input_size": 32}


def probe_dm(demo_root, cache, inputs: str = "pooled", seed: int = 0) -> ProbeDataModule:
    return ProbeDataModule(
        source={"_target_": "surgvista.data.downstream.DemoDownstreamDataModule"},
        backbone={**BACKBONE, "seed": seed},
        cache_root=str(cache),
        inputs=inputs,
        shard_size=16,
        device="cpu",
        root=str(demo_root),
        num_videos=SMALL_DEMO["num_videos"],
        num_val_videos=SMALL_DEMO["num_val_videos"],
        video_frames=list(SMALL_DEMO["frames_per_video"]),
        video_size=list(SMALL_DEMO["size"]),
        label="phase",
        num_classes=7,
        batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        **CLIP_GEOMETRY,
    )


def test_linear_and_attentive_heads_build_lazily():
    tokens = torch.randn(5, 6, 24)
    for head, x in ((LinearProbe(3), tokens.mean(1)), (AttentiveProbe(3, num_heads=5), tokens)):
        with pytest.raises(RuntimeError, match="not built"):
            head(x)
        head.build(24)
        assert head(x).shape == (5, 3)
        with pytest.raises(ValueError, match="built for 24-d"):
            head.build(32)
    assert AttentiveProbe(2, input_dim=24, num_heads=5).attn.num_heads == 4  # nearest divisor of 24


def test_source_and_backbone_must_be_configs_with_a_target(tmp_path):
    source = {"_target_": "surgvista.data.downstream.DemoDownstreamDataModule"}
    with pytest.raises(ConfigError, match=r"data.source='surgvista.data.downstream.DemoDownstreamDataModule'"):
        ProbeDataModule(source=source["_target_"], backbone=BACKBONE, cache_root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.backbone='student'"):
        ProbeDataModule(source=source, backbone="student", cache_root=str(tmp_path))


def test_knn_votes_follow_the_weighted_rule():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    knn = KNNProbe(2, k=3, temperature=0.5)
    knn.fit(bank, torch.tensor([0, 0, 1, 1]))
    query = torch.tensor([[1.0, 0.2]])
    sim = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    top, idx = sim.topk(3)
    w = (top / 0.5).exp()[0]
    expected = torch.zeros(2).index_add_(0, torch.tensor([0, 0, 1, 1])[idx[0]], w) / w.sum()
    torch.testing.assert_close(knn(query).softmax(-1)[0], expected)
    multi = KNNProbe(3, k=2, temperature=1.0, multilabel=True)
    multi.fit(bank[:2], torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    share = multi(torch.tensor([[1.0, 0.0]])).sigmoid()[0]
    assert share[0] == pytest.approx(1 - 1e-6) and 0 < share[1] < 0.5 < share[2] < 1
    with pytest.raises(RuntimeError, match="empty bank"):
        empty = KNNProbe(2, input_dim=2)
        empty(query)


def test_second_protocol_reads_the_cache_and_extraction_resumes(demo_root, tmp_path, monkeypatch):
    calls = []
    extract = ClipFeatureCache._extract_shard

    def spy(self, backbone, ds, split, shard, *args):
        calls.append((split, shard))
        return extract(self, backbone, ds, split, shard, *args)

    monkeypatch.setattr(ClipFeatureCache, "_extract_shard", spy)
    linear = probe_dm(demo_root, tmp_path, "pooled")
    linear.prepare_data()
    linear.setup("fit")
    done = list(calls)
    assert {s for s, _ in done} == {"train", "val"}  # test = val manifest: stored once
    # A cached sample is the backbone's output on that sample's evaluation clip.
    ds = linear.source._dataset("train", linear.source.manifests()["train"], train=False)
    backbone = instantiate(BACKBONE).eval()
    with torch.no_grad():
        tokens, pooled = backbone.features(ds[5]["video"][None])
    torch.testing.assert_close(linear.data["train"]["pooled"][5], pooled[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(linear.data["train"]["tokens"][5].float(), tokens[0], rtol=0, atol=2e-3)
    assert int(linear.data["train"]["target"][5]) == int(ds[5]["target"])

    attentive = probe_dm(demo_root, tmp_path, "tokens")  # the second protocol on the same backbone
    attentive.prepare_data()
    attentive.setup("fit")
    assert calls == done and attentive.directory == linear.directory
    assert next(iter(attentive.train_dataloader()))["video"].shape[1:] == tokens.shape[1:]
    torch.testing.assert_close(attentive.data["test"]["pooled"], attentive.data["val"]["pooled"])
    assert attentive.video_ids("test") == attentive.video_ids("val")

    shards = sorted((linear.directory / "train").glob("shard_*.pt"))
    assert len(shards) >= 2
    shards[1].unlink()  # an interrupted extraction: only the missing shard is redone
    resumed = probe_dm(demo_root, tmp_path)
    resumed.prepare_data()
    resumed.setup("fit")
    assert calls[len(done) :] == [("train", 1)]
    torch.testing.assert_close(resumed.data["train"]["pooled"], linear.data["train"]["pooled"])
    assert probe_dm(demo_root, tmp_path, seed=1).directory != linear.directory  # other weights, other cache
    moved = shutil.copytree(demo_root, tmp_path / "moved")
    assert probe_dm(moved, tmp_path).directory == linear.directory  # the same data elsewhere: the same cache
    with next((moved / "videos").glob("*.mp4")).open("ab") as f:
        f.write(b"\0")
    assert probe_dm(moved, tmp_path).directory != linear.directory  # another video file: another cache


def test_grid_writes_one_leaderboard_row_per_backbone_and_protocol(demo_root, tmp_path, capsys):
    sweep = tmp_path / "grid"
    proc = run_script(
        "train.py",
        "-m",
        "experiment=probe_demo",
        "model/backbone=demo_student,demo_timm_vit",
        "probe=linear,attentive,knn",
        *small_demo_set(demo_root),
        f"data.cache_root={tmp_path / 'cache'}",
        "data.input_size=32",
        "data.num_frames=4",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "print_config=false",
        f"hydra.sweep.dir={sweep}",
    )
    out = proc.stdout + proc.stderr
    assert out.count("extracting with") == 2  # one extraction per backbone, three protocols each
    assert proc.stdout.strip().splitlines()[-1] == f"leaderboard: {sweep / 'leaderboard.csv'}"
    rows = list(csv.DictReader((sweep / "leaderboard.csv").open()))
    assert sorted((r["backbone"], r["protocol"]) for r in rows) == sorted(
        (b, p) for b in ("demo_student", "demo_timm_vit") for p in ("attentive", "knn", "linear")
    )
    for r in rows:
        assert r["dataset"] == "demo" and float(r["params_M"]) > 0 and float(r["clips_per_s"]) > 0
        for m in ("top1", "video_accuracy_mean", "jaccard", "precision", "recall"):  # F1 is NaN where P = R = 0
            assert math.isfinite(float(r[m])) and 0 <= float(r[m]) <= 100
        lo, top1, hi = (float(r[k]) for k in ("top1_lo", "top1", "top1_hi"))  # bootstrap over the test videos
        assert lo - 1e-4 <= top1 <= hi + 1e-4  # (the logged top1 is float32)
        assert "edit" in r and "f1@50" in r
    md = (sweep / "leaderboard.md").read_text()
    assert "| demo | demo_student |" in md and re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", md)
    capsys.readouterr()
    leaderboard.main([str(sweep), "--out", str(tmp_path)])  # the CLI on a finished grid
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"leaderboard: {tmp_path / 'leaderboard.csv'}"
    assert (tmp_path / "leaderboard.csv").read_text() == (sweep / "leaderboard.csv").read_text()


def test_probe_experiments_compose_for_every_benchmark_dataset(monkeypatch):
    from hydra import compose, initialize_config_dir

    datasets = sorted(p.stem.removeprefix("probe_") for p in (ROOT / "conf" / "experiment").glob("probe_*.yaml"))
    datasets = [d for d in datasets if d != "base" and not d.startswith(("demo", "proxy"))]  # the synthetic sets
    assert len(datasets) == 13
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for name in datasets:
            tasks = [p.stem for p in (ROOT / "conf" / "experiment").glob(f"*_{name}.yaml")]
            (task,) = [t for t in tasks if t.split("_")[0] in ("phase", "triplet", "cvs", "action")]
            ft = compose("train", overrides=[f"experiment={task}", "paths.data_dir=/d"])
            for probe in ("linear", "attentive", "knn"):
                cfg = compose("train", overrides=[f"experiment=probe_{name}", "paths.data_dir=/d", f"probe={probe}"])
                assert cfg.data._target_ == "surgvista.features.clip_data.ProbeDataModule"
                assert cfg.data.source == {"_target_": ft.data._target_}  # the task's data module, by _target_
                assert cfg.model._target_ == ft.model._target_  # the task's loss, metrics and outputs
                assert cfg.model.net.num_classes == ft.model.net.num_classes == cfg.data.num_classes
                for key in ("label", "sampler", "num_frames", "sampling_rate", "train_manifest", "test_manifest"):
                    assert cfg.data[key] == ft.data[key], (name, key)
                assert cfg.probe_name == probe and cfg.callbacks.probe.dataset == ft.data_name


def test_probe_accuracy_separates_learnable_from_random_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y_train, y_val = torch.arange(200) % 4, torch.arange(80) % 4
    x_train = centres[y_train] + torch.randn(200, 16, generator=g)
    x_val = centres[y_val] + torch.randn(80, 16, generator=g)
    clear = probe_accuracy(x_train, y_train, x_val, y_val, num_classes=4)
    assert clear["knn_top1"] > 95 and clear["linear_top1"] > 95
    shuffled = probe_accuracy(x_train, y_train[torch.randperm(200, generator=g)], x_val, y_val, num_classes=4)
    assert shuffled["knn_top1"] < 50 and shuffled["linear_top1"] < 50  # chance is 25


def test_probe_monitor_is_off_without_a_manifest_and_needs_both_splits(tmp_path):
    assert not ProbeMonitor().enabled
    with pytest.raises(ValueError, match="val_manifest"):
        ProbeMonitor(train_manifest=str(tmp_path / "train.jsonl"))


def test_probe_monitor_logs_during_experiment_demo(demo_root, tmp_path, capsys, monkeypatch):
    run_script(
        "train.py",
        "experiment=demo",
        *small_demo_overrides(demo_root),
        "callbacks.probe_monitor.every_n_epochs=1",
        "callbacks.probe_monitor.max_train=24",
        "callbacks.probe_monitor.max_val=8",
        f"hydra.run.dir={tmp_path}",
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("probe/knn_top1")]
    assert len(logged) == 1  # one epoch, every epoch
    for key in ("probe/knn_top1", "probe/linear_top1"):
        assert 0 <= float(logged[0][key]) <= 100
    assert float(logged[0]["probe/extract_s"]) > 0
    # The same run, probed after the fact: pre-trained weights vs two random inits of the architecture.
    pretrain_probe.main([str(tmp_path), "--seeds", "2", "--max-train", "16", "--max-val", "8"])
    result = json.loads((tmp_path / "probe_vs_random.json").read_text())
    assert result["train_clips"] == 16 and result["val_clips"] == 8
    for name in ("pretrained", "random_init"):
        for probe in ("knn_top1", "linear_top1"):
            scores = result[name][probe]["per_seed"]
            assert len(scores) == 2 and all(0 <= v <= 100 for v in scores)
    assert len(set(result["pretrained"]["knn_top1"]["per_seed"])) == 1  # k-NN of one set of weights: deterministic
    assert "random init" in capsys.readouterr().out
    monkeypatch.setenv("SURGVISTA_LOG_DIR", str(tmp_path))
    assert resolve_run_dir("${paths.log_dir}/x") == tmp_path / "x"
