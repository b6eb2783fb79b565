"""``surgvista-score``: eval.py's own files reproduce its metrics.json; docs/metrics.md's worked examples; clear
errors; triplet and clip scores equal the metric classes on the same predictions."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import torch
from helpers import ROOT, exit_status

from surgvista.cli.score import main


def _score(capsys, *args: str) -> tuple[int, str, str]:
    code = exit_status(main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A tiny demo fine-tuning run, then eval.py's test outputs with the Cholec80 rules (2 test videos)."""
    from test_finetune import _compose

    from surgvista.data.demo import generate_demo_dataset
    from surgvista.run import evaluate, train

    tmp = tmp_path_factory.mktemp("score")
    root = tmp / "demo"
    generate_demo_dataset(root, num_videos=4, num_val_videos=2, frames_per_video=(50, 60), size=(96, 80), seed=1)
    demo = [
        f"data.root={root}",
        "data.num_videos=4",
        "data.num_val_videos=2",
        "data.video_frames=[50,60]",
        "data.video_size=[96,80]",
        "data.seed=1",
        "model.dataset=cholec80",
        "model.fps=1.0",
    ]
    train(
        _compose(
            "demo_phase",
            *demo,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "test=false",
            out=tmp / "ft",
        )
    )
    ckpt = tmp / "ft" / "checkpoints" / "last.ckpt"
    evaluate(_compose("demo_phase", *demo, f"ckpt_path={ckpt}", out=tmp / "ev", config="eval"))
    return tmp / "ev" / "test"


def test_score_reproduces_eval_metrics_json_exactly(eval_run, tmp_path, capsys):
    preds = eval_run / "predictions"
    assert len(list(preds.glob("*.csv"))) == 2
    out = tmp_path / "m.json"
    code, stdout, _ = _score(capsys, "phase", str(preds), str(preds), "--dataset", "cholec80", "--json", str(out))
    assert code == 0
    expected = json.loads((eval_run / "metrics.json").read_text())
    assert "relaxed_jaccard" in expected and "top1" in expected and "accuracy_top5" in expected
    assert json.loads(out.read_text()) == expected
    assert "relaxed_video_accuracy" in stdout


def test_eval_writes_per_video_records_and_intervals_that_score_reproduces(eval_run, tmp_path, capsys):
    from surgvista.cli import leaderboard

    ci = json.loads((eval_run / "ci.json").read_text())
    metrics = json.loads((eval_run / "metrics.json").read_text())
    assert ci["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95, "unit": "video", "videos": 2}
    for key in ("accuracy", "jaccard", "relaxed_jaccard", "relaxed_precision", "edit", "f1@10"):
        assert ci["metrics"][key]["value"] == pytest.approx(metrics[key], abs=1e-12), key
    assert len((eval_run / "per_video.csv").read_text().splitlines()) == 3  # header + 2 videos
    preds, out = eval_run / "predictions", tmp_path / "ci.json"
    argv = ("phase", str(preds), str(preds), "--dataset", "cholec80", "--ci", "--json", str(out))
    code, stdout, _ = _score(capsys, *argv)
    assert code == 0 and json.loads(out.read_text())["ci"] == ci
    assert "95 % bootstrap intervals (1000 resamples of the 2 videos, seed 0)" in stdout
    assert exit_status(leaderboard.main, ["--compare", str(eval_run.parent), str(eval_run), "--resamples", "20"]) == 0
    assert "| +0.00 [+0.00, +0.00] | 1 |" in capsys.readouterr().out


def _doc_blocks() -> tuple[dict[str, str], list[tuple[str, str]]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"<!-- (file|command): (.+?) -->\n```text\n(.*?)```", text, re.S)
    files = {name: body for kind, name, body in blocks if kind == "file"}
    commands = [(name, body) for kind, name, body in blocks if kind == "command"]
    return files, commands


def test_docs_worked_examples_are_what_the_tool_prints(tmp_path, capsys, monkeypatch):
    files, commands = _doc_blocks()
    assert len(files) == 4 and len(commands) == 2
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    for command, expected in commands:
        argv = shlex.split(command)
        assert argv[0] == "surgvista-score"
        code, stdout, err = _score(capsys, *argv[1:])
        assert code == 0, err
        assert stdout == expected, command


def _phase_dirs(tmp_path, gt_rows: dict[str, list[str]], pred_rows: dict[str, list[str]]):
    for side, rows in (("gt", gt_rows), ("pred", pred_rows)):
        (tmp_path / side).mkdir()
        for video, lines in rows.items():
            (tmp_path / side / f"{video}.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "gt"), str(tmp_path / "pred")


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        ({"v1": ["0\t0"], "v2": ["0\t0"]}, {"v1": ["0\t0"], "v3": ["0\t0"]}, r"no prediction for \['v2'\].*\['v3'\]"),
        ({"v1": ["0\t0", "1\t0"]}, {"v1": ["0\t0"]}, r"video v1: .*v1.txt has 2 frames but .*v1.txt has 1"),
        (
            {"v1": ["Frame\tPhase", "0\tPreparation", "1\tLunch"]},
            {"v1": ["0\t0", "1\t0"]},
            r"v1.txt:3: unknown phase label 'Lunch'",
        ),
        ({"v1": ["0\t0", "1\t9"]}, {"v1": ["0\t0", "1\t0"]}, r"labels must lie in \[0, 6\]"),
    ],
)
def test_phase_input_errors_are_one_clear_line(tmp_path, capsys, gt, pred, message):
    gt_dir, pred_dir = _phase_dirs(tmp_path, gt, pred)
    code, stdout, err = _score(capsys, "phase", gt_dir, pred_dir, "--dataset", "cholec80")
    assert code == 1 and not stdout
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err


