"""Bootstrap over videos (``metrics/bootstrap.py``, ``metrics/per_video.py``, ``evaluation/uncertainty.py``): the
intervals and the paired comparison against direct computations, faithfulness of the per-video records to the
headline metrics, ``surgvista-score --ci``, the leaderboard's ``mean [lo, hi]`` and ``--compare``, and the
relaxed-metric frame-rate trap."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from helpers import exit_status

from surgvista.cli import leaderboard as leaderboard_cli
from surgvista.cli.score import main as score_main
from surgvista.evaluation.leaderboard import leaderboard
from surgvista.metrics import clip_scores, phase_scores, triplet_scores
from surgvista.metrics.bootstrap import (
    bootstrap_ci,
    p_value,
    paired_bootstrap,
    percentile_interval,
    resample_indices,
)
from surgvista.metrics.per_video import (
    clip_metric,
    clip_records,
    phase_metric,
    phase_records,
    triplet_metric,
    triplet_records,
)
from surgvista.metrics.phase import relax_window, relaxation_rules, relaxed_correct, video_phase_scores
from surgvista.metrics.stats import nanmean


def mean_metric(units):
    return {"m": float(np.mean(units))}


def phase_videos(seed: int, n: int = 8, noise: float = 0.2, k: int = 7):
    """``n`` videos of ordered phases with ``noise`` of the frames predicted at random."""
    rng, noisy = np.random.default_rng(seed), np.random.default_rng(seed + 1000)  # same targets for any noise
    preds, targets = [], []
    for _ in range(n):
        t = np.sort(rng.integers(0, k, rng.integers(40, 90)))
        p = t.copy()
        flip = noisy.random(t.size) < noise
        p[flip] = noisy.integers(0, k, flip.sum())
        preds.append(p)
        targets.append(t)
    return preds, targets


# ------------------------------------------------------------------------------------------- the engine


def test_resamples_are_the_documented_generator_draws():
    expected = np.random.default_rng(7).integers(0, 5, size=(4, 5))
    assert np.array_equal(resample_indices(5, 4, 7), expected)


def test_interval_equals_a_hand_written_loop():
    values = [3.0, 10.0, 4.0, 8.0]
    rng = np.random.default_rng(123)
    means = [np.mean([values[i] for i in rng.integers(0, 4, size=4)]) for _ in range(500)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    ci = bootstrap_ci(values, mean_metric, resamples=500, seed=123)["m"]
    assert (ci.value, ci.lo, ci.hi) == (np.mean(values), lo, hi)


def test_three_videos_resample_frequencies_match_exhaustive_enumeration():
    values = [1.0, 2.0, 4.0]
    exact = Counter(float(np.mean([values[i] for i in idx])) for idx in itertools.product(range(3), repeat=3))
    r = 20000
    drawn = Counter(float(np.mean([values[i] for i in row])) for row in resample_indices(3, r, 0))
    assert set(drawn) <= set(exact)
    for value, count in exact.items():
        assert abs(drawn[value] / r - count / 27) < 0.01
    ci = bootstrap_ci(values, mean_metric, resamples=r, seed=0)["m"]
    assert min(exact) <= ci.lo <= ci.value <= ci.hi <= max(exact)


def test_nan_resamples_are_left_out_and_all_nan_gives_nan():
    assert percentile_interval([1.0, np.nan, 3.0, np.nan, 2.0]) == tuple(np.percentile([1.0, 3.0, 2.0], [2.5, 97.5]))
    assert all(math.isnan(x) for x in percentile_interval([np.nan, np.nan]))


def test_paired_difference_and_p_value_equal_a_direct_computation():
    a, b = [70.0, 80.0, 75.0, 90.0, 60.0], [68.0, 81.0, 70.0, 85.0, 61.0]
    rng = np.random.default_rng(5)
    diffs = []
    for _ in range(300):
        idx = rng.integers(0, 5, size=5)
        diffs.append(np.mean([a[i] for i in idx]) - np.mean([b[i] for i in idx]))
    diffs = np.asarray(diffs)
    below, above = (diffs <= 0).sum(), (diffs >= 0).sum()
    expected_p = min(1.0, 2 * min(1 + below, 1 + above) / 301)
    d = paired_bootstrap(a, b, mean_metric, resamples=300, seed=5)["m"]
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (d.lo, d.hi) == tuple(np.percentile(diffs, [2.5, 97.5]))
    assert d.p == expected_p == p_value(diffs)


def test_identical_runs_give_zero_difference_and_p_one():
    preds, targets = phase_videos(0)
    records = phase_records(preds, targets, [f"v{i}" for i in range(8)], 7, dataset="cholec80")
    for d in paired_bootstrap(records, records, phase_metric, resamples=200).values():
        assert (d.diff, d.lo, d.hi, d.p) == (0.0, 0.0, 0.0, 1.0)


def test_a_clearly_better_run_is_significant():
    preds, targets = phase_videos(1, n=10, noise=0.05)
    worse, _ = phase_videos(1, n=10, noise=0.4)  # same seed: same ground truth, more noise
    ids = [f"v{i}" for i in range(10)]
    good = phase_records(preds, targets, ids, 7, dataset="cholec80")
    bad = phase_records(worse, targets, ids, 7, dataset="cholec80")
    diffs = paired_bootstrap(good, bad, phase_metric, resamples=500)
    for key in ("accuracy", "jaccard", "relaxed_f1", "edit"):
        assert diffs[key].diff > 0 and diffs[key].lo > 0 and diffs[key].p < 0.05, key
    assert diffs["accuracy"].p == pytest.approx(2 / 501)


# ------------------------------------------------------------------------------- faithful per-video records


@pytest.mark.parametrize("seed", range(4))
def test_phase_records_give_phase_scores_exactly_and_intervals_contain_them(seed):
    preds, targets = phase_videos(seed)
    ids = [f"v{i}" for i in range(len(preds))]
    records = phase_records(preds, targets, ids, 7, dataset="cholec80")
    ref, got = phase_scores(preds, targets, 7, dataset="cholec80"), phase_metric(records)
    for key, value in got.items():
        expected = ref["accuracy" if key == "top1" else key]
        assert value == expected or (math.isnan(value) and math.isnan(expected)), key
    idx = resample_indices(len(records), 1, seed)[0]  # one resample, scored from the resampled sequences
    resampled = phase_scores([preds[i] for i in idx], [targets[i] for i in idx], 7, dataset="cholec80")
    for key, value in phase_metric([records[i] for i in idx]).items():
        expected = resampled["accuracy" if key == "top1" else key]
        assert value == expected or (math.isnan(value) and math.isnan(expected)), key
    for key, ci in bootstrap_ci(records, phase_metric, resamples=300, seed=seed).items():
        if math.isfinite(ci.value):
            assert ci.lo <= ci.value <= ci.hi, key


def test_triplet_records_give_video_wise_map_of_the_resampled_frames():
    rng = np.random.default_rng(0)
    targets = [(rng.random((25, 100)) < 0.06).astype(np.int64) for _ in range(5)]
    probs = [np.clip(t * 0.5 + rng.random(t.shape) * 0.6, 0, 1) for t in targets]
    records = triplet_records(targets, probs, list("abcde"))
    for idx in ([0, 1, 2, 3, 4], [0, 0, 3, 4, 4]):
        ref = triplet_scores([targets[i] for i in idx], [probs[i] for i in idx])
        got = triplet_metric([records[i] for i in idx])
        assert got == pytest.approx(ref, abs=1e-9)
    ci = bootstrap_ci(records, triplet_metric, resamples=200)
    assert all(c.lo <= c.value <= c.hi for c in ci.values())


def test_clip_records_give_clip_scores_of_the_pooled_samples():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=40)
    target = np.where(rng.random(40) < 0.7, probs.argmax(1), rng.integers(0, 4, 40))
    groups = [f"video{i // 4}" for i in range(40)]  # 10 videos of 4 frames
    records = clip_records(probs, target, groups)
    assert len(records) == 10
    ref = clip_scores(probs, target, top_k=(1,))
    assert clip_metric(records) == pytest.approx(ref | {"top1": ref["accuracy"]})
    ci = bootstrap_ci(records, clip_metric, resamples=200)
    assert all(c.lo <= c.value <= c.hi for c in ci.values())


def test_records_check_their_input_like_phase_scores():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\]"):
        phase_records([np.array([0, 7])], [np.array([0, 1])], ["v"], 7, dataset="cholec80")
    with pytest.raises(ValueError, match="1 video ids for 2 videos"):
        phase_records([np.array([0])] * 2, [np.array([0])] * 2, ["v"], 7, dataset="cholec80")


# ------------------------------------------------------------------------------------------- the fps trap


def relaxed_jaccard(target, pred, window: int) -> float:
    rules = relaxation_rules("cholec80", 7)
    ok = relaxed_correct(target, pred, rules, window)
    return nanmean(np.minimum(video_phase_scores(target, pred, 7, ok).jaccard, 100))


def test_wrong_fps_inflates_relaxed_jaccard_and_is_refused():
    target = np.repeat(np.arange(7), 60)  # 1 fps: seven 60 s phases
    pred = np.concatenate([target[:30], target[:-30]])  # every transition predicted 30 s late
    at_1fps = relaxed_jaccard(target, pred, relax_window(1.0))  # 10-frame window = 10 s: 30 s late not forgiven
    as_25fps = relaxed_jaccard(target, pred, relax_window(25.0))  # 250-frame window "= 10 s": forgives 250 s
    assert as_25fps == 100.0 and at_1fps == pytest.approx(60.317, abs=1e-3)
    with pytest.raises(ValueError, match=r"relaxed cholec80 metrics are defined at 1 fps .* got fps=25"):
        phase_scores([pred], [target], 7, fps=25.0, dataset="cholec80")
    with pytest.raises(ValueError, match="defined at 1 fps"):
        phase_records([pred], [target], ["v"], 7, fps=25.0, dataset="cholec80")
    from surgvista.metrics import PhaseMetrics

    with pytest.raises(ValueError, match="defined at 1 fps"):
        PhaseMetrics(7, fps=25.0, dataset="cholec80")
    assert phase_scores([pred], [target], 7, fps=25.0, dataset="cholec80", relaxed=False)  # unrelaxed: any rate
    assert phase_scores([pred], [target], 8, fps=25.0, dataset="m2cai16")  # Evaluate_m2cai.m's own rate


# ---------------------------------------------------------------------------------------------- commands


def write_phase_folder(folder, videos: dict[str, np.ndarray], step: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, labels in videos.items():
        rows = "".join(f"{i * step}\t{int(x)}\n" for i, x in enumerate(labels))
        (folder / f"{name}.txt").write_text("Frame\tPhase\n" + rows)


@pytest.fixture
def phase_runs(tmp_path):
    """Ground truth and two prediction folders (good, bad) of 8 videos, and their per_video.json files."""
    good, targets = phase_videos(3, n=8, noise=0.05)
    bad, _ = phase_videos(3, n=8, noise=0.4)
    names = [f"video{i:02d}" for i in range(8)]
    write_phase_folder(tmp_path / "gt", dict(zip(names, targets)))
    write_phase_folder(tmp_path / "good", dict(zip(names, good)))
    write_phase_folder(tmp_path / "bad", dict(zip(names, bad)))
    for run in ("good", "bad"):
        argv = ["phase", str(tmp_path / "gt"), str(tmp_path / run), "--dataset", "cholec80", "--num-classes", "7"]
        assert exit_status(score_main, [*argv, "--per-video", str(tmp_path / "runs" / run / "per_video.json")]) == 0
    return tmp_path


def test_score_ci_prints_and_writes_intervals_around_the_scores(phase_runs, capsys):
    capsys.readouterr()
    out = phase_runs / "scores.json"
    argv = ["phase", str(phase_runs / "gt"), str(phase_runs / "good"), "--dataset", "cholec80", "--num-classes", "7"]
    assert exit_status(score_main, [*argv, "--ci", "--resamples", "200", "--seed", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "95 % bootstrap intervals (200 resamples of the 8 videos, seed 3)" in printed
    data = json.loads(out.read_text())
    assert data["ci"]["bootstrap"] == {"resamples": 200, "seed": 3, "level": 0.95, "unit": "video", "videos": 8}
    for key in ("accuracy", "jaccard", "relaxed_jaccard", "relaxed_f1", "edit", "f1@50"):
        ci = data["ci"]["metrics"][key]
        assert ci["value"] == data[key] and ci["lo"] <= ci["value"] <= ci["hi"]
        assert f"| {key} | {ci['value']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}] |" in printed


def test_compare_gives_paired_differences_and_refuses_other_videos(phase_runs, capsys):
    capsys.readouterr()
    good, bad = str(phase_runs / "runs" / "good" / "per_video.json"), str(phase_runs / "runs" / "bad")
    assert exit_status(leaderboard_cli.main, ["--compare", good, bad, "--resamples", "300"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| accuracy |"))
    assert row.endswith(f"| {2 / 301:.3g} |") and "| +" in row
    assert exit_status(leaderboard_cli.main, ["--compare", good, good, "--resamples", "50"]) == 0
    assert "| +0.00 [+0.00, +0.00] | 1 |" in capsys.readouterr().out
    doc = json.loads((phase_runs / "runs" / "bad" / "per_video.json").read_text())
    doc["videos"] = doc["videos"][:-1]
    (phase_runs / "short.json").write_text(json.dumps(doc))
    assert exit_status(leaderboard_cli.main, ["--compare", good, str(phase_runs / "short.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not on the same test videos" in err[0] and "only in A: ['video07']" in err[0]


def test_score_refuses_other_frame_rates_unless_resampled(phase_runs, capsys):
    gt = json.loads((phase_runs / "runs" / "good" / "per_video.json").read_text())
    preds, targets = phase_videos(3, n=8, noise=0.05)
    names = [f"video{i:02d}" for i in range(8)]
    write_phase_folder(phase_runs / "p25", {n: np.repeat(p, 25) for n, p in zip(names, preds)})  # 25 fps frames
    capsys.readouterr()
    argv = ["phase", str(phase_runs / "gt"), str(phase_runs / "p25"), "--dataset", "cholec80", "--num-classes", "7"]
    assert exit_status(score_main, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must list the same frames" in err[0] and "--resample" in err[0]
    out = phase_runs / "p25.json"
    assert exit_status(score_main, [*argv, "--resample", "25", "--per-video", str(out)]) == 0
    assert json.loads(out.read_text())["videos"] == gt["videos"]  # the 1 fps predictions again
    argv[2] = str(phase_runs / "good")
    assert exit_status(score_main, [*argv, "--fps", "25"]) == 1
    assert "defined at 1 fps" in capsys.readouterr().err


def test_leaderboard_shows_mean_and_interval(tmp_path, capsys):
    for protocol, (value, lo, hi) in {"linear": (71.5, 65.25, 77.0), "knn": (60.0, 50.0, 70.0)}.items():
        run = tmp_path / protocol
        run.mkdir()
        record = {
            "backbone": "b", "protocol": protocol, "dataset": "demo", "params": 1e6,
            "metrics": {"test/top1": value, "test/edit": 50.0}, "clips_per_s": 3.0,
            "ci": {"top1": {"value": value, "lo": lo, "hi": hi}, "edit": {"value": 50.0, "lo": 40.0, "hi": 60.0}},
        }  # fmt: skip
        (run / "probe.json").write_text(json.dumps(record))
    leaderboard(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| 71.50 [65.25, 77.00] |" in md and "| 60.00 [50.00, 70.00] |" in md and "50.00 [40.00, 60.00]" in md
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0]
    assert "top1,top1_lo,top1_hi" in header and "edit,edit_lo,edit_hi" in header
