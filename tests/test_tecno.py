"""TeCNO two-stage pipeline: causal MS-TCN, the per-frame feature cache, the module and the demo experiment."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, SMALL_DEMO, run_script, small_demo_set

import surgvista.features.frames as features
from surgvista.checkpoints.errors import CheckpointError
from surgvista.cli.features import main as extract_main
from surgvista.data.manifest import read_manifest
from surgvista.data.readers import EntryReader
from surgvista.data.sampling import causal_clip_indices
from surgvista.data.transforms import to_normalized_clip
from surgvista.features.frame_data import FeatureDataModule, FeatureDataset
from surgvista.models.mstcn import MSTCN
from surgvista.modules.tecno import TeCNOModule, median_frequency_weights

# A 1-block tiny video backbone on 2-frame clips at 32 px: extraction of the small demo set takes a second.
SETTINGS = {
    "backbone": {
        "_target_": "surgvista.models.classifier.VideoClassifier",
        "num_classes": 7,
        "preset": "tiny",
        "depth": 1,
        "img_size": 32,
        "num_frames": 2,
        "tubelet_size": 2,
        "drop_path_rate": 0.0,
    },
    "clip_len": 2,
    "clip_stride": 3,
    "input_size": 32,
    "batch_size": 5,
    "read_chunk": 4,
    "device": "cpu",
}


def manifests(root):
    return [str(root / "train.jsonl"), str(root / "val.jsonl")]


@pytest.fixture
def one_thread():
    """Tiny convolutions: intra-op threads only add overhead (and contention on shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_root):
    root = tmp_path_factory.mktemp("features")
    return features.extract_features(SETTINGS, manifests(demo_root), root, progress=False), root


@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_mstcn_shapes_and_causality(num_stages, one_thread):
    torch.manual_seed(0)
    net = MSTCN(12, 5, num_stages=num_stages, num_layers=3, num_f_maps=8).eval()
    x = torch.randn(2, 60, 12)
    out = net(x)
    assert out.shape == (num_stages, 2, 60, 5)
    y = x.clone()
    y[:, 25:] += torch.randn(2, 35, 12)
    torch.testing.assert_close(net(y)[:, :, :25], out[:, :, :25])  # the past never sees the future
    assert not torch.allclose(net(y)[:, :, 25:], out[:, :, 25:])
    # Receptive field: frame 0 never reaches t >= rf.
    rf = net.receptive_field
    assert rf == 1 + num_stages * 2 * 7
    z = x.clone()
    z[:, 0] += 10.0
    diff = (net(z) - out).abs().amax(dim=(0, 1, 3))
    assert diff[:rf].amax() > 0 and torch.all(diff[rf:] == 0)
    # The non-causal variant does look ahead.
    acausal = MSTCN(12, 5, num_stages=num_stages, num_layers=3, num_f_maps=8, causal=False).eval()
    assert not torch.allclose(acausal(y)[:, :, :25], acausal(x)[:, :, :25])
    with pytest.raises(ValueError, match=r"expects features \(B, T, 12\)"):
        net(torch.randn(1, 40, 11))


def test_median_frequency_weights():
    w = median_frequency_weights(torch.tensor([10, 40, 20, 0]))
    # present frequencies 1/7, 4/7, 2/7 -> median 2/7
    torch.testing.assert_close(w, torch.tensor([2.0, 0.5, 1.0, 1.0]))


def test_loss_masks_unannotated_frames_and_combines_stages():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 4)  # (stages, B, T, C)
    labels = torch.tensor([[0, -1, 2, 3, -1, 1]])
    weights = [1.0, 2.0, 0.5, 1.0]
    module = TeCNOModule(num_classes=4, input_dim=8, dataset="demo", class_weights=weights)
    keep = labels[0] >= 0
    per_stage = [F.cross_entropy(s[0][keep], labels[0][keep], weight=torch.tensor(weights)) for s in logits]
    torch.testing.assert_close(module._loss(logits, labels), (per_stage[0] + per_stage[1]) / 2)
    summed = TeCNOModule(num_classes=4, input_dim=8, dataset="demo", class_weights=weights, stage_reduction="sum")
    torch.testing.assert_close(summed._loss(logits, labels), per_stage[0] + per_stage[1])
    quirk = TeCNOModule(num_classes=4, input_dim=8, dataset="demo", class_weights="none", loss_on_softmax=True)
    expected = F.cross_entropy(logits[0, 0][keep].softmax(-1), labels[0][keep])
    torch.testing.assert_close(quirk._loss(logits[:1], labels), expected)
    assert module._loss(logits, torch.full((1, 6), -1)) == 0  # no annotated frame: zero, not NaN
    with pytest.raises(ValueError, match="class_weights has 3 values but num_classes is 4"):
        TeCNOModule(num_classes=4, dataset="demo", class_weights=[1.0, 1.0, 1.0])


