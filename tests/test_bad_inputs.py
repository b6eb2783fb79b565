"""Bad inputs across the entry points (docs/errors.md): every case must fail (exception or non-zero exit), name
its culprit in the message, and leave every input file unchanged (hash before/after).

Cases run in-process (the CLIs' ``main`` functions, ``train``/``evaluate`` on a composed config,
``load_backbone``) so that the table stays fast; two subprocess cases check what a user sees from train.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dataset_fixtures as F
import pytest
import torch
from helpers import ROOT, SMALL_DEMO, compose, small_demo_data

from surgvista.checkpoints.load import load_backbone
from surgvista.cli.common import user_errors
from surgvista.cli.export import main as export_main
from surgvista.cli.prepare import main as prepare_main
from surgvista.data.leakage import check_leakage
from surgvista.data.manifest import VideoEntry, read_manifest, write_manifest
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.utils.errors import check_extras

GEOM = {"img_size": 32, "num_frames": 4, "patch_size": 16, "tubelet_size": 2}


# ------------------------------------------------------------------------------------------ the harness
@dataclass
class Case:
    """``make(inp, out) -> ctx`` writes the bad input under ``inp``; ``act(ctx)`` runs the entry point;
    ``expect`` (formatted with ``ctx``) must be found in the message."""

    id: str
    make: Callable[[Path, Path], dict]
    act: Callable[[dict], object]
    expect: str
    tags: set = field(default_factory=set)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (and the set of names)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def outcome(act: Callable[[], object], capsys) -> str:
    """Run ``act``; it must raise or return/exit non-zero. Returns the message (exception text + stderr)."""
    try:
        rc = act()
    except SystemExit as e:
        assert e.code not in (0, None), "a bad input exited with status 0"
        text = e.code if isinstance(e.code, str) else ""
    except Exception as e:  # noqa: BLE001 - every failure is acceptable, its message is checked
        text = f"{type(e).__name__}: {e}"
    else:
        assert rc not in (0, None), f"a bad input was accepted (returned {rc!r})"
        text = ""
    captured = capsys.readouterr()
    return text + captured.err + captured.out


# ----------------------------------------------------------------------------------------- bad files
def text_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a checkpoint\n")
    return path


def truncated(path: Path, obj=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj if obj is not None else {"model": SurgVISTAStudent("tiny", **GEOM).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Foreign:
    """A class that a checkpoint must never unpickle."""


def foreign(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.ones(1)}, "extra": Foreign()}, path)
    return path


def student_file(path: Path, nan: bool = False) -> Path:
    sd = SurgVISTAStudent("tiny", **GEOM).state_dict()
    if nan:
        sd["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, path)
    return path


def teacher_file(path: Path, nan: bool = False) -> Path:
    state = ImageTeacher("tiny", img_size=64, patch_size=16).endossl_state_dict()
    if nan:
        state["blocks.0.attn.q.weight"][0, 0] = float("inf")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return path


def lightning_file(path: Path, state: dict, target: str | None = None, nan: bool = False) -> Path:
    """A Lightning-format checkpoint (``state_dict`` + version) and, with ``target``, the run's config.yaml."""
    state = {k: v.clone() for k, v in state.items()}
    if nan:
        next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5.0", "epoch": 0, "global_step": 1}, path)
    if target:
        (path.parent.parent / "config.yaml").write_text(f"model:\n  _target_: {target}\n")
    return path


# ------------------------------------------------------------------------------------ composed configs
def demo_overrides(root: Path) -> list[str]:
    return [
        *small_demo_data(root),
        "data.num_frames=4",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
    ]


def train_with(*overrides: str, experiment: str = "demo", demo: Path | None = None):
    def act(ctx):
        from surgvista.run import train

        extra = demo_overrides(demo or ctx["inp"] / "demo")
        cfg = compose(experiment, *extra, *[o.format(**ctx) for o in overrides], out=ctx["out"])
        return train(cfg)

    return act


def eval_with(*overrides: str, experiment: str = "demo_phase"):
    def act(ctx):
        from surgvista.run import evaluate

        extra = demo_overrides(ctx["inp"] / "demo")[:-4]
        cfg = compose(experiment, *extra, *[o.format(**ctx) for o in overrides], config="eval", out=ctx["out"])
        return evaluate(cfg)

    return act


def tiny_phase_state() -> dict:
    """State dict of the demo_phase fine-tuning module (tiny classifier, 7 phases) as Lightning stores it."""
    net = VideoClassifier(7, "tiny", img_size=64, num_frames=4, patch_size=16, tubelet_size=2)
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def tiny_pretrain_state() -> dict:
    student = SurgVISTAStudent("tiny", img_size=64, num_frames=4, teacher_dim=192)
    return {f"student.{k}": v for k, v in student.state_dict().items()}


# ------------------------------------------------------------------------------------------- prepare
def prep(*args: str) -> Callable[[dict], int]:
    return lambda ctx: prepare_main([a.format(**ctx) for a in args] + ["--quiet"])


def raw_copy(name: str, edit: Callable[[Path], None] | None = None) -> Callable[[Path, Path], dict]:
    def make(inp: Path, out: Path) -> dict:
        raw = inp / name
        F.BUILDERS[name](raw)
        if edit:
            edit(raw)
        return {"raw": raw}

    return make


