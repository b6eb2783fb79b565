"""``make gpu-check`` without CUDA: the dry run goes through the same code paths at the tiny preset; the objectives'
FLOP count agrees with the step benchmark's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_writes_the_summary(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not (ROOT / "train_reconstruction").exists()  # the fits write nothing into the repository
    assert "gpu-check: all parts passed" in proc.stdout
    (result,) = [p for p in tmp_path.glob("*-dry-run.json")]
    res = json.loads(result.read_text())
    for key in ("device", "torch", "clips_per_s", "speedup_vs_reference", "mfu", "peak_mem_gib", "data_clips_per_s"):
        assert key in res
    assert res["dry_run"] and res["speedup_vs_reference"] > 0
    assert set(res["data_clips_per_s"]) == {"ours_jpg", "ours_mp4", "reference", "ours_memory"}
    assert res["fit_vs_bare_step"] > 0  # the in-memory fit matched to the step benchmark of the same model
    assert {"ours_b4", "reference_b4"} <= set(res["step"]) and all("error" not in v for v in res["step"].values())
    objectives = res["objectives"]
    for name in ("surgvista_tiny", "vjepa_tiny"):
        assert objectives[name]["clips_per_s"] > 0 and objectives[name]["gflop_per_clip"] > 0, name
    assert objectives["vjepa_tiny"]["overrides"] == ["model=vjepa_tiny"]
    stream = res["stream"]
    assert stream["plain"]["p50"] > 0 and stream["reuse_tubelets"]["p50"] > 0  # median ms per prediction
    assert stream["reuse_max_abs_diff"] < 1e-5  # tubelet reuse is exact
    assert "## Objectives side by side" in result.with_suffix(".md").read_text()
    assert res["tests"] and "skipped" in res["tests"]  # the GPU tests were collected and skipped cleanly
    assert result.with_suffix(".md").read_text().startswith("# GPU check:")


def test_objective_flops_equal_the_step_benchmarks_count(monkeypatch):
    """bench/objective_fit.py counts a SurgVISTA clip's FLOPs exactly as surgvista.bench.pretrain does (teacher
    forward, student forward and backward); a V-JEPA clip adds the predictor and the EMA target's forward."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from objective_fit import clip_flops, compose_module

    from surgvista.bench.pretrain import count_model_flops

    cpu = torch.device("cpu")
    module = compose_module(["model=surgvista_tiny"], frames=4, size=32, batch=2)
    backends = [m.attn_backend for m in module.modules() if hasattr(m, "attn_backend")]
    expected = count_model_flops(module, torch.randn(2, 3, 4, 32, 32), torch.Generator().manual_seed(0))
    assert clip_flops(module, 4, 32, cpu) == expected > 0
    assert [m.attn_backend for m in module.modules() if hasattr(m, "attn_backend")] == backends  # restored
    vjepa = compose_module(["model=vjepa_tiny"], frames=4, size=32, batch=2)
    shallower = compose_module(["model=vjepa_tiny", "model.latent.predictor.depth=1"], frames=4, size=32, batch=2)
    assert clip_flops(vjepa, 4, 32, cpu) > clip_flops(shallower, 4, 32, cpu) > 0  # the predictor's depth counts
