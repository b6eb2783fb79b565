"""The two evaluation protocols: SurgMotion's per-video sklearn metrics (against scikit-learn itself), its edit
score, the worked example of docs/benchmark.md, the ``protocol`` config group, the deeper attentive head and a tiny
``protocol=surgmotion`` probe run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import exit_status, run_script, small_demo_set
from hydra import compose, initialize_config_dir
from sklearn import metrics as skm

from surgvista.cli.score import main
from surgvista.metrics.bootstrap import bootstrap_ci
from surgvista.metrics.per_video import HEADLINE, phase_metric, phase_records
from surgvista.metrics.phase import phase_scores
from surgvista.metrics.surgmotion import SM_METRICS, surgmotion_scores, surgmotion_video_scores
from surgvista.models.probe_grid import ProbeGrid
from surgvista.models.probes import AttentiveProbe

CONF = Path(__file__).resolve().parents[1] / "conf"


def direct_edit(pred, target) -> float:
    """The segmental edit score written out: runs, full Levenshtein table, ``(1 - d / max len) * 100``."""
    p = [int(x) for i, x in enumerate(pred) if i == 0 or pred[i - 1] != x]
    g = [int(x) for i, x in enumerate(target) if i == 0 or target[i - 1] != x]
    if not p and not g:
        return 100.0
    d = np.zeros((len(p) + 1, len(g) + 1))
    d[:, 0], d[0, :] = np.arange(len(p) + 1), np.arange(len(g) + 1)
    for i in range(1, len(p) + 1):
        for j in range(1, len(g) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (p[i - 1] != g[j - 1]))
    return (1 - d[-1, -1] / max(len(p), len(g))) * 100


def sklearn_video(target, pred) -> dict[str, float]:
    """SurgMotion's per-video definitions, computed by scikit-learn (the peer)."""
    kw = {"average": "macro", "zero_division": 0}
    return {
        "sm_accuracy": skm.accuracy_score(target, pred) * 100,
        "sm_precision": skm.precision_score(target, pred, **kw) * 100,
        "sm_recall": skm.recall_score(target, pred, **kw) * 100,
        "sm_jaccard": skm.jaccard_score(target, pred, **kw) * 100,
        "sm_f1": skm.f1_score(target, pred, **kw) * 100,
    }


