"""The proxy variant of the demo generator and the colour-histogram baseline (docs/proxy.md)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from surgvista.data.demo import VARIANTS, generate_demo_dataset
from surgvista.data.proxy import PROXY_SCRIPT, render_proxy_frames
from surgvista.evaluation.color_baseline import color_baseline, color_histograms, fit_predict

# Both sets of the baseline test: 8 videos of 60-80 frames at 64x48, the last 4 held out, every frame in the manifest.
SMALL = {"num_videos": 8, "num_val_videos": 4, "frames_per_video": (60, 80), "size": (64, 48), "manifest_fps": 25.0}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_proxy_frames_are_a_function_of_the_seed():
    first = [(f.copy(), p) for f, p in render_proxy_frames(3, 60, (64, 48), 25)]
    again = list(render_proxy_frames(3, 60, (64, 48), 25))
    other = list(render_proxy_frames(4, 60, (64, 48), 25))
    assert all(np.array_equal(a, b) and p == q for (a, p), (b, q) in zip(first, again, strict=True))
    assert [p for _, p in first] == sorted(p for _, p in first)  # phases in order
    assert {p for _, p in first} == set(range(len(PROXY_SCRIPT)))  # every phase shown
    assert not np.array_equal(first[0][0], other[0][0])
    assert first[0][0].shape == (48, 64, 3) and first[0][0].dtype == np.uint8


@pytest.mark.parametrize("variant", VARIANTS)
def test_generated_datasets_are_byte_identical_run_to_run(variant, tmp_path):
    """Three generations in one process (x264's macroblock tree once made the second one differ)."""
    kw = {"num_videos": 2, "num_val_videos": 1, "frames_per_video": (60, 62), "size": (64, 48), "seed": 5}
    roots = [tmp_path / str(k) for k in range(3)]
    for root in roots:
        generate_demo_dataset(root, variant=variant, **kw)
    files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*") if p.is_file())
    assert len(files) == 7  # 2 videos, 2 label files, 2 manifests, the stamp
    for root in roots[1:]:
        for rel in files:
            assert digest(roots[0] / rel) == digest(root / rel), rel


def test_proxy_stamp_and_the_demo_stamp_unchanged(tmp_path):
    kw = {"num_videos": 2, "num_val_videos": 1, "frames_per_video": (60, 62), "size": (64, 48), "seed": 5}
    generate_demo_dataset(tmp_path / "proxy", variant="proxy", **kw)
    stamp = json.loads((tmp_path / "proxy" / "demo_params.json").read_text())
    assert stamp["variant"] == "proxy" and stamp["variant_version"] == 1
    generate_demo_dataset(tmp_path / "demo", **kw)  # the default variant keeps the stamp it always wrote
    assert sorted(json.loads((tmp_path / "demo" / "demo_params.json").read_text())) == [
        "fps", "frames", "manifest_fps", "num_val_videos", "num_videos", "seed", "size", "version",
    ]  # fmt: skip
    assert VARIANTS == ("demo", "proxy")
    with pytest.raises(ValueError, match="unknown demo variant 'colour'"):
        generate_demo_dataset(tmp_path / "bad", variant="colour", **kw)


def test_color_histograms_match_numpy_histogramdd():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 10, 12, 3), dtype=np.uint8)
    hist = color_histograms(frames, bins=4)
    for frame, row in zip(frames, hist, strict=True):
        ref, _ = np.histogramdd(frame.reshape(-1, 3), bins=(4, 4, 4), range=[(0, 256)] * 3)
        np.testing.assert_allclose(row, ref.ravel() / 120)


def test_nearest_centroid_picks_the_closest_class_mean():
    x = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    y = np.array([3, 3, 5, 5])
    assert fit_predict(x, y, np.array([[1.0, 1.0], [9.0, 5.0]]), "centroid").tolist() == [3, 5]
    with pytest.raises(ValueError, match="unknown colour-baseline classifier"):
        fit_predict(x, y, x, "knn")


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    return {v: generate_demo_dataset(root / v, variant=v, **SMALL) for v in VARIANTS}


def test_colour_baseline_is_near_chance_on_the_proxy_and_far_above_on_the_demo(small_sets):
    """Bound: the 4 test videos hold 28 phase segments (7 each). A classifier with no information on the phase
    still labels the frames of one segment alike (they share the video's palette and the phase's scene), so the
    independent trials are the segments, not the ~280 frames: with success 1/7 per segment, 10 or more right of 28
    has probability 0.004. Proxy accuracy must stay below 10/28 = 0.357 (chance 0.143 + 0.21). On the demo, where
    the phases differ by colour, the same baseline must score above 0.5 (3.5x chance): it can see colour cues.
    """
    bound = 10 / 28
    for classifier in ("logreg", "centroid"):
        proxy = color_baseline(*small_sets["proxy"], classifier=classifier)
        demo = color_baseline(*small_sets["demo"], classifier=classifier)
        assert proxy.num_test_videos == 4 and proxy.num_test_frames > 200
        assert proxy.uniform_chance == pytest.approx(1 / 7)
        assert proxy.accuracy < bound, (classifier, proxy)
        assert proxy.accuracy_lo <= proxy.accuracy <= proxy.accuracy_hi and demo.accuracy_lo > 0.5
        assert demo.accuracy > 0.5, (classifier, demo)


def test_demo_data_command_offers_the_variants(capsys):
    from helpers import exit_status

    from surgvista.cli.demo_data import main

    assert exit_status(main, ["--out", "unused", "--variant", "colour"]) == 2
    assert "invalid choice: 'colour'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("experiment", "data"), [("demo", "proxy"), ("demo_phase", "proxy_phase"), ("teacher_proxy", "proxy_frames")]
)
def test_proxy_data_configs_build_proxy_data_modules(experiment, data, tmp_path):
    from helpers import compose
    from hydra.utils import instantiate

    cfg = compose(experiment, f"data={data}", f"paths.data_dir={tmp_path}", out=tmp_path / "run")
    module = instantiate(cfg.data, _convert_="all")
    assert module.demo.variant == "proxy" and module.demo.root == tmp_path / "proxy"
    assert module.demo.train_manifest == str(tmp_path / "proxy" / "train.jsonl")
