"""The objectives' ablation (docs/objectives.md#ablation): the seeds × videos bootstrap against a direct computation,
the table from run folders, few-video fine-tuning subsets, and a reduced ablation (1 seed, 2 objectives) end to end
with a rerun that reuses every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, exit_status
from omegaconf import OmegaConf

from surgvista.cli import ablation as cli
from surgvista.data.downstream import DemoDownstreamDataModule
from surgvista.evaluation.ablation import ablation_markdown, ablation_result, per_video_matrix, write_ablation
from surgvista.metrics.bootstrap import percentile_interval, seeds_videos_interval
from surgvista.stages import compose_stage
from surgvista.utils.errors import ConfigError


def test_seeds_videos_interval_equals_a_direct_double_resample():
    values = np.random.default_rng(5).uniform(0, 100, size=(3, 6))
    got = seeds_videos_interval(values, resamples=200, seed=7)
    rng = np.random.default_rng(7)  # the documented draws: all seed rows first, then all video columns
    rows, cols = rng.integers(0, 3, size=(200, 3)), rng.integers(0, 6, size=(200, 6))
    means = [np.mean([[values[r, c] for c in cols[i]] for r in rows[i]]) for i in range(200)]
    assert got.value == pytest.approx(values.mean())
    assert (got.lo, got.hi) == pytest.approx(percentile_interval(means))
    flat = seeds_videos_interval(np.full((3, 4), 42.0))
    assert (flat.value, flat.lo, flat.hi) == pytest.approx((42.0, 42.0, 42.0))  # no spread: a point interval
    with pytest.raises(ValueError, match="seeds, videos"):
        seeds_videos_interval(np.zeros(4))


def write_run(folder: Path, accuracies: dict[str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    videos = [{"video": v, "frames": 10, "accuracy": a, "edit": a / 2} for v, a in accuracies.items()]
    (folder / "per_video.json").write_text(json.dumps({"task": "phase", "videos": videos}))


def test_the_table_reads_run_folders_and_refuses_other_videos(tmp_path):
    acc = {("a", 0): [50, 70], ("a", 1): [60, 80], ("b", 0): [10, 30], ("b", 1): [20, 20]}
    for (obj, seed), (v1, v2) in acc.items():
        write_run(tmp_path / "knn" / obj / f"seed{seed}", {"video02": v2, "video01": v1})
    (tmp_path / "pretrain" / "a" / "seed0").mkdir(parents=True)
    (tmp_path / "pretrain" / "a" / "seed0" / "stage.json").write_text(json.dumps({"wall_s": 12.0, "cpu_s": 20.0}))
    result = ablation_result(tmp_path, ["a", "b"], [0, 1], ["knn"], "video_accuracy", resamples=100)
    a, b = (row["knn"] for row in result["rows"])
    assert a["value"] == pytest.approx(65.0) and b["value"] == pytest.approx(20.0)
    assert a["lo"] <= 65.0 <= a["hi"] and a["videos"] == 2
    assert result["rows"][0]["cost"] == {"wall_s": 12.0, "cpu_s": 20.0} and result["rows"][1]["cost"] is None
    matrix = per_video_matrix([tmp_path / "knn" / "a" / "seed0", tmp_path / "knn" / "a" / "seed1"], "video_accuracy")
    np.testing.assert_array_equal(matrix, [[50, 70], [60, 80]])  # videos in id order, not file order
    text = ablation_markdown(result, {"chance (uniform)": {"value": 14.3, "lo": 14.3, "hi": 14.3}})
    assert "| a | 65.0 [" in text and "| chance (uniform) | 14.3 [14.3, 14.3] | – |" in text
    table = write_ablation(result, tmp_path / "out")
    assert table.read_text().startswith("| objective | knn |") and (tmp_path / "out" / "ablation.png").stat().st_size
    write_run(tmp_path / "knn" / "b" / "seed1", {"video01": 1, "video03": 2})
    with pytest.raises(ConfigError, match="other test videos"):
        ablation_result(tmp_path, ["b"], [0, 1], ["knn"], "video_accuracy")


def test_few_video_fine_tuning_keeps_a_nested_subset_of_training_videos(tmp_path):
    kwargs = {"root": str(tmp_path / "demo"), "num_videos": 5, "num_val_videos": 1, "video_frames": (60, 80)}
    kwargs.update(video_size=(96, 80), num_classes=7, input_size=64, num_workers=0)
    full = DemoDownstreamDataModule(**kwargs)
    full.prepare_data()
    full.setup("fit")
    few = DemoDownstreamDataModule(**kwargs, train_fraction=0.5, subset_seed=1)
    few.setup("fit")
    all_ids, kept = set(full.video_ids("train")), few.video_ids("train")
    assert len(all_ids) == 4 and len(set(kept)) == 2 and set(kept) <= all_ids
    rows = {v for v, _ in few.datasets["train"].samples.tolist()}
    assert rows == set(range(len(kept)))  # every sample is re-indexed onto the kept rows
    assert few.video_ids("val") == full.video_ids("val")  # validation untouched
    strided = DemoDownstreamDataModule(**kwargs, train_fraction=0.5, subset_seed=1, train_target_stride=2)
    strided.setup("fit")
    every_other = [[v, t] for v, t in few.datasets["train"].samples.tolist() if t % 2 == 0]
    assert strided.datasets["train"].samples.tolist() == every_other  # every 2nd labelled frame of the same videos
    with pytest.raises(ConfigError, match="train_fraction=1.5"):
        DemoDownstreamDataModule(**kwargs, train_fraction=1.5)


def test_unknown_objective_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"unknown objective\(s\) \['mae'\]"):
        cli.load_ablation_config("proxy", ["only=[mae]"])
    with pytest.raises(ConfigError, match="no ablation config"):
        cli.load_ablation_config("nope", [])


REDUCED = [
    "seeds=[0]",
    "only=[random_init,surgvista]",
    "data.generate.videos=4",
    "data.generate.val_videos=2",
    "data.generate.frames=[60,80]",
    "data.generate.size=[96,80]",
    'data.overrides=[data.num_videos=4,data.num_val_videos=2,"data.video_frames=[60,80]","data.video_size=[96,80]",'
    "data.input_size=64]",
    "teacher.overrides=[trainer.max_epochs=1,trainer.limit_train_batches=2,trainer.limit_val_batches=1]",
    "pretrain.overrides=[data=proxy,data.num_frames=4,trainer.max_epochs=1,trainer.limit_train_batches=2,"
    "trainer.limit_val_batches=1,callbacks.probe_monitor=null]",
    "probes.attentive.overrides=[probe=attentive,trainer.max_epochs=2,data.num_frames=4]",
    "probes.knn.overrides=[probe=knn,data.num_frames=4]",
    "finetune.overrides=[data=proxy_phase,data.train_fraction=0.5,trainer.max_epochs=1,test_ckpt=last,"
    "data.num_frames=4,trainer.limit_train_batches=2,trainer.limit_val_batches=1]",
]


@pytest.mark.slow
def test_reduced_ablation_runs_end_to_end_and_a_rerun_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    common = f"common=[trainer=cpu,logger=csv,print_config=false,data.num_workers=0,paths.data_dir={tmp_path}/data]"
    argv = ["--out", str(tmp_path / "abl"), *REDUCED, common]
    assert cli.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"ablation: {tmp_path / 'abl' / 'ablation.md'}"
    result = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["objective"] for r in result["rows"]] == ["random_init", "surgvista"]
    for row in result["rows"]:
        for protocol in ("attentive", "knn", "finetune"):
            assert 0 <= row[protocol]["lo"] <= row[protocol]["value"] <= row[protocol]["hi"] <= 100
            assert row[protocol]["videos"] == 2
    assert result["rows"][1]["cost"]["wall_s"] > 0 and set(result["baselines"]) >= {"colour histogram (logreg)"}
    teacher = tmp_path / "abl" / "teacher" / "teacher.pth"
    pretrain_cfg = (tmp_path / "abl" / "pretrain" / "surgvista" / "seed0" / "config.yaml").read_text()
    assert teacher.is_file() and str(teacher) in pretrain_cfg  # the distilling objective read stage 0's teacher
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("stage.json")}
    assert len(stamps) == 1 + 1 + 2 * 3  # teacher, one pre-training, 2 objectives × (2 probes + fine-tuning)
    (tmp_path / "abl" / "knn" / "surgvista" / "seed0" / "stage.json").unlink()
    assert cli.main(argv) == 0  # a rerun: only the stage without its stage.json runs again
    again = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("stage.json")}
    changed = [p.relative_to(tmp_path / "abl").as_posix() for p in again if again[p] != stamps.get(p)]
    assert changed == ["knn/surgvista/seed0/stage.json"]
    other = [a.replace("probe=attentive,trainer.max_epochs=2", "probe=attentive,trainer.max_epochs=3") for a in argv]
    assert exit_status(cli.main, other) == 1  # another recipe in the same folder: one error line, no silent reuse
    assert "ran with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, edits",
    [("proxy", []), ("cholec80_base", ["teacher_ckpt=/ckpt/teacher.pth", "common=[paths.data_dir=/data]"])],
)
def test_every_stage_of_both_ablations_composes_and_resolves(config, edits, tmp_path, monkeypatch):
    """The miniature and the documented base-scale ablation (not run here): every stage's config composes and
    resolves, each objective's encoder reaches its probes and fine-tuning, and the teacher reaches the distillers."""
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    cfg = cli.load_ablation_config(config, ["seeds=[0]", *edits])
    stages = {s.name: s for s in cli.plan(cfg, tmp_path / "abl", tmp_path / "data")}
    assert len(stages) == bool(cfg.teacher) + 5 + 6 * 3  # stage 0, 5 pre-trainings, 6 objectives × 3 evaluations
    for name, stage in stages.items():
        composed = compose_stage(stage.overrides, tmp_path / name)
        resolved = OmegaConf.to_container(composed, resolve=True)
        kind, objective = name.split("/")[:2] if "/" in name else (name, None)
        if kind == "pretrain":
            teacher = (resolved["model"].get("teacher") or {}).get("ckpt")
            assert (teacher is not None) == bool(cfg.objectives[objective].get("teacher")), name
        elif kind in ("attentive", "knn"):
            ckpt = resolved["backbone"]["ckpt"]
            assert (ckpt is None) == (objective == "random_init") and resolved["backbone"]["seed"] == 0, name
        elif kind == "finetune":
            ckpt = resolved["model"]["ckpt"]
            assert (ckpt is None) == (objective == "random_init") and resolved["data"]["train_fraction"] == 0.25
            assert (resolved["model"]["net"].get("pos_embed") == "rope") == (objective == "vjepa"), name