def _write_our_csv(path, target, probs, multilabel):
    lines = ["frame,target,prediction," + ",".join(f"prob_{k}" for k in range(probs.shape[1]))]
    for i, (t, p) in enumerate(zip(target, probs)):
        if multilabel:
            tgt, prd = " ".join(map(str, np.flatnonzero(t))), " ".join(map(str, np.flatnonzero(p >= 0.5)))
        else:
            tgt, prd = str(t), str(int(p.argmax()))
        lines.append(f"{i},{tgt},{prd}," + ",".join(f"{x:.6g}" for x in p))
    path.write_text("\n".join(lines) + "\n")


def test_triplet_scores_equal_triplet_metrics(tmp_path, capsys):
    from surgvista.metrics import TripletMetrics

    rng = np.random.default_rng(0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    metric = TripletMetrics(100)
    for v in range(3):
        n = 20
        target = (rng.random((n, 100)) < 0.05).astype(np.int64)
        probs = np.round(rng.random((n, 100)), 4)
        ann = {str(i): [[int(k), 1, 1, 1] for k in np.flatnonzero(target[i])] or [[-1]] for i in range(n)}
        (tmp_path / "gt" / f"VID{v:02d}.json").write_text(json.dumps({"annotations": ann}))
        _write_our_csv(tmp_path / "pred" / f"VID{v:02d}.csv", target, probs, multilabel=True)
        idx = torch.arange(n)
        metric.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(target), torch.full((n,), v), idx)
    out = tmp_path / "t.json"
    code, _, err = _score(capsys, "triplet", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json", str(out))
    assert code == 0, err
    got, expected = json.loads(out.read_text()), metric.compute()
    assert got.keys() == expected.keys() == {f"mAP_{c}" for c in ("i", "v", "t", "iv", "it", "ivt")}
    assert all(got[k] == pytest.approx(expected[k], abs=1e-6) for k in got)


def test_clip_scores_equal_clip_metrics(tmp_path, capsys):
    from surgvista.metrics import ClipMetrics

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6), size=30).round(5)
    target = rng.integers(0, 6, 30)
    lines = ["video,target,prediction," + ",".join(f"prob_c{k}" for k in range(6))]
    lines += [
        f"clip{i:02d},{t},{int(p.argmax())}," + ",".join(map(str, p)) for i, (t, p) in enumerate(zip(target, probs))
    ]
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "gt.csv").write_text("video,target\n" + "".join(f"clip{i:02d},{t}\n" for i, t in enumerate(target)))
    out = tmp_path / "c.json"
    code, _, err = _score(
        capsys, "clip", str(tmp_path / "gt.csv"), str(tmp_path / "predictions.csv"), "--json", str(out)
    )
    assert code == 0, err
    metric = ClipMetrics(6, top_k=(1, 5))
    metric.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(target))
    expected = {k: float(v) for k, v in metric.compute().items()}
    got = json.loads(out.read_text())
    assert set(got) == set(expected) | {"top1"}
    assert all(got[k] == pytest.approx(expected[k], abs=1e-9) for k in expected)
    assert got["top1"] == pytest.approx(expected["accuracy"], abs=1e-4)


