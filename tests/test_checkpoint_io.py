"""Atomic checkpoint writes: a save killed half-way leaves the previous file loadable, and its temp file (in the
checkpoint folder, never in $TMPDIR) is removed at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from helpers import ROOT

from surgvista.utils.io import atomic_torch_save, clean_orphaned_temp_files, replace_folder, temp_dir_next_to

CHILD = """
import sys, time
import torch
from surgvista.utils.io import atomic_torch_save

class Slow:
    # Pickling this announces itself and then hangs: the save is killed half-way.
    def __reduce__(self):
        open(sys.argv[2], "w").close()
        time.sleep(120)
        return (int, ())

atomic_torch_save({"state_dict": {"w": torch.zeros(1000)}, "slow": Slow(), "big": torch.ones(10000)}, sys.argv[1])
"""


def test_killed_save_keeps_the_previous_checkpoint_and_the_next_start_cleans_up(tmp_path):
    folder, tmpdir = tmp_path / "checkpoints", tmp_path / "tmpdir"
    tmpdir.mkdir()
    last = folder / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.arange(5.0)}}, last)
    marker = tmp_path / "pickling"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(last), str(marker)], env=env)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the child save never started"
            time.sleep(0.1)
        orphans = [p for p in folder.iterdir() if p.name != "last.ckpt"]
        assert len(orphans) == 1 and orphans[0].name.startswith(".last.ckpt.")  # the temp file sits next to last.ckpt
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert torch.equal(torch.load(last, weights_only=True)["state_dict"]["w"], torch.arange(5.0))
    assert clean_orphaned_temp_files(folder) == orphans
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert list(tmpdir.iterdir()) == []


def test_atomic_save_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoint_folder_swap_and_recovery_from_a_kill_between_the_renames(tmp_path):
    last = tmp_path / "last.ckpt"  # a sharded (DCP) checkpoint is a folder
    last.mkdir()
    (last / "shard").write_text("old")
    new = temp_dir_next_to(last)
    (new / "shard").write_text("new")
    replace_folder(new, last)
    assert (last / "shard").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

    half = temp_dir_next_to(last)  # killed after moving the old folder aside, before renaming the new one
    aside = half.with_name(half.name + ".old")
    last.rename(aside)
    assert clean_orphaned_temp_files(tmp_path) == [half]
    assert (last / "shard").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
