"""Inputs that are each valid alone but wrong together (docs/errors.md, "Manifest consistency and evaluation
geometry"): manifests whose videos repeat within or across splits or whose class names differ between splits, an
evaluation whose clips are shaped unlike its checkpoint's training, and documented choice values the validators
must accept. Each bad case fails with one line naming the file and the ids/keys and values, leaves every input
unchanged, and reaches the user without a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dataset_fixtures as F
import pytest
import yaml
from helpers import ROOT, compose, small_demo_data
from omegaconf import OmegaConf
from test_bad_inputs import Case, lightning_file, outcome, snapshot, tiny_phase_state

from surgvista.checkpoints.errors import CheckpointError
from surgvista.cli.common import user_errors
from surgvista.data.downstream import DownstreamDataModule
from surgvista.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
from surgvista.utils.config_check import RULES, check_config

PHASES = ["Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
          "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction"]


# ------------------------------------------------------------------------------------------ manifests
def entry(inp: Path, video_id: str, frames: int = 6) -> VideoEntry:
    video = F.write_video(inp / "videos" / f"{video_id}.mp4", 30)
    return VideoEntry("cholec80", video_id, "video", video, frames, 5.0, {"phase": [0] * frames})


def split_files(inp: Path, ids: dict[str, list[str]], names: dict[str, list[str]] | None = None) -> dict:
    """``<inp>/data/cholec80/<split>.jsonl`` holding videos ``ids[split]`` (``_meta.label_names`` from ``names``)."""
    ctx = {"data": inp / "data"}
    for split, vids in ids.items():
        meta = {"label_names": {"phase": (names or {}).get(split, PHASES)}}
        ctx[split] = write_manifest(inp / "data" / "cholec80" / f"{split}.jsonl", [entry(inp, v) for v in vids], meta)
    return ctx


def repeated_rows(same: bool):
    """A test manifest whose second and third rows are video ``v2`` (the same row twice, or two videos)."""

    def make(inp: Path, out: Path) -> dict:
        ctx = split_files(inp, {"train": ["v0"], "val": ["v1"]})
        rows = [entry(inp, "v1"), entry(inp, "v2"), entry(inp, "v2" if same else "v3")]
        rows[2].video_id = "v2"
        path = write_manifest(inp / "data" / "cholec80" / "test.jsonl", rows, {"label_names": {"phase": PHASES}})
        return {**ctx, "test": path}

    return make


def datamodule(ctx: dict, **kw) -> DownstreamDataModule:
    files = {s: str(ctx[s]) if s in ctx else None for s in ("train", "val", "test")}
    return DownstreamDataModule(
        files["train"], files["val"], files["test"], label="phase", num_classes=7, num_workers=0, num_frames=2,
        sampling_rate=1, input_size=32, **kw,
    )


def check_dm(ctx: dict) -> None:
    datamodule(ctx).check_inputs()


def train_phase(ctx: dict) -> None:
    """``train.py experiment=phase_cholec80`` on the manifests of ``ctx``: must stop before building the model."""
    from surgvista.run import train

    cfg = compose("phase_cholec80", f"paths.data_dir={ctx['data']}", "model.ckpt=null", "model.net.preset=tiny",
                  "data.input_size=32", "data.num_frames=2", out=ctx["out"])
    with user_errors():
        train(cfg)


MANIFEST_CASES = [
    Case(
        "manifest-duplicate-row",
        repeated_rows(same=True),
        lambda ctx: read_manifest(ctx["test"]),
        r"test\.jsonl: video_id\(s\) not unique: cholec80/'v2' on lines 3, 4 \(the same row repeated\)",
    ),
    Case(
        "manifest-duplicate-video-id",
        repeated_rows(same=False),
        lambda ctx: read_manifest(ctx["test"]),
        r"test\.jsonl: video_id\(s\) not unique: cholec80/'v2' on lines 3, 4 \(different rows\)",
    ),
    Case(
        "manifest-duplicate-video-id-train",
        repeated_rows(same=False),
        train_phase,
        r"^error: .*test\.jsonl: video_id\(s\) not unique: cholec80/'v2' on lines 3, 4",
    ),
    Case(
        "manifest-video-in-train-and-test",
        lambda inp, out: split_files(inp, {"train": ["v0", "v1"], "val": ["v2"], "test": ["v1", "v3"]}),
        check_dm,
        r"cholec80/train\.jsonl \(train\) and .*cholec80/test\.jsonl \(test\) share video_id\(s\) \['v1'\]",
    ),
    Case(
        "manifest-video-in-val-and-test",
        lambda inp, out: split_files(inp, {"train": ["v0"], "val": ["v1", "v2"], "test": ["v2", "v3"]}),
        check_dm,
        r"val\.jsonl \(val\) and .*test\.jsonl \(test\) share video_id\(s\) \['v2'\]",
    ),
    Case(
        "manifest-video-in-two-splits-train",
        lambda inp, out: split_files(inp, {"train": ["v0", "v1"], "val": ["v2"], "test": ["v1"]}),
        train_phase,
        r"^error: .*train\.jsonl \(train\) and .*test\.jsonl \(test\) share video_id\(s\) \['v1'\]",
    ),
    Case(
        "manifest-label-names-differ",
        lambda inp, out: split_files(inp, {"train": ["v0"], "val": ["v1"], "test": ["v2"]},
                                     {"test": [*PHASES[:2], PHASES[3], PHASES[2], *PHASES[4:]]}),
        check_dm,
        r"test\.jsonl \(test\): _meta\.label_names\['phase'\] differs from .*train\.jsonl \(train\): class 2 is "
        r"'GallbladderDissection' vs 'ClippingCutting'",
    ),
    Case(
        "manifest-label-names-count-train",
        lambda inp, out: split_files(inp, {"train": ["v0"], "val": ["v1"], "test": ["v2"]},
                                     {"test": [*PHASES, "Extra"]}),
        train_phase,  # phase_cholec80 has no val split: train and test are compared before training
        r"^error: .*test\.jsonl \(test\): _meta\.label_names\['phase'\] differs from .*train\.jsonl \(train\): "
        r"8 classes vs 7",
    ),
    Case(
        "manifest-label-names-vs-num-classes-train",
        lambda inp, out: split_files(inp, {"train": ["v0"], "val": ["v1"], "test": ["v2"]},
                                     {s: PHASES[:6] for s in ("train", "val", "test")}),
        train_phase,
        r"^error: .*train\.jsonl: _meta\.label_names\['phase'\] has 6 classes but the model has num_classes=7",
    ),
]


# ------------------------------------------------------------------------------------ evaluation geometry
def run_folder(data: dict):
    """``<inp>/run/{config.yaml, checkpoints/last.ckpt}``: a demo_phase checkpoint trained with ``data``."""

    def make(inp: Path, out: Path) -> dict:
        ckpt = lightning_file(inp / "run" / "checkpoints" / "last.ckpt", tiny_phase_state())
        config = {"model": {"_target_": "surgvista.modules.finetune.PhaseModule"}, "data": data}
        (inp / "run" / "config.yaml").write_text(yaml.safe_dump(config))
        return {"c": ckpt}

    return make


def eval_phase(*overrides: str):
    def act(ctx: dict) -> None:
        from surgvista.run import evaluate

        cfg = compose("demo_phase", *eval_overrides(ctx), *overrides, config="eval", out=ctx["out"])
        with user_errors():
            evaluate(cfg)

    return act


def eval_overrides(ctx: dict) -> list[str]:
    return [*small_demo_data(ctx["demo"]), "data.num_frames=4", "data.eval_batch_size=64", f"ckpt_path={ctx['c']}"]


TRAINED = {"num_frames": 4, "sampling_rate": 2, "input_size": 64}
GEOMETRY_CASES = [
    Case(
        "eval-geometry-num-frames",
        run_folder(TRAINED),
        eval_phase("data.num_frames=8"),
        r"^error: .*last\.ckpt: evaluation data geometry differs from its training run \(.*run/config\.yaml\): "
        r"data\.num_frames=8 \(trained with 4\); .* allow_geometry_change=true",
    ),
    Case(
        "eval-geometry-size-and-sampling",
        run_folder(TRAINED),
        eval_phase("data.input_size=96", "data.sampling_rate=1"),
        r"^error: .*: data\.sampling_rate=1 \(trained with 2\), data\.input_size=96 \(trained with 64\);",
    ),
    Case(
        "eval-geometry-normalisation",
        run_folder({**TRAINED, "mean": [0.5, 0.5, 0.5]}),
        eval_phase("+data.mean=[0.485,0.456,0.406]"),
        r"data\.mean=\[0\.485, 0\.456, 0\.406\] \(trained with \[0\.5, 0\.5, 0\.5\]\)",
    ),
    Case(
        "eval-geometry-override-not-bool",
        run_folder(TRAINED),
        eval_phase("allow_geometry_change=maybe"),
        r"^error: allow_geometry_change='maybe': expected a bool",
    ),
]

CASES = MANIFEST_CASES + GEOMETRY_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_inconsistent_input(case: Case, tmp_path, capsys, demo_root):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    ctx = {"inp": inp, "out": out, "demo": demo_root, **case.make(inp, out)}
    before = snapshot(inp)
    capsys.readouterr()
    message = outcome(lambda: case.act(ctx), capsys)
    assert re.search(case.expect, message, re.S | re.M), f"{case.id}: culprit not named:\n{message[-2000:]}"
    if message.startswith("error:") or "\nerror:" in message:  # the user-facing path: one line, no traceback
        assert "Traceback" not in message and len([ln for ln in message.splitlines() if ln.strip()]) == 1, message
    assert snapshot(inp) == before, f"{case.id}: an input file changed"
    assert not list(out.rglob("*.ckpt")), f"{case.id}: work was done before the refusal"


def test_consistent_splits_are_accepted(tmp_path):
    """Distinct videos, one file for val and test (test_manifest=null) and a val file that copies the test file."""
    ctx = split_files(tmp_path, {"train": ["v0", "v1"], "val": ["v2"], "test": ["v3"]})
    datamodule(ctx).check_inputs()
    datamodule({**ctx, "test": None}).check_inputs()  # test = val
    shutil_copy = (tmp_path / "data" / "cholec80" / "val_copy.jsonl")
    shutil_copy.write_bytes(Path(ctx["test"]).read_bytes())
    datamodule({**ctx, "val": shutil_copy}).check_inputs()
    dm = datamodule(ctx)
    dm.setup("fit")
    dm.setup("test")
    assert dm.video_ids("test") == ["v3"] and dm.label_names == PHASES


def test_val_is_test_meta_and_splits_without_names(tmp_path):
    from surgvista.data.splits import check_splits

    ids = {"train": ["v0"], "val": ["v1", "v2"], "test": ["v2", "v1"]}  # same videos, another order
    ctx = split_files(tmp_path, ids)
    with pytest.raises(ManifestError, match=r"share video_id\(s\) \['v1', 'v2'\]"):
        check_splits({s: read_manifest(ctx[s]) for s in ids}, "phase")
    splits = {s: read_manifest(ctx[s]) for s in ids}
    for s in ("val", "test"):
        splits[s].meta["val_is_test"] = True  # what prepare writes for datasets whose val split is the test split
    splits["train"].meta = {}  # a split without names is not compared
    check_splits(splits, "phase")


def test_demo_phase_splits_pass(demo_root):
    """The demo (test = val) reads back and passes the split checks at fit and test."""
    from hydra.utils import instantiate

    cfg = compose("demo_phase", *small_demo_data(demo_root))
    dm = instantiate(cfg.data, _convert_="all")
    dm.check_inputs()
    dm.setup("fit")
    dm.setup("test")
    assert dm.video_ids("test") == dm.video_ids("val")


def test_test_split_is_checked_before_training(tmp_path):
    """setup("fit") already refuses a test split that shares a video with train (not after the whole training)."""
    ctx = split_files(tmp_path, {"train": ["v0", "v1"], "val": ["v2"], "test": ["v1"]})
    with pytest.raises(ManifestError, match=r"share video_id\(s\) \['v1'\]"):
        datamodule(ctx).setup("fit")


# ------------------------------------------------------------------------------------ evaluation geometry
def test_geometry_of_a_config_and_of_hyperparameters():
    from surgvista.checkpoints.geometry import data_geometry

    cfg = OmegaConf.create({"data": {"num_frames": 8, "sampling_rate": "${data.num_frames}", "input_size": 112,
                                     "batch_size": 4, "extractor": {"clip_len": 4, "clip_stride": 2}}})
    assert data_geometry(cfg.data) == {"data.num_frames": 8, "data.sampling_rate": 8, "data.input_size": 112,
                                       "data.extractor.clip_len": 4, "data.extractor.clip_stride": 2}
    assert data_geometry({"num_frames": 8, "mean": (0.5,)}) == {"data.num_frames": 8, "data.mean": (0.5,)}


def test_geometry_from_checkpoint_hyperparameters_without_config(tmp_path):
    import torch

    from surgvista.checkpoints.geometry import check_geometry

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"num_frames": 4, "input_size": 64}}, ckpt)
    cfg = OmegaConf.create({"data": {"num_frames": 4, "input_size": 96, "sampling_rate": 2}})
    with pytest.raises(CheckpointError, match=r"data\.input_size=96 \(trained with 64\); "):
        check_geometry(ckpt, cfg)
    record = check_geometry(ckpt, cfg, allow=True)
    assert record["changed"] == {"data.input_size": {"eval": 96, "trained": 64}}
    assert record["trained_config"].endswith("(datamodule_hyper_parameters)")
    other = OmegaConf.create({"data": {"num_frames": 4, "input_size": 64}})
    assert check_geometry(ckpt, other)["changed"] == {}


def test_unreadable_or_other_model_run_config_is_not_compared(tmp_path):
    """A damaged config.yaml, or the run of another model (the module check names that), compares nothing."""
    from surgvista.checkpoints.geometry import check_geometry

    ckpt = lightning_file(tmp_path / "run" / "checkpoints" / "last.ckpt", tiny_phase_state())
    cfg = OmegaConf.create({"model": {"_target_": "surgvista.modules.finetune.PhaseModule"}, "data": {"num_frames": 8}})
    (tmp_path / "run" / "config.yaml").write_text("data: [unclosed\n")
    assert check_geometry(ckpt, cfg)["changed"] == {}
    other = {"model": {"_target_": "surgvista.modules.pretrain.PretrainModule"}, "data": {"num_frames": 4}}
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(other))
    assert check_geometry(ckpt, cfg)["changed"] == {}
    same = {**other, "model": {"_target_": "surgvista.modules.finetune.PhaseModule"}}
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(same))
    with pytest.raises(CheckpointError, match=r"data\.num_frames=8 \(trained with 4\)"):
        check_geometry(ckpt, cfg)


def test_allowed_geometry_change_runs_and_is_recorded(tmp_path, demo_root):
    """allow_geometry_change=true: the evaluation runs, geometry.json names what was used and what changed."""
    from surgvista.run import evaluate

    ctx = {"demo": demo_root, "out": tmp_path / "out", **run_folder(TRAINED)(tmp_path, tmp_path)}
    cfg = compose("demo_phase", *eval_overrides(ctx), "data.sampling_rate=1", "allow_geometry_change=true",
                  config="eval", out=ctx["out"])
    metrics = evaluate(cfg)
    assert any(k.startswith("test/") for k in metrics)
    record = json.loads((ctx["out"] / "geometry.json").read_text())
    assert record["geometry"] == {"data.num_frames": 4, "data.sampling_rate": 1, "data.input_size": 64}
    assert record["changed"] == {"data.sampling_rate": {"eval": 1, "trained": 2}}
    assert record["allow_geometry_change"] is True and record["trained_config"].endswith("config.yaml")
    assert (ctx["out"] / "test" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------ documented choices
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def validators() -> dict[str, tuple]:
    """Choice keys our code validates against a list, and that list (the validator's own constant)."""
    from surgvista.checkpoints.parts import ENCODER_PARTS
    from surgvista.data.clips import BAD_VIDEO_POLICIES
    from surgvista.data.readers import BACKENDS
    from surgvista.layers.masking import MASK_KINDS
    from surgvista.layers.position import POS_EMBED_KINDS
    from surgvista.layers.vit import ATTN_BACKENDS, QKV_BIAS_KINDS
    from surgvista.modules.objective import DISTILL_LOSSES

    return {
        "data.backend": BACKENDS,
        "data.on_bad_video": BAD_VIDEO_POLICIES,
        "model.masking.kind": MASK_KINDS,
        "model.decoder_mask_ratio": RULES["model.decoder_mask_ratio"].choices + (None,),
        "model.ckpt_part": tuple(p for p in ENCODER_PARTS if p),
        "model.loss.distill_loss": tuple(DISTILL_LOSSES),
        "model.student.attn_backend": ATTN_BACKENDS,
        "model.teacher.attn_backend": ATTN_BACKENDS,
        "model.student.pos_embed": POS_EMBED_KINDS,
        "model.teacher.pos_embed": POS_EMBED_KINDS,
        "model.net.pos_embed": POS_EMBED_KINDS,
        "model.net.qkv_bias": QKV_BIAS_KINDS,
    }


def documented_values(key: str) -> set:
    """Every value the docs give ``key``: ``key=a|b`` in backticks, and a table row naming `` `key` `` with a
    listing ``a`` \\| ``b`` (values parsed as YAML, as the command line does)."""
    values = set()
    flat = re.compile(rf"`[^`]*?(?<![\w.]){re.escape(key)}=([^`\s]+)[^`]*`")
    listing = re.compile(r"`[^`]+`(?:\s*\\\|\s*`[^`]+`)+")
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            for text in flat.findall(line):
                values.update(text.split("|"))
            if line.startswith("|") and f"`{key}`" in line:
                for match in listing.findall(line):
                    values.update(re.findall(r"`([^`]+)`", match))
    return {yaml.safe_load(v) for v in values if v not in ("N", "k", "K", "f")}


def test_every_documented_choice_is_accepted():
    found = {}
    for key, accepted in validators().items():
        docs = documented_values(key)
        found[key] = docs
        refused = sorted(map(str, docs - set(accepted)))
        assert not refused, f"{key}: documented values {refused} are refused; the validator accepts {accepted}"
        rule = RULES.get(key)
        if rule is not None:
            assert all(rule.accepts(v) for v in docs), f"{key}: config check refuses one of {docs}: {rule.choices}"
    # the walk reads what it should (a parser that finds nothing would pass vacuously)
    assert found["data.backend"] == {"decord", "pyav", "torchcodec", "torchcodec-cuda", "memory"}
    assert found["model.masking.kind"] == {"tube", "random"} and found["model.ckpt_part"] == {"target", "student"}
    assert found["model.student.attn_backend"] == {"sdpa", "flash_attn", "eager"}
    assert 0.5 in found["model.decoder_mask_ratio"] and found["data.on_bad_video"] == {"error", "skip"}


def test_config_rules_list_the_validators_choices():
    """A config rule with choices lists exactly what the code behind it accepts."""
    for key, accepted in validators().items():
        if key in RULES and RULES[key].choices:
            assert set(RULES[key].choices) <= set(accepted) | {None}, key
            refused = set(accepted) - {None} - set(RULES[key].choices)
            assert not refused, f"{key}: the config check refuses {sorted(refused)}"


@pytest.mark.parametrize("backend", ["decord", "pyav", "torchcodec", "torchcodec-cuda", "memory"])
def test_documented_backends_pass_the_config_check(backend, tmp_path):
    cfg = compose("demo", *small_demo_data(tmp_path / "demo"), f"data.backend={backend}")
    check_config(cfg)


def test_tecno_feature_splits_are_disjoint(tmp_path):
    """The per-frame feature data module (TeCNO) refuses a video in two split files before extracting anything."""
    from surgvista.features.frame_data import FeatureDataModule

    ctx = split_files(tmp_path, {"train": ["v0", "v1"], "val": ["v2"], "test": ["v1", "v3"]})
    extractor = OmegaConf.to_container(compose("demo_tecno").data.extractor, resolve=True)

    def module(**splits) -> FeatureDataModule:
        return FeatureDataModule(str(tmp_path / "cache"), extractor, **splits)

    bad = module(train_manifests=[str(ctx["train"])], val_manifests=[str(ctx["val"])],
                 test_manifests=[str(ctx["test"])])
    with pytest.raises(ManifestError, match=r"train\.jsonl \(train\) and .*test\.jsonl \(test\) share .*\['v1'\]"):
        bad.check_inputs()
    assert not (tmp_path / "cache").exists()
    module(train_manifests=[str(ctx["train"])], val_manifests=[str(ctx["val"])],
           test_manifests=[str(ctx["val"])]).check_inputs()  # test = val: one file, one split