def random_video(rng, classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A run-structured target and a noisy prediction (some classes absent, some predicted but absent)."""
    n = int(rng.integers(1, 120))
    target = np.repeat(rng.integers(0, classes, size=n // 10 + 1), 10)[:n]
    pred = np.where(rng.random(n) < 0.3, rng.integers(0, classes, size=n), target)
    return target, pred


@pytest.mark.parametrize("seed", range(6))
def test_per_video_scores_equal_sklearn_and_the_direct_edit_score(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        target, pred = random_video(rng, classes=int(rng.integers(2, 9)))
        ours = surgmotion_video_scores(target, pred)
        for key, value in sklearn_video(target, pred).items():
            assert ours[key] == pytest.approx(value, abs=1e-9), key
        assert ours["sm_edit"] == pytest.approx(direct_edit(list(pred), list(target)), abs=1e-9)


def test_edit_score_edge_cases():
    assert surgmotion_video_scores([3], [3])["sm_edit"] == 100.0
    assert surgmotion_video_scores([0, 0, 1, 1], [1, 1, 0, 0])["sm_edit"] == 0.0
    # one extra segment inserted: distance 1 over 3 segments
    assert surgmotion_video_scores([0, 0, 1, 1], [0, 2, 1, 1])["sm_edit"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="expected equal"):
        surgmotion_video_scores([0, 1], [0])


def test_records_bootstrap_and_headline_carry_the_mean_over_videos():
    rng = np.random.default_rng(1)
    videos = [random_video(rng) for _ in range(6)]
    targets, preds = [t for t, _ in videos], [p for _, p in videos]
    ids = [f"v{i}" for i in range(6)]
    plain = phase_records(preds, targets, ids, 7, dataset="cholec80")
    assert not any(k.startswith("sm_") for k in plain[0]) and "sm_jaccard" not in phase_metric(plain)
    records = phase_records(preds, targets, ids, 7, dataset="cholec80", surgmotion=True)
    point = phase_metric(records)
    for key in SM_METRICS[:-1]:  # the mean over videos of sklearn's per-video value
        expected = np.mean([sklearn_video(t, p)[key] for t, p in zip(targets, preds)])
        assert point[key] == pytest.approx(expected, abs=1e-9)
    assert point == {**phase_metric(plain), **surgmotion_scores(preds, targets)}
    assert set(SM_METRICS) <= set(HEADLINE["phase"])
    ci = bootstrap_ci(records, phase_metric, resamples=200, seed=0, keys=HEADLINE["phase"])
    for key in SM_METRICS:
        assert ci[key].value == pytest.approx(point[key])
        assert ci[key].lo <= ci[key].hi
    # a resample is a list of videos: its sm_jaccard is the mean of the drawn videos' values
    per_video = [r["sm_jaccard"] for r in records]
    draws = np.random.default_rng(0).integers(0, 6, size=(200, 6))
    lo, hi = np.percentile([np.mean([per_video[i] for i in row]) for row in draws], [2.5, 97.5])
    assert (ci["sm_jaccard"].lo, ci["sm_jaccard"].hi) == pytest.approx((lo, hi))


def runs(*pairs: tuple[int, int]) -> np.ndarray:
    """``runs((label, frames), ...)``: a label sequence written as runs."""
    return np.concatenate([np.full(n, label) for label, n in pairs])


# The worked example of docs/benchmark.md ("Two protocols"), Cholec80 at 1 fps.
EXAMPLE_TARGETS = [runs(*((p, 10) for p in range(7))), runs((0, 30), (1, 30), (2, 30), (3, 30))]
EXAMPLE_PREDS = [
    runs((0, 18), *((p, 10) for p in range(1, 6)), (6, 2)),  # every transition 8 s late
    runs((0, 30), (1, 30), (2, 15), (6, 1), (2, 14), (3, 30)),  # one spurious frame of a phase absent here
]


def test_worked_example_numbers():
    ours = phase_scores(EXAMPLE_PREDS, EXAMPLE_TARGETS, 7, dataset="cholec80", fps=1.0)
    sm = surgmotion_scores(EXAMPLE_PREDS, EXAMPLE_TARGETS)
    per_video = [surgmotion_video_scores(t, p) for t, p in zip(EXAMPLE_TARGETS, EXAMPLE_PREDS)]
    assert ours["relaxed_jaccard"] == pytest.approx(99.76, abs=5e-3)  # (6 × 100 + 98.33) / 7 phases
    assert ours["jaccard"] == pytest.approx(40.71, abs=5e-3)
    assert ours["relaxed_accuracy"] == pytest.approx(99.47, abs=5e-3)
    assert ours["accuracy"] == pytest.approx(74.21, abs=5e-3)
    assert per_video[0]["sm_jaccard"] == pytest.approx((10 / 18 + 5 * 2 / 18 + 2 / 10) / 7 * 100)  # 18.73
    assert per_video[1]["sm_jaccard"] == pytest.approx((3 + 29 / 30 + 0) / 5 * 100)  # 79.33
    assert sm["sm_jaccard"] == pytest.approx(49.03, abs=5e-3)
    assert sm["sm_accuracy"] == pytest.approx(65.30, abs=5e-3) == ours["video_accuracy_mean"]
    assert sm["sm_f1"] == pytest.approx(54.46, abs=5e-3) == ours["macro_f1"]
    assert sm["sm_edit"] == pytest.approx(83.33, abs=5e-3) == ours["edit"]
    for key in ("sm_jaccard", "sm_f1", "sm_precision", "sm_recall"):  # sklearn agrees on the example
        expected = np.mean([sklearn_video(t, p)[key] for t, p in zip(EXAMPLE_TARGETS, EXAMPLE_PREDS)])
        assert sm[key] == pytest.approx(expected)


@pytest.mark.parametrize("experiment", ["probe_cholec80", "probe_demo"])
def test_protocol_surgmotion_composes_and_sets_its_values(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("train.yaml", overrides=[f"experiment={experiment}"])
        matlab = compose("train.yaml", overrides=[f"experiment={experiment}", "protocol=matlab"])
        cfg = compose("train.yaml", overrides=[f"experiment={experiment}", "protocol=surgmotion"])
    assert default == matlab and not default.model.get("surgmotion_metrics", False)
    assert cfg.data.num_frames == 64 and cfg.data.sampling_rate == 1 and cfg.data.input_size == 224
    assert cfg.data.batch_size == 8 and cfg.data.inputs == "tokens"
    net = cfg.model.net
    assert net._target_ == "surgvista.models.probes.AttentiveProbe"
    assert (net.num_heads, net.depth, net.num_classes) == (16, 4, 7)
    assert cfg.probe.grid.enabled
    assert list(cfg.probe.grid.lrs) == [5e-3, 3e-3, 1e-3, 3e-4, 1e-4]
    assert list(cfg.probe.grid.wds) == [0.01, 0.1, 0.4, 0.8]
    assert cfg.model.lr_scale_batch == cfg.data.batch_size  # absolute lrs
    assert cfg.model.min_lr == 0.0 and cfg.model.warmup_epochs == 0
    assert cfg.model.surgmotion_metrics and cfg.model.relaxed == default.model.get("relaxed", "auto")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.probe_name == "attentive_surgmotion"


def test_attentive_depth_one_is_the_old_head_and_deeper_heads_run_in_a_grid():
    torch.manual_seed(0)
    old = AttentiveProbe(5, input_dim=16, num_heads=4)
    torch.manual_seed(0)
    new = AttentiveProbe(5, input_dim=16, num_heads=4, depth=1)
    assert len(new.blocks) == 0 and new.state_dict().keys() == old.state_dict().keys()
    x = torch.randn(3, 6, 16)
    assert torch.equal(old(x), new(x))
    deep = AttentiveProbe(5, input_dim=16, num_heads=16, depth=4)
    assert len(deep.blocks) == 3 and deep.blocks[0].attn.num_heads == 16
    # the blocks act on the tokens: the deep head equals its blocks then a depth-1 head with the same weights
    shallow = AttentiveProbe(5, input_dim=16, num_heads=16)
    shallow.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("blocks.")})
    tokens = x
    for block in deep.blocks:
        tokens = block(tokens)
    assert torch.allclose(deep(x), shallow(tokens), atol=1e-6)
    grid = ProbeGrid(deep, [(1e-3, 0.0), (3e-3, 0.1)])
    grid.train()
    out = grid(x)
    assert out.shape == (2, 3, 5)
    for k in range(2):
        assert torch.allclose(out[k], grid.head(k)(x), atol=1e-6)
    out.sum().backward()
    assert grid.param("blocks.0.attn.in_proj_weight").grad.abs().sum() > 0
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        AttentiveProbe(5, depth=0)
    copy.deepcopy(grid)  # picklable as a checkpoint's module


def test_tiny_surgmotion_probe_run_writes_the_sm_metrics(demo_root, tmp_path):
    run = tmp_path / "run"
    run_script(
        "train.py", "experiment=probe_demo", "model/backbone=demo_student", "protocol=surgmotion",
        *small_demo_set(demo_root), f"data.cache_root={tmp_path / 'cache'}", "data.input_size=32",
        "data.num_frames=8", "data.num_workers=0", "data.autocast=null", "trainer.precision=32",
        "trainer.max_epochs=1", "model.net.depth=2", "probe.grid.lrs=[1e-3,1e-4]", "probe.grid.wds=[0.01]",
        "print_config=false", f"hydra.run.dir={run}",
    )  # fmt: skip
    probe = json.loads(next(run.rglob("probe.json")).read_text())
    assert probe["protocol"] == "attentive_surgmotion"
    for key in SM_METRICS:
        assert np.isfinite(probe["metrics"][f"test/{key}"])
    ci = json.loads(next(run.rglob("ci.json")).read_text())["metrics"]
    assert set(SM_METRICS) <= set(ci) and "relaxed_jaccard" not in ci  # the demo has no relaxed rules
    assert "jaccard" in ci  # the MATLAB metrics stay
    records = json.loads(next(run.rglob("per_video.json")).read_text())["videos"]
    assert ci["sm_jaccard"]["value"] == pytest.approx(np.mean([r["sm_jaccard"] for r in records]))


def test_score_command_reports_the_worked_example_with_surgmotion(tmp_path, capsys):
    for side, sequences in (("gt", EXAMPLE_TARGETS), ("pred", EXAMPLE_PREDS)):
        (tmp_path / side).mkdir()
        for name, labels in zip(("video41", "video42"), sequences):
            (tmp_path / side / f"{name}.txt").write_text("".join(f"{i}\t{x}\n" for i, x in enumerate(labels)))
    out, per_video = tmp_path / "m.json", tmp_path / "pv.json"
    args = [str(tmp_path / "gt"), str(tmp_path / "pred"), "--dataset", "cholec80", "--json", str(out)]
    assert exit_status(main, ["phase", *args, "--surgmotion", "--ci", "--per-video", str(per_video)]) == 0
    doc = json.loads(out.read_text())
    assert doc["sm_jaccard"] == pytest.approx(49.03, abs=5e-3)
    assert doc["relaxed_jaccard"] == pytest.approx(99.76, abs=5e-3)
    assert doc["ci"]["metrics"]["sm_jaccard"]["value"] == pytest.approx(doc["sm_jaccard"])
    records = json.loads(per_video.read_text())["videos"]
    assert [r["sm_jaccard"] for r in records] == pytest.approx([18.73, 79.33], abs=5e-3)
    assert exit_status(main, ["phase", *args]) == 0  # without the flag: no sm_* (today's output)
    assert not any(k.startswith("sm_") for k in json.loads(out.read_text()))
    capsys.readouterr()
