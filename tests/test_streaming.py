"""Streaming phase recognition (surgvista.streaming, surgvista-stream): exact against eval.py's prediction files,
causal, incremental MS-TCN equal to the full one, logged drops, CSVs that surgvista-score reads, bad inputs."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import ROOT, SMALL_DEMO, small_demo_set

from surgvista.evaluation.predictions import read_prediction_file
from surgvista.models.mstcn import MSTCN
from surgvista.streaming import PhaseStream, StreamError
from surgvista.streaming.model import NotAPhaseModelError
from surgvista.streaming.mstcn import MSTCNStream
from surgvista.streaming.runner import latency_report, run_stream
from surgvista.streaming.sources import FrameSource, LiveSource, VideoFileSource

TINY = [
    "trainer=cpu", "trainer.devices=1", "trainer.precision=32", "logger=csv", "print_config=false",
    "model.net.preset=tiny", "model.net.drop_path_rate=0", "data.input_size=32", "data.num_frames=4",
    "data.sampling_rate=2", "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0",
]  # fmt: skip


def _compose(config: str, root: Path, out: Path, *extra: str):
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    more = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"] if config == "train" else []
    paths = [f"paths.output_dir={out}", f"paths.work_dir={out}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = ["experiment=demo_phase", *TINY, *small_demo_set(root), *more, *paths, *extra]
        return compose(config, overrides=overrides)


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny demo fine-tune (2 steps) and eval.py's prediction files of its test video."""
    from surgvista.data.demo import generate_demo_dataset
    from surgvista.run import evaluate, train

    tmp = tmp_path_factory.mktemp("stream")
    root = tmp / "demo"
    generate_demo_dataset(root, **SMALL_DEMO)
    train(_compose("train", root, tmp / "ft", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "test=false"))
    ckpt = tmp / "ft" / "checkpoints" / "last.ckpt"
    evaluate(_compose("eval", root, tmp / "ev", f"ckpt_path={ckpt}"))
    return {
        "root": root,
        "ckpt": ckpt,
        "video": root / "videos" / "video03.mp4",
        "offline": tmp / "ev" / "test" / "predictions",
        "tmp": tmp,
    }


def _probs(run) -> np.ndarray:
    return np.stack([p.probs for p in run.predictions])


@pytest.mark.parametrize("reuse", [False, True])
def test_stream_equals_eval_prediction_file(phase_run, reuse):
    stream = PhaseStream(phase_run["ckpt"], reuse_tubelets=reuse)
    run = run_stream(stream, VideoFileSource(phase_run["video"], stream.model.backend))
    ref = read_prediction_file(phase_run["offline"] / "video03.csv")
    assert [p.frame for p in run.predictions] == ref["frame"].tolist()
    np.testing.assert_array_equal([p.phase for p in run.predictions], ref["prediction"])
    np.testing.assert_allclose(_probs(run), ref["probs"], atol=1e-5, rtol=0)
    assert [p.name for p in run.predictions] == [ref["classes"][k] for k in ref["prediction"]]
    if reuse:  # T=4, s=2, tubelet 2: after the start, the clip of t shares 1 of its 2 tubelets with that of t - 4
        assert stream.clip.hits >= len(run.predictions) - 4 and latency_report(run, stream, "m", "cpu")["tubelet_cache"]


class ListSource(FrameSource):
    def __init__(self, frames, fps: float, name: str = "list") -> None:
        self.frames, self.source_fps, self.name = frames, fps, name

    def __iter__(self):
        for k, frame in enumerate(self.frames):
            yield frame, k / self.source_fps


def test_changing_future_frames_never_changes_past_predictions(phase_run):
    source = VideoFileSource(phase_run["video"])
    frames = [f for f, _ in source]
    base = run_stream(PhaseStream(phase_run["ckpt"]), ListSource(frames, 25.0))
    cut = 30  # native frame 30 = model frame 6 at 5 fps
    rng = np.random.default_rng(0)
    changed = frames[:cut] + [rng.integers(0, 256, f.shape, dtype=np.uint8) for f in frames[cut:]]
    other = run_stream(PhaseStream(phase_run["ckpt"]), ListSource(changed, 25.0))
    np.testing.assert_array_equal(_probs(base)[:6], _probs(other)[:6])
    assert not np.allclose(_probs(base)[6:], _probs(other)[6:])  # the change is visible from its frame on