def cholect50_categories(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(raw: Path) -> None:
        path = raw / "labels" / "VID05.json"
        data = json.loads(path.read_text())
        edit(data["categories"]["triplet"])
        path.write_text(json.dumps(data))

    return apply


def endoscapes_edit(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda raw: fn(raw / "endoscapes")


def only_box_file(root: Path) -> None:
    for split in ("train", "val", "test"):
        (root / split / "annotation_ds_coco.json").unlink()
        (root / split / "annotation_coco_vid.json").unlink()


def ds_without_scores(root: Path) -> None:
    path = root / "val" / "annotation_ds_coco.json"
    data = json.loads(path.read_text())
    for im in data["images"]:
        im.pop("ds")
    path.write_text(json.dumps(data))


def ds_two_criteria(root: Path) -> None:
    path = root / "train" / "annotation_ds_coco.json"
    data = json.loads(path.read_text())
    data["images"][0]["ds"] = [0.5, 1.0]
    path.write_text(json.dumps(data))


def ds_other_frames(root: Path) -> None:
    path = root / "test" / "annotation_ds_coco.json"
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["file_name"] = "999_" + im["file_name"].split("_")[1]  # scores for frames that are not in the folder
    path.write_text(json.dumps(data))


def non_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"Preparation", b"Pr\xe9paration", 1))


def two_broken_videos(raw: Path) -> None:
    for name in ("video02.mp4", "video45.mp4"):
        (raw / "videos" / name).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)


def cvs_videos_elsewhere(inp: Path, out: Path) -> dict:
    raw = inp / "cvs"
    F.cholec80_cvs(raw)
    cholec = inp / "cholec80"
    cholec.mkdir()
    shutil.move(str(raw / "videos"), cholec / "videos")
    shutil.move(str(raw / "phase_annotations"), cholec / "phase_annotations")
    return {"raw": raw, "cholec": cholec}


PREPARE = [
    Case("prepare-out-is-raw", raw_copy("esd57"), prep("esd57", "--raw", "{raw}", "--out", "{raw}"), r"is --raw"),
    Case(
        "prepare-out-inside-raw",
        raw_copy("esd57"),
        prep("esd57", "--raw", "{raw}", "--out", "{raw}/frames"),
        r"frames is inside --raw",
    ),
    Case(
        "prepare-out-contains-raw",
        raw_copy("cholec80"),
        prep("cholec80", "--raw", "{raw}", "--out", "{raw}/.."),
        r"contains --raw",
    ),
    Case(
        "prepare-out-is-videos",
        cvs_videos_elsewhere,
        prep("cholec80_cvs", "--raw", "{raw}", "--videos", "{cholec}", "--out", "{cholec}"),
        r"is --videos",
    ),
    Case(
        "prepare-out-of-another-dataset",
        lambda inp, out: {
            "raw": F.psiava(inp / "psiava"),
            "prev": (inp / "m2cai16").mkdir() or (inp / "m2cai16" / "stats.json").write_text('{"dataset": "m2cai16"}'),
        },
        prep("psiava", "--raw", "{raw}", "--out", "{inp}/m2cai16"),
        r"--out .*m2cai16 holds the prepared 'm2cai16' dataset",
    ),
    Case(
        "prepare-cvs-without-videos",
        cvs_videos_elsewhere,
        prep("cholec80_cvs", "--raw", "{raw}", "--out", "{out}/o"),
        r"no Cholec80 videos/ folder .*--videos <cholec80 root>",
    ),
    Case(
        "prepare-cvs-videos-folder-empty",
        lambda inp, out: {**cvs_videos_elsewhere(inp, out), "empty": (inp / "empty").mkdir() or inp / "empty"},
        prep("cholec80_cvs", "--raw", "{raw}", "--videos", "{empty}", "--out", "{out}/o"),
        r"--videos .*empty",
    ),
    Case(
        "prepare-videos-not-used",
        raw_copy("cholec80"),
        prep("cholec80", "--raw", "{raw}", "--videos", "{raw}", "--out", "{out}/o"),
        r"cholec80: --videos is not used",
    ),
    Case(
        "prepare-endoscapes-box-file-only",
        raw_copy("endoscapes", endoscapes_edit(only_box_file)),
        prep("endoscapes", "--raw", "{raw}", "--out", "{out}/o"),
        r"train: expected annotation_ds_coco\.json or annotation_coco_vid\.json",
    ),
    Case(
        "prepare-endoscapes-no-scores",
        raw_copy("endoscapes", endoscapes_edit(ds_without_scores)),
        prep("endoscapes", "--raw", "{raw}", "--out", "{out}/o"),
        r"val/annotation_ds_coco\.json: no image carries CVS scores",
    ),
    Case(
        "prepare-endoscapes-two-criteria",
        raw_copy("endoscapes", endoscapes_edit(ds_two_criteria)),
        prep("endoscapes", "--raw", "{raw}", "--out", "{out}/o"),
        r"train/annotation_ds_coco\.json: image '1_0\.jpg' has ds \[0\.5, 1\.0\]",
    ),
    Case(
        "prepare-endoscapes-split-unannotated",
        raw_copy("endoscapes", endoscapes_edit(ds_other_frames)),
        prep("endoscapes", "--raw", "{raw}", "--out", "{out}/o"),
        r"split 'test' has no frame with a 'cvs' label .*test/annotation_ds_coco\.json",
    ),
    Case(
        "prepare-cholect50-wrong-triplet",
        raw_copy("cholect50", cholect50_categories(lambda t: t.update({"17": "hook,cut,liver"}))),
        prep("cholect50", "--raw", "{raw}", "--out", "{out}/o"),
        r"VID05\.json: categories\.triplet id 17 is 'hook,cut,liver' .* 'grasper,retract,gallbladder'",
    ),
    Case(
        "prepare-cholect50-99-triplets",
        raw_copy("cholect50", cholect50_categories(lambda t: t.pop("99"))),
        prep("cholect50", "--raw", "{raw}", "--out", "{out}/o"),
        r"VID05\.json: categories\.triplet .*lacks ids \['99'\]",
    ),
    Case(
        "prepare-cholect50-unknown-split",
        raw_copy("cholect50"),
        prep("cholect50", "--raw", "{raw}", "--out", "{out}/o", "--split", "crossval6"),
        r"unknown split variant 'crossval6'.*crossval5",
    ),
    Case(
        "prepare-cholect50-non-utf8",
        raw_copy("cholect50", lambda r: (r / "labels" / "VID06.json").write_bytes(b'{"video": "\xff"}')),
        prep("cholect50", "--raw", "{raw}", "--out", "{out}/o"),
        r"VID06\.json: not UTF-8 text \(byte 0xff",
    ),
    Case(
        "prepare-phase-file-non-utf8",
        raw_copy("cholec80", lambda r: non_utf8(r / "phase_annotations" / "video41-phase.txt")),
        prep("cholec80", "--raw", "{raw}", "--out", "{out}/o"),
        r"video41-phase\.txt: not UTF-8 text \(byte 0xe9",
    ),
    Case(
        "prepare-two-bad-videos-all-named",
        raw_copy("cholec80", two_broken_videos),
        prep("cholec80", "--raw", "{raw}", "--out", "{out}/o"),
        r"2 bad video\(s\): .*video02\.mp4.*video45\.mp4",
        {"no-extraction"},
    ),
    Case(
        "prepare-min-frames",
        raw_copy("cholec80"),
        prep("cholec80", "--raw", "{raw}", "--out", "{out}/o", "--min-frames", "9"),
        r"5 bad video\(s\): .*video01\.mp4: 4 frame\(s\) at the manifest rate, fewer than the required 9",
        {"no-extraction"},
    ),
    Case(
        "prepare-fps-zero",
        raw_copy("cholec80"),
        prep("cholec80", "--raw", "{raw}", "--out", "{out}/o", "--fps", "0"),
        r"fps must be positive, got 0",
    ),
    Case(
        "prepare-bad-size",
        raw_copy("psiava"),
        prep("psiava", "--raw", "{raw}", "--out", "{out}/o", "--size", "512by320"),
        r"size must be WxH, e\.g\. 512x320, got '512by320'",
    ),
    Case(
        "prepare-unknown-dataset",
        raw_copy("psiava"),
        prep("cholec81", "--raw", "{raw}", "--out", "{out}/o"),
        r"invalid choice: 'cholec81'",
    ),
    Case(
        "prepare-raw-missing",
        lambda inp, out: {"raw": inp / "nowhere"},
        prep("cholec80", "--raw", "{raw}", "--out", "{out}/o"),
        r"raw folder .*nowhere does not exist",
    ),
    Case(
        "prepare-unknown-phase",
        raw_copy(
            "autolaparo",
            lambda r: (p := r / "Task 1 Surgical workflow recognition" / "labels" / "label_01.txt").write_text(
                p.read_text().replace("\t1", "\t9", 1)
            ),
        ),
        prep("autolaparo", "--raw", "{raw}", "--out", "{out}/o"),
        r"label_01\.txt:\d+: unknown phase id 9",
    ),
]


