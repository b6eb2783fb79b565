"""Deployment export of the online phase models (ONNX, onnxruntime parity <= 1e-4), the incremental MS-TCN step
(equal to the full causal model at every frame) and the stream's overlay video (decoded back and checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from surgvista.models.classifier import VideoClassifier
from surgvista.models.mstcn import MSTCN
from surgvista.streaming.mstcn_step import IncrementalMSTCN
from surgvista.streaming.onnx import (
    OnnxError,
    OnnxMSTCNStream,
    OnnxSession,
    export_clip_model,
    export_mstcn_step,
    export_onnx,
)
from surgvista.streaming.overlay import OverlayError, phase_palette, write_overlay

TOLERANCE = 1e-4
BAD_PHASE = r"row 1 phase=3; expected an integer in \[0, 3\)"
NAMES = ("Preparation", "Calot triangle dissection", "Clipping and cutting")


def tiny_classifier(**kwargs) -> VideoClassifier:
    torch.manual_seed(0)
    model = VideoClassifier(7, img_size=64, num_frames=4, embed_dim=64, depth=2, num_heads=4, head_init_scale=1.0,
                            **kwargs)
    return model.eval()


def tiny_mstcn(**kwargs) -> MSTCN:
    torch.manual_seed(1)
    return MSTCN(16, 5, num_f_maps=8, **kwargs).eval()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- the incremental MS-TCN


@pytest.mark.parametrize("stages,layers,batch", [(1, 3, 1), (2, 5, 2), (3, 4, 1)])
def test_incremental_mstcn_equals_full_model_at_every_step(stages, layers, batch):
    model = tiny_mstcn(num_stages=stages, num_layers=layers)
    step = IncrementalMSTCN(model)
    features = torch.randn(batch, 60, 16)  # longer than some receptive fields, shorter than others
    with torch.no_grad():
        full = model(features)[-1]
    assert step.state_length == stages * 2 * (2**layers - 1)
    state = step.initial_state(batch)
    with torch.no_grad():
        for t in range(features.shape[1]):
            logits, state = step(features[:, t], state)
            prefix = model(features[:, : t + 1])[-1][:, t]  # the full model on the prefix: causal
            torch.testing.assert_close(logits, prefix, rtol=0, atol=1e-5)
            torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)
    torch.testing.assert_close(step.run(features), full, rtol=0, atol=1e-5)


def test_incremental_mstcn_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="causal"):
        IncrementalMSTCN(tiny_mstcn(causal=False))
    with pytest.raises(TypeError, match="wraps an MSTCN"):
        IncrementalMSTCN(torch.nn.Linear(2, 2))
    step = IncrementalMSTCN(tiny_mstcn(num_stages=1, num_layers=2))
    with pytest.raises(ValueError, match=r"expects feature \(B, 16\) and state \(1, 8, 6\), got \(1, 15\)"):
        step(torch.zeros(1, 15), step.initial_state())


def test_incremental_mstcn_never_uses_dropout():
    model = MSTCN(16, 5, num_f_maps=8, dropout=0.9)
    step = IncrementalMSTCN(model).train()
    assert not step.training and not model.training
    features = torch.randn(1, 10, 16)
    torch.testing.assert_close(step.run(features), step.run(features))


# ---------------------------------------------------------------- ONNX export and onnxruntime parity


@pytest.mark.parametrize("kind", [{}, {"pos_embed": "rope", "qkv_bias": "fused"}], ids=["sincos3d", "rope"])
def test_clip_classifier_onnx_parity(tmp_path, kind):
    model = tiny_classifier(**kind)
    path = export_clip_model(model, tmp_path / "clip.onnx")  # the clip shape from the model: (1, 3, 4, 64, 64)
    assert leftovers(tmp_path) == ["clip.onnx"]  # atomic: no temporary file left
    session = OnnxSession(path)
    assert [(i.name, i.shape) for i in session.inputs] == [("clip", [1, 3, 4, 64, 64])]
    for seed in range(3):
        clip = torch.randn(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = model(clip).numpy()
        got = session(clip.numpy())
        assert got.shape == (1, 7)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_tecno_feature_extractor_onnx_parity(tmp_path):
    """The first stage of TeCNO (the frozen backbone's pooled pre-logits feature of the clip ending at a frame)."""
    from surgvista.features.frames import FrameFeatureExtractor

    extractor = FrameFeatureExtractor(tiny_classifier())
    clip = torch.randn(1, 3, 4, 64, 64)
    session = OnnxSession(export_clip_model(extractor, tmp_path / "features.onnx"))
    got = session(clip.numpy())
    assert got.shape == (1, 64)
    np.testing.assert_allclose(got, extractor(clip).numpy(), rtol=0, atol=TOLERANCE)


def test_mstcn_step_onnx_parity_over_a_stream(tmp_path):
    model = tiny_mstcn(num_stages=2, num_layers=5)
    stream = OnnxMSTCNStream(export_mstcn_step(model, tmp_path / "mstcn.onnx"))
    assert stream.state_shape == (1, 8, 2 * 2 * 31)
    features = torch.randn(1, 50, 16)
    with torch.no_grad():
        full = model(features)[-1][0].numpy()
    rows = np.stack([stream.push(features[0, t].numpy()) for t in range(50)])
    np.testing.assert_allclose(rows, full, rtol=0, atol=TOLERANCE)
    stream.reset()  # a new video starts from zeros again
    np.testing.assert_allclose(stream.push(features[0, 0].numpy()), full[0], rtol=0, atol=TOLERANCE)


def test_torchscript_exporter_when_the_dynamo_one_fails(tmp_path, monkeypatch, caplog):
    original = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("an operator the dynamo exporter does not cover")
        return original(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    step = IncrementalMSTCN(tiny_mstcn(num_stages=2, num_layers=3))
    stream = OnnxMSTCNStream(export_mstcn_step(step, tmp_path / "step.onnx"))
    assert "using the TorchScript exporter" in caplog.text
    features = torch.randn(1, 20, 16)
    rows = np.stack([stream.push(features[0, t].numpy()) for t in range(20)])
    np.testing.assert_allclose(rows, step.run(features)[0].numpy(), rtol=0, atol=TOLERANCE)


def test_export_failure_and_bad_paths_leave_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no export for this one")

    with pytest.raises(RuntimeError, match="no export"):
        export_onnx(Broken(), torch.zeros(1), tmp_path / "broken.onnx")
    with pytest.raises(OnnxError, match=r"clip\.onnx\.txt: .*ending in \.onnx"):
        export_onnx(tiny_classifier(), torch.zeros(1, 3, 4, 64, 64), tmp_path / "clip.onnx.txt")
    assert leftovers(tmp_path) == []


def test_onnx_session_bad_inputs(tmp_path):
    with pytest.raises(OnnxError, match=r"missing\.onnx: no such ONNX file"):
        OnnxSession(tmp_path / "missing.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxError, match=r"corrupt\.onnx: not a readable ONNX model"):
        OnnxSession(tmp_path / "corrupt.onnx")
    step = IncrementalMSTCN(tiny_mstcn(num_stages=1, num_layers=2))
    path = export_onnx(step, (torch.zeros(1, 16), step.initial_state()), tmp_path / "step.onnx")
    session = OnnxSession(path)
    with pytest.raises(OnnxError, match="expected 2 inputs, got 1"):
        session(np.zeros((1, 16)))
    with pytest.raises(OnnxError, match=r"input 'input_0' expects shape \[1, 16\], got \(1, 15\)"):
        session(np.zeros((1, 15)), step.initial_state().numpy())
    logits, _ = session(np.zeros((1, 16), np.float64), step.initial_state().numpy())  # float64 is cast
    assert logits.shape == (1, 5)
    with pytest.raises(OnnxError, match=r"expected an MS-TCN step with inputs \['feature', 'state'\]"):
        OnnxMSTCNStream(path)  # exported with other input names
    with pytest.raises(OnnxError, match="Linear has no num_frames/img_size; pass clip_shape"):
        export_clip_model(torch.nn.Linear(2, 2), tmp_path / "linear.onnx")
    assert leftovers(tmp_path) == ["corrupt.onnx", "step.onnx"]


# ---------------------------------------------------------------- the overlay video


def stream_rows(phases: list[int]) -> list[dict]:
    k = len(NAMES)
    return [{"frame": i, "phase": p, "probs": (0.7 * np.eye(k)[p] + 0.1).tolist()} for i, p in enumerate(phases)]


def decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_overlay_video_frames_size_and_ribbon(tmp_path):
    phases = [0] * 12 + [1] * 18 + [2] * 10
    frames = (np.full((96, 128, 3), 100 + i, np.uint8) for i in range(len(phases)))
    path = write_overlay(frames, stream_rows(phases), NAMES, tmp_path / "out" / "overlay.mp4", fps=1.0)
    assert leftovers(path.parent) == ["overlay.mp4"]
    decoded = decode(path)
    assert len(decoded) == len(phases) and decoded[0].shape == (96, 128, 3)
    palette = phase_palette(len(NAMES)).astype(int)
    bottom = decoded[-1][-3].astype(int)  # a row of the ribbon (the bottom 8 rows)
    columns = np.arange(128) * len(phases) // 128
    shown = np.array(phases)[columns]  # the phase each column shows
    inner = [x for x in range(2, 126) if shown[x - 2] == shown[x + 2]]  # away from colour edges (h264 blur)
    assert len(inner) > 100 and set(shown[inner]) == {0, 1, 2}
    assert np.abs(bottom[inner] - palette[shown[inner]]).max() <= 12
    early = decoded[5][-3].astype(int)  # frame 5: only the first 5/40 of the ribbon is drawn
    assert np.abs(early[4] - palette[0]).max() <= 12
    assert np.abs(early[100] - 32).max() <= 12
    assert np.abs(decoded[-1][48, 64].astype(int) - (100 + 39)).max() <= 6  # the frame itself is kept


def test_overlay_odd_sizes_are_cut_to_even(tmp_path):
    frames = [np.zeros((33, 47, 3), np.uint8)] * 3
    path = write_overlay(frames, stream_rows([0, 1, 1]), NAMES, tmp_path / "odd.mp4", fps=2.5)
    decoded = decode(path)
    assert len(decoded) == 3 and decoded[0].shape == (32, 46, 3)


@pytest.mark.parametrize(
    "rows,frames,where,match",
    [
        ([], 0, "a.mp4", "no predictions to draw"),
        (stream_rows([0, 1, 2]), 2, "a.mp4", "2 frames for 3 rows"),
        (stream_rows([0, 1]), 3, "a.mp4", "more frames than the 2 rows"),
        ([*stream_rows([0]), {"frame": 1, "phase": 3, "probs": [0.2, 0.3, 0.5]}], 2, "a.mp4", BAD_PHASE),
        ([{"frame": 0, "phase": 0}], 1, "a.mp4", r"row 0 lacks key\(s\) \['probs'\]"),
        ([{"frame": 0, "phase": 0, "probs": [1.0]}], 1, "a.mp4", "row 0 probs of shape"),
        (stream_rows([0, 0])[::-1], 2, "a.mp4", "row 1 frame=0; expected integers increasing"),
        (stream_rows([0]), 1, "a.avi", "needs a path ending in .mp4"),
        (stream_rows([0]), 1, "blocker/a.mp4", "blocker is a file, not a folder"),
    ],
)
def test_overlay_bad_inputs_write_nothing(tmp_path, rows, frames, where, match):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    images = (np.zeros((32, 32, 3), np.uint8) for _ in range(frames))
    with pytest.raises(OverlayError, match=match):
        write_overlay(images, rows, NAMES, tmp_path / where, fps=1.0)
    assert leftovers(tmp_path) == ["blocker"]


def test_overlay_bad_frames_and_fps(tmp_path):
    with pytest.raises(OverlayError, match=r"frame 1 is float32 \(32, 32, 3\); expected HxWx3 uint8"):
        write_overlay([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.float32)], stream_rows([0, 1]),
                      NAMES, tmp_path / "a.mp4", fps=1.0)
    with pytest.raises(OverlayError, match=r"frame 1 has shape \(32, 34, 3\); the first frame had \(32, 32, 3\)"):
        write_overlay([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 34, 3), np.uint8)], stream_rows([0, 1]),
                      NAMES, tmp_path / "a.mp4", fps=1.0)
    with pytest.raises(OverlayError, match="fps=0; expected a positive number"):
        write_overlay([np.zeros((32, 32, 3), np.uint8)], stream_rows([0]), NAMES, tmp_path / "a.mp4", fps=0)
    assert leftovers(tmp_path) == []