@pytest.mark.parametrize("stages,layers", [(1, 3), (2, 6), (3, 4)])
def test_incremental_mstcn_equals_full_on_every_prefix(stages, layers):
    torch.manual_seed(stages)
    net = MSTCN(12, 5, stages, layers, 8).eval()
    features = torch.randn(1, 90, 12)
    with torch.no_grad():
        full = net(features)[-1, 0]
    inc = MSTCNStream(net)
    steps = torch.stack([inc.step(features[0, t]) for t in range(90)])
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    # constant state: each layer keeps 2·dilation columns, however long the video
    assert inc.state.shape == (1, 8, stages * sum(2 * 2**i for i in range(layers))) and inc.count == 90
    with torch.no_grad():
        prefix = net(features[:, :40])[-1, 0]
    torch.testing.assert_close(steps[:40], prefix, atol=1e-5, rtol=0)


def test_realtime_mode_logs_and_counts_every_drop(phase_run, caplog):
    frames = [f for f, _ in VideoFileSource(phase_run["video"])]
    stream = PhaseStream(phase_run["ckpt"])
    stream.fps = 1000.0  # a 1 ms budget per frame: the model cannot keep up
    with caplog.at_level(logging.WARNING, logger="surgvista.streaming.runner"):
        run = run_stream(stream, ListSource(frames[:20], 1000.0), realtime=True, paced=True)
    drops = [r for r in caplog.records if "dropped frame" in r.getMessage()]
    assert run.dropped and len(drops) == len(run.dropped)
    assert len(run.predictions) + len(run.dropped) == 20
    report = latency_report(run, stream, "tiny", "cpu")
    assert report["dropped"] == len(run.dropped) and report["dropped_frames"] == run.dropped
    # frames kept for later clips: the predictions that were made equal the ones of a run without drops
    every = PhaseStream(phase_run["ckpt"])
    every.fps = 1000.0
    full = run_stream(every, ListSource(frames[:20], 1000.0))
    made = [p.frame for p in run.predictions]
    np.testing.assert_allclose(_probs(run), _probs(full)[made], atol=1e-6, rtol=0)


def _mpegts_bytes(video: Path) -> bytes:
    """The demo video's packets remuxed (not re-encoded) into MPEG-TS, a format that streams through a pipe."""
    import av

    buf = io.BytesIO()
    with av.open(str(video)) as src, av.open(buf, "w", format="mpegts") as dst:
        s = src.streams.video[0]
        out = dst.add_stream_from_template(s)
        for packet in src.demux(s):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return buf.getvalue()