# ------------------------------------------------------------------------------------------ manifests
def manifest_row(inp: Path, **change) -> dict:
    video = F.write_video(inp / "videos" / "v1.mp4", 30)
    row = {
        "dataset": "cholec80",
        "video_id": "v1",
        "format": "video",
        "source": str(video),
        "fps": 5.0,
        "num_frames": 6,
        "labels": {"phase": [0] * 6},
    }
    row.update(change)
    return row


def bad_manifest(text: Callable[[Path], str], name: str = "cholec80/train.jsonl"):
    def make(inp: Path, out: Path) -> dict:
        path = inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text(inp)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return {"manifest": path}

    return make


def row_text(**change) -> Callable[[Path], str]:
    return lambda inp: json.dumps(manifest_row(inp, **change)) + "\n"


read = lambda ctx: read_manifest(ctx["manifest"])  # noqa: E731

MANIFESTS = [
    Case("manifest-fps-zero", bad_manifest(row_text(fps=0)), read, r"train\.jsonl:1: fps must be a positive number"),
    Case("manifest-fps-negative", bad_manifest(row_text(fps=-25)), read, r"train\.jsonl:1: fps .* got -25"),
    Case("manifest-fps-text", bad_manifest(row_text(fps="25")), read, r"train\.jsonl:1: fps .* got '25'"),
    Case("manifest-fps-bool", bad_manifest(row_text(fps=True)), read, r"train\.jsonl:1: fps .* got True"),
    Case("manifest-num-frames-zero", bad_manifest(row_text(num_frames=0)), read, r":1: num_frames must be a posit"),
    Case("manifest-num-frames-float", bad_manifest(row_text(num_frames=6.5)), read, r":1: num_frames .* got 6\.5"),
    Case(
        "manifest-label-length",
        bad_manifest(row_text(labels={"phase": [0] * 5})),
        read,
        r":1: label 'phase' has 5 values but num_frames is 6",
    ),
    Case("manifest-bad-format", bad_manifest(row_text(format="mp4")), read, r":1: format 'mp4' is not one of"),
    Case("manifest-labels-list", bad_manifest(row_text(labels=[0])), read, r":1: labels must be a mapping"),
    Case("manifest-not-json", bad_manifest(lambda inp: "{'dataset': 1}\n"), read, r"train\.jsonl:1: not valid JSON"),
    Case("manifest-row-list", bad_manifest(lambda inp: "[1, 2]\n"), read, r"train\.jsonl:1: expected a JSON object"),
    Case("manifest-non-utf8", bad_manifest(lambda inp: b'{"dataset": "\xe9"}\n'), read, r"train\.jsonl: not UTF-8"),
    Case(
        "manifest-video-missing",
        bad_manifest(row_text(source="videos/gone.mp4")),
        read,
        r"train\.jsonl:1: video file not found: .*gone\.mp4",
    ),
    Case(
        "manifest-missing-says-how-to-create",
        lambda inp, out: {"manifest": inp / "cholec80" / "test.jsonl"},
        read,
        r"manifest not found: .*cholec80/test\.jsonl; create it with `python -m surgvista\.prepare cholec80",
    ),
    Case("manifest-empty", bad_manifest(lambda inp: "\n"), read, r"manifest .*train\.jsonl has no video rows"),
]