def test_cache_holds_causal_clip_features_labels_and_frames(cache, demo_root):
    directory, _ = cache
    entries = [e for m in manifests(demo_root) for e in read_manifest(m).entries]
    assert len(entries) == SMALL_DEMO["num_videos"]
    extractor = features.build_extractor(SETTINGS)
    reader = EntryReader()
    for entry in entries:
        item = torch.load(directory / "demo" / f"{entry.video_id}.pt", weights_only=True)
        n = entry.num_frames
        assert item["features"].shape == (n, 192) and item["features"].dtype == torch.float32
        assert item["frames"].tolist() == list(range(n))
        assert item["labels"].tolist() == entry.labels["phase"]
        assert item["fps"] == entry.fps
    # The buffered extraction equals running the backbone on each causal clip on its own.
    entry = entries[0]
    item = torch.load(directory / "demo" / f"{entry.video_id}.pt", weights_only=True)
    for t in (0, 4, entry.num_frames - 1):
        clip = to_normalized_clip(torch.from_numpy(reader.read(entry, causal_clip_indices(t, 2, 3))), 32)
        torch.testing.assert_close(extractor(clip[None])[0], item["features"][t], atol=1e-5, rtol=1e-4)


def test_cache_is_reused_and_keyed_by_backbone(cache, demo_root, monkeypatch, tmp_path):
    directory, root = cache
    stamps = {p: p.stat().st_mtime_ns for p in directory.rglob("*.pt")}

    def no_build(settings):
        raise AssertionError("the backbone was built although every video is cached")

    monkeypatch.setattr(features, "build_extractor", no_build)
    assert features.extract_features(SETTINGS, manifests(demo_root), root, progress=False) == directory
    assert {p: p.stat().st_mtime_ns for p in directory.rglob("*.pt")} == stamps
    monkeypatch.undo()

    # Another backbone (init seed, checkpoint contents, clip geometry) gets another cache folder.
    ckpt = tmp_path / "backbone.pt"
    backbone = features.build_extractor(SETTINGS).backbone
    torch.save({"state_dict": {f"net.{k}": v for k, v in backbone.state_dict().items()}}, ckpt)
    with_ckpt = {**SETTINGS, "ckpt": str(ckpt), "ckpt_prefix": "net."}
    keys = {
        features.cache_key(s) for s in (SETTINGS, {**SETTINGS, "seed": 1}, {**SETTINGS, "clip_stride": 2}, with_ckpt)
    }
    assert len(keys) == 4
    key = features.cache_key(with_ckpt)
    clip = torch.randn(2, 3, 2, 32, 32)
    torch.testing.assert_close(features.build_extractor(with_ckpt)(clip), features.build_extractor(SETTINGS)(clip))
    with pytest.raises(features.FeatureCacheError, match="no key starts with ckpt_prefix 'model.'"):
        features.build_extractor({**with_ckpt, "ckpt_prefix": "model."})
    torch.save({"state_dict": {f"net.{k}": v * 2 for k, v in backbone.state_dict().items()}}, ckpt)
    assert features.cache_key(with_ckpt) != key  # same path, new contents
    with pytest.raises(ValueError, match="unknown feature extractor setting"):
        features.cache_key({**SETTINGS, "clip_length": 3})

    # A video whose media changed is re-extracted; a partly filled cache only extracts what is missing.
    dm = FeatureDataModule(
        str(root), SETTINGS, [manifests(demo_root)[0]], [manifests(demo_root)[1]], extract_missing=True
    )
    victim, stale = sorted(stamps)[:2]
    victim.unlink()
    item = torch.load(stale, weights_only=True)
    torch.save({**item, "media": {**item["media"], "num_frames": 1}}, stale)
    stamps[stale] = stale.stat().st_mtime_ns
    relabel = sorted(stamps)[2]
    item3 = torch.load(relabel, weights_only=True)
    torch.save({**item3, "labels": torch.zeros_like(item3["labels"]) - 1}, relabel)
    dm.prepare_data()
    refreshed = torch.load(relabel, weights_only=True)
    assert torch.equal(refreshed["labels"], item3["labels"]) and torch.equal(refreshed["features"], item3["features"])
    assert victim.is_file()
    assert torch.load(stale, weights_only=True)["media"] == item["media"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p not in (victim, stale, relabel))
    assert stale.stat().st_mtime_ns != stamps[stale]


def test_image_backbone_submodule():
    """A per-frame image model (the reference's TeCNO image FMs): the ImageTeacher's timm ViT, CLS pre-logits."""
    settings = {
        "backbone": {"_target_": "surgvista.models.teacher.ImageTeacher", "preset": "tiny", "img_size": 32},
        "module_attr": "vit",
        "input": "image",
        "clip_len": 1,
        "input_size": 32,
    }
    out = features.build_extractor(settings)(torch.randn(3, 3, 1, 32, 32))
    assert out.shape == (3, 192)
    with pytest.raises(ValueError, match="input=image needs clip_len=1"):
        features.cache_key({**settings, "clip_len": 4})