def test_live_source_through_a_pipe_at_real_time_pace(phase_run):
    data = _mpegts_bytes(phase_run["video"])
    read_fd, write_fd = os.pipe()
    duration, chunks = 70 / 25, 28

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            for k in range(chunks):
                w.write(data[k * len(data) // chunks : (k + 1) * len(data) // chunks])
                w.flush()
                time.sleep(duration / chunks)

    threading.Thread(target=feed, daemon=True).start()
    stream = PhaseStream(phase_run["ckpt"])
    start = time.perf_counter()
    with os.fdopen(read_fd, "rb") as r:
        run = run_stream(stream, LiveSource(r, format="mpegts", name="pipe"))
    assert time.perf_counter() - start >= 0.8 * duration  # it waited for the frames
    ref = read_prediction_file(phase_run["offline"] / "video03.csv")
    assert len(run.predictions) == len(ref["frame"])
    assert run.lag_ms and all(x >= 0 for x in run.lag_ms)
    # the same packets (remuxed), decoded by PyAV instead of decord: the same pixels, the same predictions
    np.testing.assert_array_equal([p.phase for p in run.predictions], ref["prediction"])
    np.testing.assert_allclose(_probs(run), ref["probs"], atol=1e-5, rtol=0)


def test_stream_csv_is_scored_by_surgvista_score(phase_run, capsys):
    from surgvista.cli.score import main as score
    from surgvista.cli.stream import main as stream_main

    out = phase_run["tmp"] / "cli"
    manifest = phase_run["root"] / "val.jsonl"
    code = stream_main([str(phase_run["ckpt"]), "--manifest", str(manifest), "--out", str(out),
                        "--offline", str(phase_run["offline"]), "--overlay", str(out / "overlay.mp4")])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    csv_path = out / "predictions" / "video03.csv"
    assert f"overlay: {out / 'overlay.mp4'}" in lines
    with av.open(str(out / "overlay.mp4")) as video:  # one overlay frame per streamed prediction
        assert sum(1 for _ in video.decode(video=0)) == len(read_prediction_file(csv_path)["target"])
    assert lines[-2:] == [f"stream: {csv_path}", f"offline: {phase_run['offline'] / 'video03.csv'}"]
    assert "| ms p50 |" in "\n".join(lines) and (out / "latency.json").is_file()
    ours, theirs = read_prediction_file(csv_path), read_prediction_file(phase_run["offline"] / "video03.csv")
    np.testing.assert_array_equal(ours["target"], theirs["target"])
    scored = {}
    for name, pred_dir in (("stream", out / "predictions"), ("offline", phase_run["offline"])):
        assert score(["phase", str(phase_run["offline"]), str(pred_dir), "--dataset", "demo", "--fps", "5"]) == 0
        scored[name] = capsys.readouterr().out
    # Top-5 is left out: the 2-step model is near uniform, every frame's 5th and 6th probabilities lie closer than the
    # 1e-5 that stream and offline agree to, so which of them is a top-5 hit is float noise.
    without_top5 = {k: [line for line in v.splitlines() if "top5" not in line] for k, v in scored.items()}
    assert without_top5["stream"] == without_top5["offline"] and "accuracy" in scored["stream"]


def _cli_error(args: list[str], capsys) -> str:
    from surgvista.cli.stream import main as stream_main

    with pytest.raises(SystemExit) as e:
        stream_main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_a_stream_that_ends_early_is_one_error_and_writes_nothing(phase_run, capsys):
    out = phase_run["tmp"] / "early"
    cut = phase_run["tmp"] / "cut.mp4"
    data = phase_run["video"].read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    for source in (["--video", str(cut)], ["--video", str(phase_run["video"]), "--expect-frames", "20"]):
        line = _cli_error([str(phase_run["ckpt"]), *source, "--out", str(out)], capsys)
        assert "ended early" in line or "cannot open" in line, line
    assert not out.exists() or not any(out.rglob("*.csv"))


def test_a_live_stream_cut_before_its_end_is_an_error(phase_run):
    data = _mpegts_bytes(phase_run["video"])
    source = LiveSource(io.BytesIO(data[: len(data) // 2]), format="mpegts", name="pipe")
    with pytest.raises(StreamError, match="pipe: the stream ended early after [0-9]+ of 14 frames"):
        run_stream(PhaseStream(phase_run["ckpt"]), source, expected_frames=14)


def test_a_corrupt_frame_is_one_error_and_writes_nothing(phase_run, capsys):
    folder = phase_run["tmp"] / "frames"
    folder.mkdir()
    from PIL import Image

    for k, (frame, _) in enumerate(VideoFileSource(phase_run["video"])):
        Image.fromarray(frame).save(folder / f"{k:05d}.png")
        if k == 12:
            break
    (folder / "00007.png").write_bytes(b"not a png")
    out = phase_run["tmp"] / "corrupt"
    line = _cli_error([str(phase_run["ckpt"]), "--frames", str(folder), "--fps", "25", "--out", str(out)], capsys)
    assert "00007" in line or "frame 7" in line, line
    assert not out.exists() or not any(out.rglob("*"))
    stream = PhaseStream(phase_run["ckpt"])
    with pytest.raises(StreamError, match="not an H×W×3 uint8"):
        stream.push(np.zeros((8, 8), np.float32), 0.0)


def test_a_checkpoint_that_is_not_a_phase_model_is_refused(phase_run, tmp_path, capsys):
    run = tmp_path / "pre"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  _target_: surgvista.modules.pretrain.PretrainModule\n")
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(NotAPhaseModelError, match="PretrainModule"):
        PhaseStream(run / "checkpoints" / "last.ckpt")
    line = _cli_error([str(run / "checkpoints" / "last.ckpt"), "--video", str(phase_run["video"]),
                       "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "PretrainModule" in line and not (tmp_path / "o").exists()
    alone = tmp_path / "alone.ckpt"
    torch.save({"state_dict": {}}, alone)
    assert "config.yaml" in _cli_error([str(alone), "--video", str(phase_run["video"]), "--out", str(tmp_path / "o")],
                                       capsys)  # fmt: skip


@pytest.fixture(scope="module")
def tecno_run(phase_run) -> dict[str, Path]:
    """A 2-epoch TeCNO run on the small demo set (features of its seeded random backbone, cached once)."""
    from hydra import compose, initialize_config_dir

    from surgvista.run import train

    out = phase_run["tmp"] / "tecno"
    overrides = [
        "experiment=demo_tecno", "trainer=cpu", "trainer.devices=1", "logger=csv", "print_config=false",
        *small_demo_set(phase_run["root"]), "trainer.max_epochs=2", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null", f"paths.output_dir={out}", f"paths.work_dir={out}", "test=false",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides=overrides))
    return {"ckpt": out / "checkpoints" / "last.ckpt", "cache": phase_run["root"] / "features"}


def test_tecno_stream_equals_the_full_mstcn_on_the_cached_features(phase_run, tecno_run):
    stream = PhaseStream(tecno_run["ckpt"])
    assert stream.model.family == "tecno"
    run = run_stream(stream, VideoFileSource(phase_run["video"]))
    (cache,) = tecno_run["cache"].glob("*/demo/video03.pt")
    cached = torch.load(cache, weights_only=True)
    with torch.no_grad():  # what TeCNOModule's test step computes on the cached features
        full = stream.model.net(cached["features"].float()[None])[-1, 0].softmax(-1).numpy()
    assert [p.frame for p in run.predictions] == list(cached["frames"])
    np.testing.assert_array_equal([p.phase for p in run.predictions], full.argmax(1))
    np.testing.assert_allclose(_probs(run), full, atol=1e-5, rtol=0)
    onnx = run_stream(PhaseStream(tecno_run["ckpt"], onnx=phase_run["tmp"] / "tecno_step.onnx"),
                      VideoFileSource(phase_run["video"]))  # fmt: skip
    np.testing.assert_allclose(_probs(onnx), full, atol=1e-4, rtol=0)  # the exported MS-TCN step in onnxruntime


def test_onnx_stream_is_timed_beside_pytorch_and_agrees(phase_run, capsys):
    from surgvista.cli.stream import main as stream_main

    out = phase_run["tmp"] / "onnx_cli"
    assert stream_main([str(phase_run["ckpt"]), "--video", str(phase_run["video"]), "--out", str(out), "--onnx"]) == 0
    reports = json.loads((out / "latency.json").read_text())
    reports = reports["reports"] if isinstance(reports, dict) else reports
    names = [r["model"] for r in reports]
    assert any("onnxruntime, side by side" in n for n in names) and any("pytorch, side by side" in n for n in names)
    onnx = next(r for r in reports if "onnxruntime" in r["model"])
    assert onnx["max_prob_diff_vs_pytorch"] <= 1e-4 and (out / "model.onnx").is_file()
    assert "onnxruntime" in capsys.readouterr().out  # in the printed latency table
    with pytest.raises(StreamError, match="cannot reuse tubelets"):
        PhaseStream(phase_run["ckpt"], onnx=out / "other.onnx", reuse_tubelets=True)


@pytest.mark.parametrize("patch_embed,reuse", [("image", False), ("image", True), ("video", True)])
def test_frame_level_and_clip_models_equal_the_model_on_eval_clips(phase_run, patch_embed, reuse):
    """Frame-level (``model=finetune_image``: a Conv2d per frame) and clip models against the network run on
    eval.py's clips (EntryReader + causal clip indices + EvalClipTransform)."""
    from surgvista.data.clip_augment import EvalClipTransform
    from surgvista.data.manifest import read_manifest
    from surgvista.data.readers import EntryReader
    from surgvista.data.sampling import causal_clip_indices
    from surgvista.models.classifier import VideoClassifier
    from surgvista.streaming.model import PhaseModel

    torch.manual_seed(0)
    tubelet = 1 if patch_embed == "image" else 2
    net = VideoClassifier(7, "tiny", img_size=32, num_frames=4, tubelet_size=tubelet, patch_embed=patch_embed,
                          head_init_scale=1.0, fc_drop_rate=0.0).eval()  # fmt: skip
    model = PhaseModel("clip", net, [str(k) for k in range(7)], 5.0, 4, 3, 32, ["squash", "hflip"])
    run = run_stream(PhaseStream(model, reuse_tubelets=reuse), VideoFileSource(phase_run["video"]))
    entry = read_manifest(phase_run["root"] / "val.jsonl").entries[0]
    reader, transform = EntryReader("decord"), EvalClipTransform(32, ["squash", "hflip"])
    with torch.no_grad():
        ref = [
            net(transform(reader.read(entry, causal_clip_indices(t, 4, 3)))).softmax(-1).mean(0).numpy()
            for t in range(entry.num_frames)
        ]
    np.testing.assert_allclose(_probs(run), np.stack(ref), atol=1e-5, rtol=0)