def test_eval_saves_ribbons_confusion_matrix_and_per_phase_tables(eval_run):
    from PIL import Image

    videos = sorted(p.stem for p in (eval_run / "predictions").glob("*.csv"))
    plots = eval_run / "plots"
    assert sorted(p.name for p in plots.glob("ribbon_*.png")) == [f"ribbon_{v}.png" for v in videos]
    for png in plots.glob("*.png"):
        assert min(Image.open(png).size) > 100
    assert (plots / "confusion_matrix.png").is_file()
    metrics = json.loads((eval_run / "metrics.json").read_text())
    assert metrics["f1_nanmean"] is not None and metrics["relaxed_f1_nanmean"] is not None
    for name in ("per_phase", "per_phase_relaxed"):
        rows = json.loads((eval_run / f"{name}.json").read_text())
        assert list(rows)[0] == "Preparation" and set(rows["Preparation"]) >= {"jaccard", "precision", "recall", "f1"}
        assert "| Preparation |" in (eval_run / f"{name}.md").read_text()


def test_ribbon_marks_relaxed_correct_frames():
    from surgvista.evaluation.plots import OUTCOME_COLORS, phase_ribbon
    from surgvista.metrics import relaxation_rules, relaxed_correct

    target = np.array([0] * 20 + [1] * 20)
    pred = np.array([0] * 23 + [1] * 17)  # three frames late: wrong, forgiven by the Cholec80 late rule
    ok = relaxed_correct(target, pred, relaxation_rules("cholec80"), 10)
    assert ok[20:23].all()
    names = [f"p{k}" for k in range(7)]
    orange = np.array([int(OUTCOME_COLORS[2][i : i + 2], 16) for i in (1, 3, 5)])

    def orange_pixels(image):
        return int((np.abs(image.astype(int) - orange).sum(-1) < 30).sum())

    assert orange_pixels(phase_ribbon(target, pred, names, ok)) > orange_pixels(phase_ribbon(target, pred, names))


def test_ribbon_rows_are_ground_truth_over_prediction_over_outcome():
    from matplotlib import colormaps

    from surgvista.evaluation.plots import OUTCOME_COLORS, phase_ribbon

    image = phase_ribbon(np.zeros(30, int), np.ones(30, int), [f"p{k}" for k in range(7)]).astype(int)
    column = image[:, image.shape[1] // 3]  # a vertical line through the ribbon

    def rows_of(rgb):
        return np.flatnonzero(np.abs(column - np.asarray(rgb)).sum(-1) < 12)

    tab10 = [np.round(np.asarray(colormaps["tab10"](k)[:3]) * 255) for k in (0, 1)]
    gt, pred = rows_of(tab10[0]), rows_of(tab10[1])
    wrong = rows_of([int(OUTCOME_COLORS[0][i : i + 2], 16) for i in (1, 3, 5)])
    wrong = wrong[wrong > gt.min()]  # black: also the title and tick text above the ribbon
    assert len(gt) > 5 and len(pred) > 5 and len(wrong) > 5
    assert gt.max() < pred.min() and pred.max() < wrong.min()


def test_prediction_files_keep_float32_probabilities_exactly(tmp_path):
    import csv

    from surgvista.evaluation.predictions import write_prediction_files

    rng = np.random.default_rng(0)
    probs = (1 / 7 + rng.normal(0, 1e-7, (50, 7))).astype(np.float32)  # near-ties, as an untrained model gives
    preds = {"video": np.zeros(50, np.int64), "frame": np.arange(50), "probs": probs,
             "target": np.zeros(50, np.int64), "prediction": probs.argmax(1)}
    (path,) = write_prediction_files(tmp_path, preds, ["v"])
    with path.open() as f:
        back = np.array([[float(x) for x in row[3:]] for row in list(csv.reader(f))[1:]], np.float32)
    np.testing.assert_array_equal(back, probs)