# ------------------------------------------------------------------------------------- train and eval
def with_file(key: str, writer: Callable[[Path], Path], name: str) -> Callable[[Path, Path], dict]:
    return lambda inp, out: {key: writer(inp / name)}


def leakage_data(alias: bool):
    """data_dir with cholec80/pretrain.jsonl and a downstream test split holding one of its videos."""

    def make(inp: Path, out: Path) -> dict:
        data = inp / "data"
        video = F.write_video(inp / "videos" / "video06.mp4", 30)
        entry = VideoEntry("cholec80", "video06", "video", video, 6, 5.0, {})
        write_manifest(data / "cholec80" / "pretrain.jsonl", [entry])
        if alias:  # CholecT50 VID06 is Cholec80 video06
            held = VideoEntry("cholect50", "VID06", "video", video, 6, 5.0, {"triplet": [[]] * 6})
            write_manifest(
                data / "cholect50" / "test.jsonl", [held], {"same_video_as": {"VID06": ["cholec80", "video06"]}}
            )
        else:
            write_manifest(data / "cholec80" / "test.jsonl", [entry])
        return {"data": data}

    return make


def mixture_check(ctx) -> None:
    from surgvista.data.datamodule import MixtureDataModule

    dm = MixtureDataModule(str(ctx["data"]), include=["cholec80"], exclude_from=["auto"], num_workers=0)
    dm.check_inputs()


def no_teacher(ctx):
    """experiment=pretrain_surgvista with no data: must fail on the data before any teacher is built."""
    from surgvista.run import train

    original = ImageTeacher.__init__

    def refuse(self, *a, **k):
        raise AssertionError("the teacher was built before the data was checked")

    ImageTeacher.__init__ = refuse
    try:
        cfg = compose(
            "pretrain_surgvista",
            f"paths.data_dir={ctx['inp']}",
            f"model.teacher.ckpt={ctx['inp']}/t.pth",
            "trainer.devices=1",
            "trainer.precision=32",
            out=ctx["out"],
        )
        return train(cfg)
    finally:
        ImageTeacher.__init__ = original


def demo_link(inp: Path, demo_root: Path) -> None:
    shutil.copytree(demo_root, inp / "demo")


