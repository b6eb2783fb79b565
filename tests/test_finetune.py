"""Fine-tuning modules from their experiment configs on synthetic manifests (tiny model, 32 px, 4 frames)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from surgvista.checkpoints.errors import CheckpointError
from surgvista.data.manifest import ManifestError, read_manifest, write_manifest
from surgvista.evaluation.predictions import read_prediction_file
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent

EXPERIMENTS = {
    "phase_cholec80": 7,
    "phase_m2cai16": 8,
    "phase_autolaparo": 7,
    "phase_cataracts": 19,
    "phase_cataract21": 11,
    "phase_cataract101": 10,
    "phase_esd57": 8,
    "phase_pmlr50": 5,
    "triplet_cholect50": 100,
    "triplet_prostate21": 89,
    "cvs_cholec80cvs": 6,
    "cvs_endoscapes": 4,
    "action_surgicalactions160": 16,
}


def _split(entries, labels_fn, label: str, names: list[str], clip: bool, copies: int = 1):
    out = []
    for i, e in enumerate(entries * copies):
        new = type(e)(
            e.dataset,
            f"{e.video_id}_{i}",
            e.format,
            e.source,
            e.num_frames,
            e.fps,
            {label: labels_fn(i, e.labels["phase"]) if not clip else i % len(names)},
        )
        out.append(new)
    return out, {"label_names": {label: names}}


@pytest.fixture(scope="module")
def downstream_root(demo_root, tmp_path_factory) -> Path:
    """``<root>/<data_name>/{train,val,test}.jsonl`` with phase / triplet / CVS / action labels on the demo videos."""
    root = tmp_path_factory.mktemp("downstream")
    train, val = read_manifest(demo_root / "train.jsonl"), read_manifest(demo_root / "val.jsonl")
    phase_names = train.meta["label_names"]["phase"]
    kinds = {
        "cholec80": ("phase", phase_names, False, lambda i, p: [-1, *p[1:]]),
        "cholect50": (
            "triplet",
            [f"t{k}" for k in range(100)],
            False,
            lambda i, p: [None, *(sorted({x, (x * 7 + 3) % 100}) for x in p[1:])],
        ),
        "endoscapes": (
            "cvs",
            ["c0", "c1", "c2", "c3"],
            False,
            lambda i, p: [x % 4 if t % 5 else -1 for t, x in enumerate(p)],
        ),
        "cholec80_cvs": ("cvs", [f"score{k}" for k in range(6)], True, None),
        "surgicalactions160": ("action", [f"a{k}" for k in range(16)], True, None),
    }
    for name, (label, names, clip, fn) in kinds.items():
        for split, src in (("train", train), ("val", val), ("test", val)):
            entries, meta = _split(src.entries, fn, label, names, clip, copies=2 if clip else 1)
            if name == "cholec80_cvs":  # clips of one surgery, as surgvista-prepare writes them
                meta["same_video_as"] = {e.video_id: ["cholec80", e.video_id.rsplit("_", 1)[0]] for e in entries}
            write_manifest(root / name / f"{split}.jsonl", entries, meta)
    return root


def _compose(
    experiment: str, *overrides: str, data_dir: Path | None = None, out: Path | None = None, config: str = "train"
):
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    small = [
        "trainer=cpu",
        "trainer.devices=1",
        "trainer.precision=32",
        "logger=csv",
        "print_config=false",
        "model.net.preset=tiny",
        "model.net.drop_path_rate=0",
        "data.input_size=32",
        "data.num_frames=4",
        "data.sampling_rate=2",
        "data.batch_size=2",
        "data.eval_batch_size=4",
        "data.num_workers=0",
    ]
    if config == "train":
        small += ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
    if data_dir is not None:
        small.append(f"paths.data_dir={data_dir}")
    if out is not None:
        small += [f"paths.output_dir={out}", f"paths.work_dir={out}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=[f"experiment={experiment}", *small, *overrides])


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_configs_instantiate(experiment):
    cfg = _compose(experiment)
    assert cfg.model.net.num_classes == EXPERIMENTS[experiment]
    assert cfg.data.train_manifest.endswith(f"/{cfg.data_name}/train.jsonl")
    model = instantiate(cfg.model, _convert_="all")
    assert model.net.head.out_features == EXPERIMENTS[experiment]
    assert (
        type(model).__name__
        == {
            "phase": "PhaseModule",
            "triplet": "TripletModule",
            "action": "ClipModule",
            "cvs": "FrameCVSModule" if "endoscapes" in experiment else "ClipModule",
        }[experiment.split("_")[0]]
    )
    assert (model.mixup is None) == experiment.startswith("triplet")


def _tiny_student_ckpt(path: Path, preset: str = "tiny") -> Path:
    student = SurgVISTAStudent(
        preset, img_size=32, num_frames=4, teacher_dim=192, image_decoder_depth=1, pixel_decoder_depth=1
    )
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.0", "epoch": 0}, path)
    return path


@pytest.mark.parametrize("experiment", ["phase_cholec80", "triplet_cholect50", "cvs_cholec80cvs", "cvs_endoscapes"])
def test_fast_dev_run_from_experiment_config(experiment, downstream_root, tmp_path):
    from surgvista.run import train

    extra = []
    if experiment == "phase_cholec80":  # also loads a (tiny) pre-training checkpoint
        extra.append(f"model.ckpt={_tiny_student_ckpt(tmp_path / 'pre.ckpt')}")
    if experiment == "cvs_endoscapes":  # and averages several test views
        extra.append("data.eval_views=[squash,hflip]")
    cfg = _compose(experiment, "+trainer.fast_dev_run=2", *extra, data_dir=downstream_root, out=tmp_path / "run")
    metrics = train(cfg)
    assert "test/loss" in metrics
    out = tmp_path / "run" / "test"
    assert (out / "metrics.md").is_file() and json.loads((out / "metrics.json").read_text())
    ci = json.loads((out / "ci.json").read_text())  # bootstrap intervals of the headline metrics
    headline = {"phase": "relaxed_jaccard", "triplet": "mAP_ivt", "cvs": "mAP"}[experiment.split("_")[0]]
    records = json.loads((out / "per_video.json").read_text())["videos"]
    assert headline in ci["metrics"] and ci["bootstrap"]["videos"] == len(records) > 0
    if experiment == "cvs_cholec80cvs":  # CVS clips are resampled by their Cholec80 video
        assert all(r["video"].startswith("cholec80/") for r in records), [r["video"] for r in records]
    if experiment == "cvs_cholec80cvs":  # clip-level: one row per clip
        rows = (out / "predictions.csv").read_text().splitlines()
        assert rows[0].startswith("video,target,prediction,prob_score0") and len(rows) == 1 + 2 * 1
        return
    files = sorted((out / "predictions").glob("*.csv"))
    pred = read_prediction_file(files[0], multilabel=experiment.startswith("triplet"))
    assert pred["probs"].shape[1] == EXPERIMENTS[experiment]


def test_class_count_mismatch_is_a_clear_error(downstream_root, tmp_path):
    from surgvista.run import train

    cfg = _compose(
        "phase_cholec80", "+trainer.fast_dev_run=1", "model.net.num_classes=5", data_dir=downstream_root, out=tmp_path
    )
    with pytest.raises(ManifestError, match=r"label_names\['phase'\] has 7 classes but the model has num_classes=5"):
        train(cfg)


def test_checkpoint_of_a_different_architecture_is_refused(tmp_path):
    cfg = _compose("phase_cholec80")
    module = instantiate(cfg.model, _convert_="all")
    assert isinstance(module.net, VideoClassifier)
    with pytest.raises(CheckpointError, match="(?i)architecture|shape|depth"):
        module.load_backbone(str(_tiny_student_ckpt(tmp_path / "small.ckpt", preset="small")))


def test_recipe_layer_decay_and_lr_scaling():
    from types import SimpleNamespace

    cfg = _compose("phase_cholec80", "model.base_lr=1e-3", "model.warmup_epochs=1", "model.net.drop_path_rate=0")
    module = instantiate(cfg.model, _convert_="all")
    module.trainer = SimpleNamespace(
        accumulate_grad_batches=1, world_size=4, estimated_stepping_batches=40, max_epochs=4
    )  # global batch 2 x 4 = 8 -> lr x 8/64
    opt = module.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    lr = 1e-3 * 8 / 64
    by_name = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            name = next(n for n, q in module.net.named_parameters() if q is p)
            by_name[name] = g
    depth = len(module.net.blocks)  # tiny: 4 blocks -> scales 0.75^(5 - layer id)
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75**depth)
    assert by_name["head.weight"]["lr_scale"] == by_name["fc_norm.weight"]["lr_scale"] == 1.0
    assert by_name["head.weight"]["weight_decay"] == 0.05 and by_name["head.bias"]["weight_decay"] == 0.0
    assert by_name["blocks.0.norm1.weight"]["weight_decay"] == 0.0
    lrs = []
    for _ in range(40):
        lrs.append(max(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[9] == pytest.approx(lr)  # warm-up from 0 over one epoch (10 steps)
    assert lrs[10] == pytest.approx(lr) and lrs[-1] < lrs[20] < lr and lrs[-1] > 1e-6 * 8 / 64


def test_demo_phase_train_then_eval_writes_predictions_and_table(demo_root, tmp_path, capsys):
    from helpers import small_demo_set

    from surgvista.run import evaluate, train

    demo = [
        *small_demo_set(demo_root),
        "data.val_target_stride=1",
    ]
    cfg = _compose(
        "demo_phase",
        *demo,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "test=false",
        out=tmp_path / "ft",
    )
    fit = train(cfg)
    assert "val/top1" in fit and "val/video_accuracy_mean" in fit
    last = tmp_path / "ft" / "checkpoints" / "last.ckpt"
    cfg = _compose("demo_phase", *demo, f"ckpt_path={last}", out=tmp_path / "ev", config="eval")
    metrics = evaluate(cfg)
    assert {"test/accuracy", "test/video_accuracy_mean", "test/jaccard", "test/top1"} <= set(metrics)
    out = tmp_path / "ev" / "test"
    files = sorted((out / "predictions").glob("*.csv"))
    assert [f.stem for f in files] == ["video03"]
    pred = read_prediction_file(files[0])
    assert pred["classes"][0] == "Preparation" and len(pred["frame"]) == pred["frame"][-1] + 1
    table = (out / "metrics.md").read_text()
    assert "| video_accuracy |" in table and table in capsys.readouterr().out


def test_image_model_variant():
    cfg = _compose("phase_pmlr50", "model=finetune_image", "data.num_frames=8", "data.sampling_rate=4")
    net = instantiate(cfg.model, _convert_="all").net
    assert net.token_grid == (8, 2, 2) and net.pos_embed_kind == "sinusoid1d"
    assert net(torch.zeros(2, 3, 8, 32, 32)).shape == (2, 5)
