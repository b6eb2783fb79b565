"""``make gpu-check`` without CUDA: the dry run goes through the same code paths at the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
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
    assert "gpu-check: all parts passed" in proc.stdout
    (result,) = [p for p in tmp_path.glob("*-dry-run.json")]
    res = json.loads(result.read_text())
    for key in ("device", "torch", "clips_per_s", "speedup_vs_reference", "mfu", "peak_mem_gib", "data_clips_per_s"):
        assert key in res
    assert res["dry_run"] and res["speedup_vs_reference"] > 0
    assert set(res["data_clips_per_s"]) == {"ours_jpg", "ours_mp4", "reference", "ours_memory"}
    assert res["fit_vs_bare_step"] > 0  # the in-memory fit matched to the step benchmark of the same model
    assert {"ours_b4", "reference_b4"} <= set(res["step"]) and all("error" not in v for v in res["step"].values())
    assert res["tests"] and "skipped" in res["tests"]  # the GPU tests were collected and skipped cleanly
    assert result.with_suffix(".md").read_text().startswith("# GPU check:")