TRAIN = [
    Case(
        "train-batch-size-text",
        lambda i, o: {},
        train_with("data.batch_size=abc"),
        r"data\.batch_size='abc': expected an integer >= 1 \(e\.g\. override data\.batch_size=8\)",
    ),
    Case(
        "train-batch-size-zero",
        lambda i, o: {},
        train_with("data.batch_size=0"),
        r"data\.batch_size=0: expected an integer >= 1",
    ),
    Case(
        "train-mask-ratio-zero",
        lambda i, o: {},
        train_with("model.masking.ratio=0"),
        r"model\.masking\.ratio=0: expected a number in \(0, 1\)",
    ),
    Case(
        "train-mask-ratio-one",
        lambda i, o: {},
        train_with("model.masking.ratio=1.0"),
        r"model\.masking\.ratio=1\.0: expected",
    ),
    Case(
        "train-negative-lr",
        lambda i, o: {},
        train_with("model.base_lr=-0.1"),
        r"model\.base_lr=-0\.1: expected a number > 0",
    ),
    Case(
        "train-num-workers",
        lambda i, o: {},
        train_with("data.num_workers=-2"),
        r"data\.num_workers=-2: expected an integer >= 0",
    ),
    Case("train-max-epochs-text", lambda i, o: {}, train_with("trainer.max_epochs=ten"), r"trainer\.max_epochs='ten'"),
    Case(
        "train-on-bad-video",
        lambda i, o: {},
        train_with("data.on_bad_video=ignore"),
        r"data\.on_bad_video='ignore': expected one of \['error', 'skip'\]",
    ),
    Case("train-mask-kind", lambda i, o: {}, train_with("model.masking.kind=tubes"), r"model\.masking\.kind='tubes'"),
    Case(
        "train-teacher-text-file",
        with_file("t", text_file, "teacher.pth"),
        train_with("model.teacher.ckpt={t}"),
        r"teacher\.pth: not a PyTorch checkpoint \(not written by torch\.save; the file starts with b'not a checkpoint",
    ),
    Case(
        "train-teacher-truncated",
        with_file("t", truncated, "teacher.pth"),
        train_with("model.teacher.ckpt={t}"),
        r"teacher\.pth: not a PyTorch checkpoint \(truncated or corrupt zip archive",
    ),
    Case(
        "train-teacher-foreign-pickle",
        with_file("t", foreign, "teacher.pth"),
        train_with("model.teacher.ckpt={t}"),
        r"teacher\.pth: contains pickled objects of type .*Foreign that are not loaded for safety",
    ),
    Case(
        "train-teacher-nan",
        with_file("t", lambda p: teacher_file(p, nan=True), "teacher.pth"),
        train_with("model.teacher.ckpt={t}"),
        r"teacher checkpoint .*teacher\.pth: tensor 'blocks\.0\.attn\.q\.weight' holds 1 non-finite",
    ),
    Case(
        "train-teacher-missing",
        lambda i, o: {"t": i / "gone.pth"},
        train_with("model.teacher.ckpt={t}"),
        r"teacher checkpoint not found: .*gone\.pth",
    ),
    Case(
        "train-resume-text-file",
        with_file("c", text_file, "last.ckpt"),
        train_with("ckpt_path={c}"),
        r"last\.ckpt: not a PyTorch checkpoint",
    ),
    Case(
        "train-resume-truncated",
        lambda i, o: {"c": truncated(i / "last.ckpt", {"state_dict": tiny_pretrain_state()})},
        train_with("ckpt_path={c}"),
        r"last\.ckpt: not a PyTorch checkpoint \(truncated",
    ),
    Case(
        "train-resume-other-task",
        lambda i, o: {
            "c": lightning_file(
                i / "run" / "checkpoints" / "last.ckpt", tiny_phase_state(), "surgvista.modules.finetune.PhaseModule"
            )
        },
        train_with("ckpt_path={c}"),
        r"last\.ckpt: a checkpoint of PhaseModule, but the configured model is PretrainModule",
    ),
    Case(
        "train-resume-nan",
        lambda i, o: {"c": lightning_file(i / "last.ckpt", tiny_pretrain_state(), nan=True)},
        train_with("ckpt_path={c}"),
        r"last\.ckpt: tensor 'student\..*' holds 1 non-finite",
    ),
    Case(
        "train-resume-not-lightning",
        with_file("c", student_file, "weights.pth"),
        train_with("ckpt_path={c}"),
        r"weights\.pth: not a Lightning checkpoint .*model\.ckpt=<file>",
    ),
    Case(
        "train-pretrain-no-data-before-teacher",
        lambda i, o: {},
        no_teacher,
        r"manifest not found: .*cholec80/pretrain\.jsonl; create it with `python -m surgvista\.prepare cholec80",
    ),
    Case(
        "train-leakage-auto",
        leakage_data(alias=False),
        mixture_check,
        r"cholec80/video06 .* is cholec80/video06 of .*cholec80/test\.jsonl",
    ),
    Case(
        "train-leakage-auto-alias",
        leakage_data(alias=True),
        mixture_check,
        r"cholec80/video06 .* is cholect50/VID06 of .*cholect50/test\.jsonl",
    ),
    Case(
        "extra-tensorboard",
        lambda i, o: {"mod": "tensorboard"},
        lambda c: check_extras(["logger=tensorboard"]),
        r"logger=tensorboard needs the optional package 'tensorboard'.*pip install 'surgvista\[tensorboard\]'",
    ),
    Case(
        "extra-optuna",
        lambda i, o: {"mod": "hydra_plugins.hydra_optuna_sweeper"},
        lambda c: check_extras(["hparams_search=demo_optuna"]),
        r"hparams_search=demo_optuna needs .*pip install 'surgvista\[sweep\]'",
    ),
    Case(
        "extra-slurm",
        lambda i, o: {"mod": "hydra_plugins.hydra_submitit_launcher"},
        lambda c: check_extras(["hydra/launcher=surgvista_slurm"]),
        r"hydra/launcher=surgvista_slurm needs .*pip install 'surgvista\[cluster\]'",
    ),
]

EVAL = [
    Case("eval-ckpt-unset", lambda i, o: {}, eval_with(), r"ckpt_path must be set"),
    Case(
        "eval-ckpt-missing",
        lambda i, o: {"c": i / "gone.ckpt"},
        eval_with("ckpt_path={c}"),
        r"ckpt_path not found: .*gone\.ckpt",
    ),
    Case(
        "eval-ckpt-text",
        with_file("c", text_file, "last.ckpt"),
        eval_with("ckpt_path={c}"),
        r"last\.ckpt: not a PyTorch checkpoint",
    ),
    Case(
        "eval-ckpt-empty",
        lambda i, o: {"c": (i / "e.ckpt").write_bytes(b"") or i / "e.ckpt"},
        eval_with("ckpt_path={c}"),
        r"e\.ckpt: not a PyTorch checkpoint \(the file is empty\)",
    ),
    Case(
        "eval-ckpt-foreign",
        with_file("c", foreign, "last.ckpt"),
        eval_with("ckpt_path={c}"),
        r"last\.ckpt: contains pickled objects of type",
    ),
    Case(
        "eval-other-task",
        lambda i, o: {
            "c": lightning_file(
                i / "pre" / "checkpoints" / "last.ckpt",
                tiny_pretrain_state(),
                "surgvista.modules.pretrain.PretrainModule",
            )
        },
        eval_with("ckpt_path={c}"),
        r"a checkpoint of PretrainModule, but the configured model is PhaseModule",
    ),
    Case(
        "eval-other-task-no-config",
        lambda i, o: {"c": lightning_file(i / "last.ckpt", tiny_pretrain_state())},
        eval_with("ckpt_path={c}"),
        r"a checkpoint of a pre-training module \(student\.\* weights\), but the configured model is PhaseModule",
    ),
    Case(
        "eval-class-count",
        lambda i, o: {
            "c": lightning_file(
                i / "run" / "checkpoints" / "last.ckpt", tiny_phase_state(), "surgvista.modules.finetune.PhaseModule"
            )
        },
        eval_with("ckpt_path={c}", "model.net.num_classes=5"),
        r"net\.head\.weight has shape \(7, 192\) in the checkpoint of PhaseModule but \(5, 192\)",
    ),
    Case(
        "eval-nan",
        lambda i, o: {"c": lightning_file(i / "last.ckpt", tiny_phase_state(), nan=True)},
        eval_with("ckpt_path={c}"),
        r"last\.ckpt: tensor 'net\..*' holds 1 non-finite",
    ),
    Case(
        "eval-batch-size",
        lambda i, o: {"c": lightning_file(i / "last.ckpt", tiny_phase_state())},
        eval_with("ckpt_path={c}", "data.eval_batch_size=-1"),
        r"data\.eval_batch_size=-1",
    ),
]