def test_plain_backbone_checkpoint_loads_with_a_key_diff(tmp_path):
    """A non-surgvista backbone (e.g. timm) takes the state dict under its own keys: strict key diff, finite check."""
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ckpt = tmp_path / "plain.pt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}, "epoch": 0}, ckpt)
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    report = features.load_backbone_weights(target, ckpt)
    assert report.ok and len(report.loaded) == 4 and torch.equal(target[0].weight, source[0].weight)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"(?s)plain\.pt: checkpoint does not fit Sequential:.*2\.weight"):
        features.load_backbone_weights(wider, ckpt)
    assert features.load_backbone_weights(wider, ckpt, strict=False).missing == ["2.weight", "2.bias"]
    with pytest.raises(CheckpointError, match=r"0\.weight: checkpoint \(3, 4\), model \(5, 4\)"):
        features.load_backbone_weights(torch.nn.Sequential(torch.nn.Linear(4, 5)), ckpt, strict=False)
    with torch.no_grad():
        source[0].weight[1, 1] = float("nan")
    torch.save(source.state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=r"plain\.pt: tensor '0\.weight' holds 1 non-finite"):
        features.load_backbone_weights(target, ckpt)


def test_dataset_errors_name_the_missing_video(demo_root, tmp_path):
    with pytest.raises(features.FeatureCacheError, match=r"no cached features for demo/video01 .*extract"):
        FeatureDataset([manifests(demo_root)[0]], tmp_path)


def test_tecno_module_learns_the_demo_phases(cache, demo_root, tmp_path, one_thread):
    _, root = cache
    L.seed_everything(0)
    dm = FeatureDataModule(
        str(root),
        SETTINGS,
        [manifests(demo_root)[0]],
        [manifests(demo_root)[1]],
        [manifests(demo_root)[1]],
        extract_missing=False,
    )
    module = TeCNOModule(num_classes=7, num_layers=4, num_f_maps=16, dropout=0.0, lr=1e-2, fps=5.0, dataset="demo")
    trainer = L.Trainer(
        max_epochs=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert module.net.input_dim == 192 and module.hparams.input_dim == 192
    assert module.class_weight.shape == (7,) and not torch.all(module.class_weight == 1)
    metrics = trainer.callback_metrics
    acc = float(metrics["val/video_accuracy_mean"])
    assert acc > 40, acc  # percent, held-out video; chance is 1/7 (78.6 when written)
    assert {"val/accuracy", "val/jaccard", "val/f1", "val/loss"} <= set(metrics)
    trainer.save_checkpoint(tmp_path / "tecno.ckpt")
    trainer.test(module, datamodule=dm)
    files = sorted((tmp_path / "test" / "predictions").glob("*.txt"))
    assert [f.name for f in files] == [f"demo_{v.split('/')[1]}.txt" for v in dm.video_ids("test")]
    rows = files[0].read_text().splitlines()
    assert rows[0] == "Frame\tPhase\tTarget" and len(rows) == 1 + int((dm.datasets["test"][0]["labels"] >= 0).sum())
    assert float(trainer.callback_metrics["test/video_accuracy_mean"]) == pytest.approx(acc)
    ci = json.loads((tmp_path / "test" / "ci.json").read_text())["metrics"]["video_accuracy_mean"]
    assert ci["lo"] <= ci["value"] == pytest.approx(acc, abs=1e-4) and ci["value"] <= ci["hi"]
    reloaded = TeCNOModule.load_from_checkpoint(tmp_path / "tecno.ckpt", map_location="cpu")
    torch.testing.assert_close(reloaded.class_weight, module.class_weight)
    x = torch.randn(1, 9, 192)
    torch.testing.assert_close(reloaded.eval()(x), module.eval()(x))


def test_extract_cli_then_demo_tecno_fast_dev_run(demo_root, tmp_path, monkeypatch, capsys):
    overrides = [
        *small_demo_set(demo_root),
        f"data.cache_root={tmp_path / 'cache'}",
        "data.extractor.input_size=32",
        "data.extractor.backbone.img_size=32",
        "+data.extractor.backbone.depth=1",
    ]
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    extract_main(["extract", "experiment=demo_tecno", *overrides])
    assert "features in" in capsys.readouterr().out
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")}
    assert len(cached) == 3
    proc = run_script(
        "train.py",
        "experiment=demo_tecno",
        *overrides,
        "debug=fdr",
        "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert "all 3 videos present" in proc.stdout + proc.stderr  # the training run reuses the CLI's cache
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")} == cached


def test_tecno_cholec80_experiment_composes(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tecno_cholec80", "paths.data_dir=/datasets"])
    assert cfg.data.train_manifests == ["/datasets/cholec80/train.jsonl"]
    assert cfg.data.val_manifests == ["/datasets/cholec80/val.jsonl"]
    m = cfg.model
    assert (m.num_stages, m.num_layers, m.num_f_maps, m.lr, m.num_classes) == (2, 8, 32, 7e-5, 7)
    ex = cfg.data.extractor
    assert (ex.clip_len, ex.clip_stride, ex.input_size, ex.backbone.preset) == (16, 4, 224, "base")
    assert cfg.callbacks.model_checkpoint.monitor == "val/video_accuracy_mean" == cfg.optimized_metric
