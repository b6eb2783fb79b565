"""The preparation CLI and every dataset adapter, on tiny fixtures in the official layouts (dataset_fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import dataset_fixtures as F
import numpy as np
import pytest
from helpers import ROOT, exit_status
from PIL import Image

from surgvista.cli.prepare import main
from surgvista.data.adapters import DOWNSTREAM_DATASETS, PRETRAIN_DATASETS, REGISTRY
from surgvista.data.adapters.base import native_indices
from surgvista.data.manifest import read_manifest
from surgvista.data.prepare import crop_black_margin
from surgvista.data.readers import EntryReader
from surgvista.utils.io import sha256_file


@pytest.fixture(scope="session")
def raw(tmp_path_factory):
    """``raw(name)``: the fixture of dataset ``name``, built once per session."""
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = F.BUILDERS[name](tmp_path_factory.mktemp(f"raw_{name}"))
        return built[name]

    return get


def run(name: str, raw_dir: Path, out: Path, *args: str) -> dict:
    """Run the CLI in-process; return ``{split: Manifest}`` of every written split."""
    rc = main([name, "--raw", str(raw_dir), "--out", str(out), "--quiet", *args])
    assert rc == 0
    return {p.stem: read_manifest(p) for p in sorted(out.glob("*.jsonl"))}


def status(argv: list[str]) -> int:
    return exit_status(main, argv)


def ids(manifest) -> list[str]:
    return [e.video_id for e in manifest.entries]


def entry(manifest, video_id: str):
    return next(e for e in manifest.entries if e.video_id == video_id)


def test_registry_lists_all_roles():
    assert len(PRETRAIN_DATASETS) + len(DOWNSTREAM_DATASETS) == 22
    assert set(PRETRAIN_DATASETS) | set(DOWNSTREAM_DATASETS) == set(REGISTRY) == set(F.BUILDERS)


def test_native_indices_exact_ntsc():
    ntsc = native_indices(600, Fraction(30000, 1001), Fraction(1))
    assert len(ntsc) == 21 and ntsc[16] == 480 and ntsc[17] == 509  # ceil(fps)=30 would give 510
    assert native_indices(100, Fraction(25), Fraction(1)) == [0, 25, 50, 75]
    assert native_indices(101, Fraction(25), Fraction(1)) == [0, 25, 50, 75, 100]
    assert native_indices(3, Fraction(25), None) == [0, 1, 2]


# --- pre-training roles -----------------------------------------------------------------------------------
def test_cholec80_pretrain(raw, tmp_path):
    m = run("cholec80", raw("cholec80"), tmp_path)
    pre = m["pretrain"]
    assert ids(pre) == ["video01", "video02"] and [e.num_frames for e in pre.entries] == [4, 4]
    e = entry(pre, "video01")
    assert e.format == "frames" and e.labels["phase"] == [0, 1, 3, 5] and e.fps == 1.0
    assert F.frame_number(tmp_path / "frames" / "video01" / "1.jpg") == 25 % 32
    assert e.labels["tool"] == [[1, 0, 0, 0, 0, 0, 0]] * 4 and pre.meta["label_names"]["tool"][0] == "Grasper"
    assert e.sha256 == sha256_file(raw("cholec80") / "videos" / "video01.mp4")
    sums = (tmp_path / "checksums.sha256").read_text()
    assert f"{e.sha256}  videos/video01.mp4" in sums and "phase_annotations/video01-phase.txt" in sums
    assert pre.meta["label_names"]["phase"][2] == "ClippingCutting"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["pretrain"]["frames"] == 8
    assert stats["splits"]["pretrain"]["hours"] == pytest.approx(8 / 3600, abs=1e-6)


@pytest.mark.parametrize("name", ["m2cai16"])
def test_m2cai16_pretrain(raw, tmp_path, name):
    pre = run(name, raw(name), tmp_path)["pretrain"]
    assert ids(pre) == ["workflow_video_01", "workflow_video_02"]
    assert entry(pre, "workflow_video_01").labels["phase"] == [0, 2, 5]


def test_heichole(raw, tmp_path):
    pre = run("heichole", raw("heichole"), tmp_path)["pretrain"]
    assert ids(pre) == ["Hei-Chole1", "Hei-Chole16", "Hei-Chole30"]  # the HD copy is not a second video
    assert entry(pre, "Hei-Chole1").labels["phase"] == [0, 0, 1, 2]
    e50 = entry(pre, "Hei-Chole16")  # 50 fps: native frames 0, 50, 100, 150
    assert e50.num_frames == 4 and e50.labels["phase"] == [0, 0, 1, 2]
    assert F.frame_number(tmp_path / "frames" / "Hei-Chole16" / "1.jpg") == 50 % 32
    assert entry(pre, "Hei-Chole30").labels == {}


def test_pitvis(raw, tmp_path):
    pre = run("pitvis", raw("pitvis"), tmp_path)["pretrain"]
    assert ids(pre) == ["video_01", "video_02"] and [e.num_frames for e in pre.entries] == [4, 2]
    assert entry(pre, "video_01").labels["phase"] == [0, 0, 1, 3]  # -1 (background) -> 0; 1..14 kept
    assert entry(pre, "video_02").labels == {}


def test_psiava(raw, tmp_path):
    pre = run("psiava", raw("psiava"), tmp_path)["pretrain"]
    assert ids(pre) == ["CASE001", "CASE002"] and [e.num_frames for e in pre.entries] == [5, 3]
    assert F.frame_number(tmp_path / "frames" / "CASE001" / "3.jpg") == 3


def test_autolaparo_pretrain(raw, tmp_path):
    pre = run("autolaparo", raw("autolaparo"), tmp_path)["pretrain"]
    assert ids(pre) == ["01"] and entry(pre, "01").labels["phase"] == [0, 1, 2, 3]


@pytest.mark.parametrize("name,prefix", [("bernbypass70", "BBP"), ("strasbypass70", "SBP")])
def test_bypass(raw, tmp_path, name, prefix):
    pre = run(name, raw(name), tmp_path)["pretrain"]
    assert ids(pre) == [f"{prefix}01", f"{prefix}02"] and [e.num_frames for e in pre.entries] == [4, 2]
    # preparation 0-2.5 s with an out_of_body overlay (ignored), gastric_pouch_creation 2.5-4 s
    assert entry(pre, f"{prefix}01").labels["phase"] == [0, 0, 0, 1]


def test_gensurgery(raw, tmp_path):
    pre = run("gensurgery", raw("gensurgery"), tmp_path)["pretrain"]
    assert ids(pre) == ["abc-DEF_123", "tlkluS81Vh4"] and [e.num_frames for e in pre.entries] == [61, 61]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [s["video_id"] for s in stats["skipped"]] == ["short01"] and "60 s" in stats["skipped"][0]["reason"]


# --- downstream roles -------------------------------------------------------------------------------------
def test_cholec80_downstream_splits(raw, tmp_path):
    m = run("cholec80", raw("cholec80"), tmp_path / "a")
    assert ids(m["train"]) == ["video01", "video02"] and ids(m["test"]) == ["video41", "video45", "video50"]
    assert ids(m["val"]) == ids(m["test"]) and m["val"].meta["val_is_test"]
    assert entry(m["test"], "video45").labels["phase"] == [0, 1, 3, 5]
    m = run("cholec80", raw("cholec80"), tmp_path / "b", "--split", "40-8-32")
    assert ids(m["val"]) == ["video41", "video45"] and ids(m["test"]) == ["video50"]
    assert ids(m["train"]) == ids(m["pretrain"]) == ["video01", "video02"]


def test_cholec80_no_extract_reads_original_video(raw, tmp_path):
    m = run("cholec80", raw("cholec80"), tmp_path, "--no-extract")
    e = entry(m["train"], "video02")
    assert e.format == "video" and e.fps == 1.0 and e.source == (raw("cholec80") / "videos" / "video02.mp4").resolve()
    assert e.num_frames == 4 and e.labels["phase"] == [0, 1, 3, 5] and not (tmp_path / "frames").exists()
    frames = EntryReader("decord").read(e, [0, 3])
    assert [round(float(f[..., 0].mean()) / 8) for f in frames] == [0, 75 % 32]


def test_m2cai16_downstream(raw, tmp_path):
    m = run("m2cai16", raw("m2cai16"), tmp_path)
    assert ids(m["train"]) == ["workflow_video_01", "workflow_video_02"]
    assert ids(m["test"]) == ids(m["val"]) == ["test_workflow_video_01"]
    assert entry(m["test"], "test_workflow_video_01").labels["phase"] == [0, 2, 5]
    assert m["test"].meta["label_names"]["phase"][0] == "TrocarPlacement"


def test_autolaparo_downstream(raw, tmp_path):
    m = run("autolaparo", raw("autolaparo"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["01"], ["11"], ["15"])
    assert entry(m["test"], "15").labels["phase"] == [0, 1, 2, 3] and entry(m["test"], "15").num_frames == 4


def test_cataracts_ntsc_rate(raw, tmp_path):
    m = run("cataracts", raw("cataracts"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["train01"], ["test01"], ["test02"])
    e = entry(m["train"], "train01")
    assert e.num_frames == 21  # 600 frames at 29.97 fps
    assert F.frame_number(tmp_path / "frames" / "train01" / "17.jpg") == 509 % 32  # not 510: no ceil(fps) drift
    assert e.labels["phase"][17] == 5 and e.labels["phase"][0] == 0  # 1-based csv frames: frame 510 -> step 5
    v = entry(run("cataracts", raw("cataracts"), tmp_path / "v", "--no-extract")["train"], "train01")
    assert v.format == "video" and v.labels == e.labels
    frames = EntryReader("decord").read(v, [16, 17, 20])  # decord agrees on which native frames these are
    assert [round(float(f[..., 0].mean()) / 8) % 32 for f in frames] == [480 % 32, 509 % 32, 599 % 32]


def test_cataract21(raw, tmp_path):
    m = run("cataract21", raw("cataract21"), tmp_path)
    assert ids(m["train"]) == ["case_01", "case_02"] and ids(m["test"]) == ids(m["val"]) == ["case_18"]
    assert entry(m["train"], "case_01").labels["phase"] == [0, 4, 8]
    assert len(m["train"].meta["label_names"]["phase"]) == 11


def test_cataract21_merges_tonisieren_antibiotikum(raw, tmp_path):
    m = run("cataract21", raw("cataract21"), tmp_path, "--fps", "native", "--no-extract")
    phases = entry(m["train"], "case_01").labels["phase"]
    assert len(phases) == 75 and phases[60] == 10 and phases[70] == 10 and phases[0] == 0  # 60 Tonis., 70 Antib.


def test_cataract101_seeded_saved_split(raw, tmp_path):
    m = run("cataract101", raw("cataract101"), tmp_path)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["seed"] == 0 and sorted(sum(saved["splits"].values(), [])) == ["case_269", "case_270", "case_271"]
    for split, manifest in m.items():
        assert ids(manifest) == saved["splits"][split]
    every = {e.video_id: e for man in m.values() for e in man.entries}
    assert every["case_269"].labels["phase"] == [-1, -1, 0, 1, 2, -1]  # starts 30/60/100, repeated row 120 = end
    assert every["case_270"].labels["phase"] == [0, 0, 0, 0, 3, 3]
    m2 = run("cataract101", raw("cataract101"), tmp_path)  # re-run: the saved split is kept
    assert {k: ids(v) for k, v in m2.items()} == {k: ids(v) for k, v in m.items()}


def test_esd57(raw, tmp_path):
    m = run("esd57", raw("esd57"), tmp_path, "--seed", "3")
    saved = json.loads((tmp_path / "splits.json").read_text())["splits"]
    assert {k: ids(v) for k, v in m.items()} == {k: v for k, v in saved.items() if v}
    assert sum(len(v.entries) for v in m.values()) == 5
    every = {e.video_id: e for man in m.values() for e in man.entries}
    assert every["1"].labels["phase"] == [1, 2, 3, 4] and every["1"].num_frames == 4


def test_pmlr50(raw, tmp_path):
    m = run("pmlr50", raw("pmlr50"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["01"], ["34"], ["38"])
    assert entry(m["train"], "01").labels["phase"] == [1, 2, 3] and entry(m["test"], "38").labels["phase"] == [2, 3, 4]


def test_cholect50_splits_labels_and_image_modes(raw, tmp_path):
    m = run("cholect50", raw("cholect50"), tmp_path / "a")
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["VID01", "VID06"], ["VID05"], ["VID92"])
    e = entry(m["train"], "VID01")
    assert e.num_frames == 12
    assert e.labels["triplet"][:4] == [[], [1], [3, 17], None]  # -1 instance = no triplet; missing key = null
    assert e.labels["phase"][2] == 1 and m["train"].meta["label_names"]["triplet"][17] == "grasper,retract,gallbladder"
    assert m["train"].meta["same_video_as"] == {"VID01": ["cholec80", "video01"], "VID06": ["cholec80", "video06"]}
    for k in (4, 5):  # an RGBA and a greyscale source frame are converted, not crashed on
        img = Image.open(tmp_path / "a" / "frames" / "VID01" / f"{k}.jpg")
        assert img.mode == "RGB" and F.frame_number(tmp_path / "a" / "frames" / "VID01" / f"{k}.jpg") == k
    m = run("cholect50", raw("cholect50"), tmp_path / "b", "--split", "camma")
    assert (ids(m["train"]), ids(m["test"]), "val" in m) == (["VID01", "VID05", "VID92"], ["VID06"], False)


def test_prostate21(raw, tmp_path):
    m = run("prostate21", raw("prostate21"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["PWH01"], ["ESAD02"], ["CASE003"])
    e = entry(m["train"], "PWH01")
    assert e.num_frames == 4 and e.labels["triplet"] == [[0], None, [88], [11]]  # 1-based raw ids -> 0-based
    assert F.frame_number(tmp_path / "frames" / "PWH01" / "2.jpg") == 5  # gaps in the numbering collapsed


def test_cholec80_cvs(raw, tmp_path):
    m = run("cholec80_cvs", raw("cholec80_cvs"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["video03_00"], ["video01_00"], ["video05_00"])
    val = entry(m["val"], "video01_00")
    assert val.num_frames == 2 and val.labels["cvs"] == 3 and val.labels["cvs_criteria"] == [[1, 2, 0]] * 2
    assert F.frame_number(tmp_path / "frames" / "video01_00" / "0.jpg") == 25  # interval starts at 1 s
    assert val.sha256 == sha256_file(raw("cholec80_cvs") / "videos" / "video01.mp4")  # the Cholec80 video's digest
    assert m["val"].meta["same_video_as"] == {"video01_00": ["cholec80", "video01"]}
    assert entry(m["train"], "video03_00").labels["cvs"] == 5 and entry(m["train"], "video03_00").num_frames == 3
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert len(stats["skipped"]) == 1 and "final < initial" in stats["skipped"][0]["reason"]
    assert (
        status(
            ["cholec80_cvs", "--raw", str(raw("cholec80_cvs")), "--out", str(tmp_path / "x"), "--no-extract", "--quiet"]
        )
        == 1
    )


def test_endoscapes_numeric_order(raw, tmp_path):
    m = run("endoscapes", raw("endoscapes"), tmp_path)
    assert (ids(m["train"]), ids(m["val"]), ids(m["test"])) == (["1"], ["121"], ["162"])
    e = entry(m["train"], "1")
    assert e.num_frames == 41
    assert F.frame_number(tmp_path / "frames" / "1" / "40.jpg") == 40 % 32  # 1_1000.jpg last, not after 1_100
    assert e.labels["cvs"][:2] == [0, -1] and e.labels["cvs"][40] == 2
    assert e.labels["cvs_criteria"][40] == [0.67, 0.33, 1.0] and e.labels["cvs_criteria"][1] is None


def test_surgicalactions160(raw, tmp_path):
    m = run("surgicalactions160", raw("surgicalactions160"), tmp_path)
    saved = json.loads((tmp_path / "splits.json").read_text())["splits"]
    assert ids(m["train"]) == saved["train"] and ids(m["test"]) == ids(m["val"]) == saved["test"]
    every = {e.video_id: e for man in m.values() for e in man.entries}
    assert len(every) == 9 and every["16_02"].labels["action"] == 15 and every["01_01"].num_frames == 10


# --- CLI behaviour ----------------------------------------------------------------------------------------
def test_resume_skips_finished_videos(raw, tmp_path):
    run("psiava", raw("psiava"), tmp_path)
    frame = tmp_path / "frames" / "CASE001" / "0.jpg"
    os.utime(frame, (1, 1))
    run("psiava", raw("psiava"), tmp_path)
    assert frame.stat().st_mtime == 1  # not re-extracted
    run("psiava", raw("psiava"), tmp_path, "--size", "16x16")  # other options: re-extracted
    assert frame.stat().st_mtime != 1 and Image.open(frame).size == (16, 16)


def test_resize_keep_aspect_and_workers(raw, tmp_path):
    a = run("cholec80", raw("cholec80"), tmp_path / "a", "--size", "16x16", "--keep-aspect", "--workers", "2")
    b = run("cholec80", raw("cholec80"), tmp_path / "b", "--size", "16x16")
    assert Image.open(tmp_path / "a" / "frames" / "video41" / "0.jpg").size == (16, 12)
    assert Image.open(tmp_path / "b" / "frames" / "video41" / "0.jpg").size == (16, 16)
    assert [e.labels for e in a["test"].entries] == [e.labels for e in b["test"].entries]


def test_crop_black_margin():
    img = np.zeros((60, 100, 3), np.uint8)
    img[10:50, 30:70] = 200
    out = crop_black_margin(Image.fromarray(img))
    assert abs(out.width - 40) <= 2 and abs(out.height - 40) <= 2


def test_subprocess_cli_prints_table(raw, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "surgvista.prepare", "pmlr50", "--raw", str(raw("pmlr50")), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "videos" in proc.stdout and "train" in proc.stdout and (tmp_path / "test.jsonl").is_file()


# --- bad input --------------------------------------------------------------------------------------------
def _cholec_copy(raw, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "raw"
    shutil.copytree(raw("cholec80"), dst)
    return dst


def test_label_file_length_mismatch_names_both_counts(raw, tmp_path, capsys):
    src = _cholec_copy(raw, tmp_path)
    F._phase_txt(src / "phase_annotations" / "video02-phase.txt", F.cholec_phases(30), F.CHOLEC80_PHASES)
    assert status(["cholec80", "--raw", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "video02-phase.txt" in err and "30 frames" in err and "100 frames" in err


def test_unknown_phase_name(raw, tmp_path, capsys):
    src = _cholec_copy(raw, tmp_path)
    path = src / "phase_annotations" / "video01-phase.txt"
    path.write_text(path.read_text().replace("\t" + "ClippingCutting", "\tClipping", 1))
    assert status(["cholec80", "--raw", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "video01-phase.txt:" in err and "'Clipping'" in err and "unknown phase" in err


def test_empty_dataset_folder(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert status(["cholec80", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "videos" in capsys.readouterr().err
    (tmp_path / "raw" / "videos").mkdir()
    (tmp_path / "raw" / "phase_annotations").mkdir()
    assert status(["cholec80", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no videos found" in capsys.readouterr().err


def test_video_shorter_than_a_clip(raw, tmp_path, capsys):
    args = ["cholec80", "--raw", str(raw("cholec80")), "--quiet", "--min-frames", "8"]
    assert status([*args, "--out", str(tmp_path / "a")]) == 1
    assert "video01.mp4" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--on-bad-video", "skip"]) == 0
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert len(stats["skipped"]) == 5 and "fewer than the required 8" in stats["skipped"][0]["reason"]


def test_corrupt_video_error_or_counted_skip(raw, tmp_path, capsys):
    import shutil

    src = tmp_path / "raw"
    shutil.copytree(raw("gensurgery"), src)
    (src / "videos" / "broken.Title.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    assert status(["gensurgery", "--raw", str(src), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    assert "broken.Title.mp4" in capsys.readouterr().err
    m = run("gensurgery", src, tmp_path / "b", "--on-bad-video", "skip")
    assert ids(m["pretrain"]) == ["abc-DEF_123", "tlkluS81Vh4"]
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert {s["video_id"] for s in stats["skipped"]} == {"broken", "short01"}


def test_no_extract_frame_folders_in_place(raw, tmp_path):
    m = run("pmlr50", raw("pmlr50"), tmp_path, "--no-extract")
    e = entry(m["train"], "01")
    assert e.format == "frames" and e.source == (raw("pmlr50") / "frames" / "01").resolve() and e.num_frames == 3
    assert (
        status(["endoscapes", "--raw", str(raw("endoscapes")), "--out", str(tmp_path / "e"), "--no-extract", "--quiet"])
        == 1
    )  # <vid>_<frame>.jpg names cannot be read in place


def test_prepared_manifests_feed_the_clip_dataset(raw, tmp_path):
    import torch

    from surgvista.data.clips import VideoClipDataset

    run("cholec80", raw("cholec80"), tmp_path / "x")
    run("cholec80", raw("cholec80"), tmp_path / "v", "--no-extract")
    for folder in ("x", "v"):
        ds = VideoClipDataset([tmp_path / folder / "pretrain.jsonl"], torch.from_numpy, num_frames=2, sampling_rate=2)
        clip = ds[3]["video"]  # anchor frame 3 (native 75), previous frame 1 (native 25)
        assert len(ds) == 8 and clip.shape == (2, 24, 32, 3)
        assert [round(float(f[..., 0].float().mean()) / 8) % 32 for f in clip] == [25, 75 % 32]