# -------------------------------------------------------------------------------------------- export
def exported(inp: Path, out: Path) -> dict:
    ckpt = student_file(inp / "student.pth")
    return {"ckpt": ckpt}


def existing(target: str) -> Callable[[Path, Path], dict]:
    def make(inp: Path, out: Path) -> dict:
        ctx = exported(inp, out)
        path = inp / target
        if target.endswith("/"):
            path.mkdir()
            (path / "config.json").write_text("{}")
        else:
            path.write_text("precious\n")
        return {**ctx, "target": path}

    return make


def exp(*args: str) -> Callable[[dict], int]:
    return lambda ctx: export_main([a.format(**ctx) for a in args])


EXPORT = [
    Case(
        "export-out-is-input",
        exported,
        exp("ckpt={ckpt}", "format=original", "out={ckpt}"),
        r"out=.*student\.pth would overwrite the input checkpoint",
    ),
    Case(
        "export-out-is-input-overwrite",
        exported,
        exp("ckpt={ckpt}", "format=original", "out={ckpt}", "overwrite=true"),
        r"would overwrite the input checkpoint",
    ),
    Case(
        "export-existing-file",
        existing("old.pth"),
        exp("ckpt={ckpt}", "format=original", "out={target}"),
        r"old\.pth already exists; pass overwrite=true",
    ),
    Case(
        "export-existing-card",
        existing("st.json"),
        exp("ckpt={ckpt}", "format=safetensors", "out={inp}/st.safetensors"),
        r"st\.json already exists; pass overwrite=true",
    ),
    Case(
        "export-existing-hf-dir",
        existing("hf/"),
        exp("ckpt={ckpt}", "format=hf", "out={target}", "img_size=32", "num_frames=4"),
        r"hf already exists; pass overwrite=true",
    ),
    Case(
        "export-hf-dir-holds-input",
        exported,
        exp("ckpt={ckpt}", "format=hf", "out={inp}", "overwrite=true"),
        r"would overwrite the input checkpoint",
    ),
    Case(
        "export-out-is-folder",
        lambda i, o: {**exported(i, o), "f": (i / "folder").mkdir()},
        exp("ckpt={ckpt}", "format=original", "out={inp}/folder/", "overwrite=true"),
        r"folder is a folder; format=original writes one file",
    ),
    Case(
        "export-ckpt-text",
        with_file("ckpt", text_file, "x.ckpt"),
        exp("ckpt={ckpt}", "format=original", "out={out}/e.pth"),
        r"x\.ckpt: not a PyTorch checkpoint",
    ),
    Case(
        "export-ckpt-truncated",
        with_file("ckpt", truncated, "x.ckpt"),
        exp("ckpt={ckpt}", "format=original", "out={out}/e.pth"),
        r"x\.ckpt: not a PyTorch checkpoint \(truncated",
    ),
    Case(
        "export-ckpt-foreign",
        with_file("ckpt", foreign, "x.ckpt"),
        exp("ckpt={ckpt}", "format=original", "out={out}/e.pth"),
        r"x\.ckpt: contains pickled objects of type .*Foreign",
    ),
    Case(
        "export-unknown-format",
        exported,
        exp("ckpt={ckpt}", "format=onnx", "out={out}/e.onnx"),
        r"unknown format 'onnx'",
    ),
    Case(
        "export-typo-argument",
        exported,
        exp("ckpt={ckpt}", "format=original", "out={out}/e.pth", "overwite=true"),
        r"unknown argument\(s\) \['overwite'\]",
    ),
    Case(
        "export-ckpt-missing",
        lambda i, o: {"ckpt": i / "gone.pth"},
        exp("ckpt={ckpt}", "format=original", "out={out}/e.pth"),
        r"checkpoint not found: .*gone\.pth",
    ),
]


# -------------------------------------------------------------------------------------- load_backbone
def load(ctx) -> object:
    return load_backbone(ctx["ckpt"], VideoClassifier(5, "tiny", **GEOM))


def hf_dir_bad_config(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{not json")
    torch.save({"w": torch.ones(1)}, path / "pytorch_model.bin")
    return path


def finetune_init(ctx) -> object:
    """``model.ckpt=`` of a fine-tuning experiment: the module's own load_backbone."""
    from hydra.utils import instantiate

    cfg = compose("demo_phase", "data.input_size=64", "data.num_frames=4")
    return instantiate(cfg.model, _convert_="all").load_backbone(str(ctx["ckpt"]))


LOAD = [
    Case(
        "finetune-model-ckpt-text", with_file("ckpt", text_file, "pre.ckpt"), finetune_init, r"pre\.ckpt: not a PyTorch"
    ),
    Case("finetune-model-ckpt-foreign", with_file("ckpt", foreign, "pre.ckpt"), finetune_init, r"pre\.ckpt: contains"),
    Case(
        "load-text",
        with_file("ckpt", text_file, "a.pth"),
        load,
        r"a\.pth: not a PyTorch checkpoint \(not written by torch\.save",
    ),
    Case(
        "load-truncated", with_file("ckpt", truncated, "a.pth"), load, r"a\.pth: not a PyTorch checkpoint \(truncated"
    ),
    Case(
        "load-empty",
        lambda i, o: {"ckpt": (i / "a.pth").write_bytes(b"") or i / "a.pth"},
        load,
        r"a\.pth: not a PyTorch checkpoint \(the file is empty\)",
    ),
    Case(
        "load-foreign", with_file("ckpt", foreign, "a.pth"), load, r"a\.pth: contains pickled objects of type .*Foreign"
    ),
    Case(
        "load-nan",
        with_file("ckpt", lambda p: student_file(p, nan=True), "a.pth"),
        load,
        r"a\.pth: tensor 'blocks\.1\.mlp\.fc1\.weight' holds 1 non-finite",
    ),
    Case(
        "load-bad-safetensors",
        with_file("ckpt", text_file, "a.safetensors"),
        load,
        r"a\.safetensors: not a safetensors file",
    ),
    Case(
        "load-hf-bad-config",
        with_file("ckpt", hf_dir_bad_config, "hf"),
        load,
        r"hf/config\.json: not a Hugging Face config\.json",
    ),
    Case("load-missing", lambda i, o: {"ckpt": i / "gone.pth"}, load, r"checkpoint not found: .*gone\.pth"),
    Case(
        "load-list",
        lambda i, o: {"ckpt": (torch.save([1, 2], i / "l.pth"), i / "l.pth")[1]},
        load,
        r"l\.pth: expected a checkpoint mapping, got list",
    ),
    Case(
        "load-no-state",
        lambda i, o: {"ckpt": (torch.save({"epoch": 3}, i / "s.pth"), i / "s.pth")[1]},
        load,
        r"s\.pth: no state dict found; top-level keys \['epoch'\]",
    ),
]

CASES = PREPARE + MANIFESTS + TRAIN + EVAL + EXPORT + LOAD


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch, demo_root):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    ctx = {"inp": inp, "out": out, **case.make(inp, out)}
    if "mod" in ctx:  # a missing optional package
        monkeypatch.setitem(sys.modules, ctx["mod"], None)
    if case.id.startswith(("train-", "eval-")) and "demo" not in ctx:
        demo_link(inp, demo_root)
    before = snapshot(inp)
    capsys.readouterr()
    message = outcome(lambda: case.act(ctx), capsys)
    expect = case.expect.format(**{k: re.escape(str(v)) for k, v in ctx.items()})
    assert re.search(expect, message, re.S), f"{case.id}: culprit not named:\n{message[-2000:]}"
    assert "weights_only=False" not in message
    assert snapshot(inp) == before, f"{case.id}: an input file changed"
    if "no-extraction" in case.tags:  # all sources are checked before any frame is extracted
        assert not list((out / "o").glob("frames/*/*.jpg"))


# ------------------------------------------------------------------------------------ what users see
def test_user_error_is_one_line_and_full_error_shows_the_traceback(monkeypatch, capsys, tmp_path):
    path = text_file(tmp_path / "x.pth")
    with pytest.raises(SystemExit) as e, user_errors():
        load_backbone(path, VideoClassifier(5, "tiny", **GEOM))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and err.startswith(f"error: {path}: not a PyTorch checkpoint")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="not a PyTorch checkpoint"), user_errors():
        load_backbone(path, VideoClassifier(5, "tiny", **GEOM))


def test_disabling_an_optional_group_needs_no_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper", None)
    check_extras(["hparams_search=null", "~logger", "experiment=demo"])  # nothing to install


def test_hydra_wrapped_constructor_error_is_found(tmp_path, capsys):
    """An error raised inside ``instantiate`` reaches the user without Hydra's wrapper."""
    from hydra.utils import instantiate

    cfg = {"_target_": "surgvista.data.manifest.read_manifest", "path": str(tmp_path / "cholec80" / "val.jsonl")}
    with pytest.raises(SystemExit), user_errors():
        instantiate(cfg)
    assert capsys.readouterr().err.startswith("error: manifest not found:")


def test_missing_extra_at_instantiation_names_the_extra(monkeypatch, capsys):
    """logger=tensorboard from an experiment file (not the command line): Lightning's ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    err = ModuleNotFoundError("Neither `tensorboard` nor `tensorboardX` is available. Try `pip install`ing either.")
    with pytest.raises(SystemExit), user_errors():
        raise err
    assert "pip install 'surgvista[tensorboard]'" in capsys.readouterr().err


def test_optimized_metric_that_was_not_logged():
    from surgvista.run import metric_value

    with pytest.raises(ValueError, match=r"optimized_metric='val/acc' was not logged; available: \['val/loss'\]"):
        metric_value({"val/loss": 1.0}, "val/acc")


def test_batch_larger_than_the_dataset(demo_root, tmp_path):
    from surgvista.run import train
    from surgvista.utils.config_check import ConfigError

    cfg = compose("demo", *demo_overrides(demo_root), "data.batch_size=64", out=tmp_path)
    with pytest.raises(ConfigError, match=r"no optimiser step .*lower data\.batch_size"):
        train(cfg)


@pytest.mark.slow
def test_train_cli_prints_one_line_for_a_user_error(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["WANDB_MODE"] = "offline"

    def train_cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "train.py"), "experiment=demo", *args, f"hydra.run.dir={tmp_path}"]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    proc = train_cli("data.batch_size=abc")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data.batch_size='abc': expected an integer >= 1 (e.g. override data.batch_size=8)"
    )
    proc = train_cli("hparams_search=demo_optuna")
    assert proc.returncode == 1 and "pip install 'surgvista[sweep]'" in proc.stderr


# ----------------------------------------------------------------------------- the good paths it guards
def test_pretrain_surgvista_guards_leakage_by_default():
    cfg = compose("pretrain_surgvista", "paths.data_dir=/nowhere")
    assert list(cfg.data.exclude_from) == ["auto"]


def test_leakage_auto_lists_checked_and_missing(tmp_path, caplog):
    data = leakage_data(alias=False)(tmp_path, tmp_path)["data"]
    other = VideoEntry("cholec80", "video99", "video", tmp_path / "videos" / "video06.mp4", 6, 5.0, {})
    with caplog.at_level("INFO"):
        assert check_leakage([other], ["auto"], data) == []
    assert "checking the test splits of ['cholec80']" in caplog.text and "'endoscapes'" in caplog.text


def test_skip_writes_good_videos_and_extracts_no_bad_one(tmp_path):
    raw = F.cholec80(tmp_path / "raw")
    two_broken_videos(raw)
    assert (
        prepare_main(["cholec80", "--raw", str(raw), "--out", str(tmp_path / "o"), "--quiet", "--on-bad-video", "skip"])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "o" / "frames").iterdir()) == ["video01", "video41", "video50"]
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert {s["video_id"] for s in stats["skipped"]} == {"video02", "video45"}


def test_export_overwrite_replaces_atomically(tmp_path):
    ckpt = student_file(tmp_path / "student.pth")
    target = tmp_path / "e.pth"
    target.write_text("old")
    assert export_main([f"ckpt={ckpt}", "format=original", f"out={target}", "overwrite=true"]) == 0
    assert set(torch.load(target, weights_only=True)["model"]) == set(torch.load(ckpt, weights_only=True)["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.pth", "student.pth"]  # no temporary file left


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from surgvista.utils.io import atomic_write

    path = tmp_path / "m.jsonl"
    path.write_text("good\n")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "good\n" and [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_endoscapes_reads_keyframes_of_annotation_coco_vid(tmp_path):
    raw = F.endoscapes(tmp_path / "raw")
    for split in ("train", "val", "test"):
        (raw / "endoscapes" / split / "annotation_ds_coco.json").unlink()
    assert prepare_main(["endoscapes", "--raw", str(raw), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    e = read_manifest(tmp_path / "o" / "train.jsonl").entries[0]
    assert e.labels["cvs"][:6] == [0, -1, -1, -1, -1, 0]  # repeated non-keyframe labels are not read
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["splits"]["train"]["labels"]["cvs_criteria"] == {"annotated": 9, "unannotated": 32}


def test_cholec80_cvs_with_videos_elsewhere(tmp_path):
    ctx = cvs_videos_elsewhere(tmp_path, tmp_path)
    args = ["cholec80_cvs", "--raw", str(ctx["raw"]), "--videos", str(ctx["cholec"]), "--out", str(tmp_path / "o")]
    assert prepare_main([*args, "--quiet"]) == 0
    assert [e.video_id for e in read_manifest(tmp_path / "o" / "val.jsonl").entries] == ["video01_00"]


def test_cholect50_crossval_folds(tmp_path):
    raw = F.cholect50(tmp_path / "raw", vids=(1, 2, 6, 79, 92))
    assert (
        prepare_main(["cholect50", "--raw", str(raw), "--out", str(tmp_path / "o"), "--quiet", "--split", "crossval1"])
        == 0
    )
    split = {p.stem: [e.video_id for e in read_manifest(p).entries] for p in (tmp_path / "o").glob("*.jsonl")}
    assert split == {"val": ["VID01", "VID92"], "test": ["VID02", "VID06", "VID79"]}  # no train video: no train split


def test_demo_manifests_from_a_relative_folder(tmp_path, monkeypatch):
    from surgvista.data.demo import generate_demo_dataset

    monkeypatch.chdir(tmp_path)
    small = {**SMALL_DEMO, "frames_per_video": (30, 30), "size": (32, 24)}
    train, _ = generate_demo_dataset("data/demo", **small)
    assert read_manifest(train).entries[0].source == tmp_path / "data" / "demo" / "videos" / "video01.mp4"
    row = json.loads(train.read_text().splitlines()[1])
    assert row["source"] == "videos/video01.mp4"  # not data/demo/data/demo/videos/...


def test_demo_regenerates_a_stamped_set_whose_manifests_do_not_read_back(tmp_path):
    """The old `make demo-data` left doubled paths behind a valid stamp: such a set is rebuilt, not trusted."""
    from surgvista.data.demo import generate_demo_dataset

    small = {**SMALL_DEMO, "frames_per_video": (30, 30), "size": (32, 24)}
    train, _ = generate_demo_dataset(tmp_path / "demo", **small)
    rows = train.read_text().splitlines()
    broken = json.loads(rows[1])
    broken["source"] = "data/demo/data/demo/videos/video01.mp4"
    train.write_text("\n".join([rows[0], json.dumps(broken), *rows[2:]]) + "\n")
    generate_demo_dataset(tmp_path / "demo", **small)
    assert read_manifest(train).entries[0].source == tmp_path / "demo" / "videos" / "video01.mp4"
