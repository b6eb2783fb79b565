"""No run overwrites another (issue 23, items 1, 2 and 7): a run locks its folder (``<run>/.surgvista.lock``) and
refuses a folder locked by a live run or holding a run of another task or model before writing anything;
``surgvista-prepare --out`` and ``surgvista-export ... overwrite=true`` replace only what they wrote themselves;
checkpoints and exports get the modes of the user's umask. Bad inputs follow ``test_bad_inputs``: non-zero exit,
one ``error:`` line naming the culprit, inputs and earlier outputs unchanged by hash (docs/errors.md, "Run folders
and outputs")."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import dataset_fixtures as F
import pytest
import torch
from helpers import ROOT, compose, small_demo_data
from omegaconf import OmegaConf
from test_bad_inputs import Case, lightning_file, snapshot, tiny_pretrain_state
from test_checkpoints import student

from surgvista.cli.common import user_errors
from surgvista.cli.export import main as export_main
from surgvista.cli.prepare import main as prepare_main
from surgvista.utils.io import atomic_write_text, temp_dir_next_to
from surgvista.utils.owned_files import MARKER, written_by
from surgvista.utils.run_lock import LOCK_NAME, RunFolderLockedError, acquire_run_lock, read_lock

PRETRAIN = "surgvista.modules.pretrain.PretrainModule"


# ------------------------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def live_pid() -> Iterator[int]:
    """The pid of a process that stays alive for the module (another run holding a lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended (a run killed with SIGKILL)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, pid: int, host: str | None = None, started: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = {"host": host or socket.gethostname(), "pid": pid, "started": started or now}
    (folder / LOCK_NAME).write_text(json.dumps({**info, "command": "train.py experiment=demo"}))
    return folder / LOCK_NAME


def earlier_run(folder: Path, task: str = "demo", target: str = PRETRAIN) -> Path:
    """The files an earlier training run left: config.yaml, .hydra/*.yaml, a checkpoint and a log."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(f"task_name: {task}\ntrain: true\nmodel:\n  _target_: {target}\n")
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text(f"# {name} of the earlier run\n")
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights of the earlier run")
    (folder / f"{task}.log").write_text("the earlier run's log\n")
    return folder


def tiny_demo(root: Path, experiment: str = "demo", config: str = "train") -> list[str]:
    """A run of two steps on the small demo set (``config="eval"``: the data only)."""
    data = [*small_demo_data(root), "data.num_frames=4", "data.batch_size=2"]
    if config == "eval":
        return data
    pretrain = ["callbacks.probe_monitor=null", "model.recon_every_n_steps=0"] if experiment == "demo" else []
    return [
        *data,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        *pretrain,
    ]


def train_in(folder_key: str, *overrides: str, experiment: str = "demo") -> Callable[[dict], object]:
    def act(ctx):
        from surgvista.run import train

        cfg = compose(experiment, *tiny_demo(ctx["demo"], experiment), *overrides, out=ctx[folder_key])
        return train(cfg)

    return act


def eval_in(folder_key: str, experiment: str = "demo_phase") -> Callable[[dict], object]:
    def act(ctx):
        from surgvista.run import evaluate

        ckpt = f"ckpt_path={ctx['run']}/checkpoints/last.ckpt"
        data = tiny_demo(ctx["demo"], experiment, "eval")
        return evaluate(compose(experiment, *data, ckpt, config="eval", out=ctx[folder_key]))

    return act


# --------------------------------------------------------------------------------------- the bad inputs
def locked(host: str | None = None) -> Callable[[Path, Path, dict], dict]:
    def make(inp: Path, out: Path, procs: dict) -> dict:
        run = earlier_run(inp / "run")
        write_lock(run, procs["live"], host)
        return {"run": run}

    return make


def other_task(task: str = "demo", target: str = PRETRAIN) -> Callable[[Path, Path, dict], dict]:
    return lambda inp, out, procs: {"run": earlier_run(inp / "run", task, target)}


def unreadable_config(inp: Path, out: Path, procs: dict) -> dict:
    run = earlier_run(inp / "run")
    (run / "config.yaml").write_text("task_name: [unclosed\n")
    return {"run": run}


def incompatible_checkpoint(inp: Path, out: Path, procs: dict) -> dict:
    """An earlier demo run whose last.ckpt is of another geometry (a resume that must fail before writing)."""
    run = earlier_run(inp / "run")
    state = tiny_pretrain_state()
    state["student.pos_embed"] = torch.zeros(1, 5, state["student.pos_embed"].shape[-1])
    lightning_file(run / "checkpoints" / "last.ckpt", state)
    return {"run": run}


def prep(*args: str) -> Callable[[dict], object]:
    return lambda ctx: prepare_main([a.format(**ctx) for a in args] + ["--quiet"])


def user_file(dataset: str, name: str) -> Callable[[Path, Path, dict], dict]:
    def make(inp: Path, out: Path, procs: dict) -> dict:
        raw = F.BUILDERS[dataset](inp / "raw")
        (inp / "o").mkdir()
        (inp / "o" / name).write_text('{"the user\'s own": "file"}\n')
        return {"raw": raw, "o": inp / "o"}

    return make


def hf_student(path: Path) -> Path:
    """A student checkpoint that ``format=hf`` exports (a 1-D sinusoid position table)."""
    model = student("sinusoid1d", image_decoder=False)
    with torch.no_grad():
        model.down_vid.bias.zero_()
    torch.save({"model": model.state_dict()}, path)
    return path


HF_ARGS = ("format=hf", "num_heads=4", "decoder_heads=2", "img_size=32", "num_frames=4")


def exp(*args: str) -> Callable[[dict], object]:
    return lambda ctx: export_main([a.format(**ctx) for a in args])


def hf_folder(earlier: bool) -> Callable[[Path, Path, dict], dict]:
    """A folder of a user's files (``earlier``: an earlier export there, plus one file of the user's)."""

    def make(inp: Path, out: Path, procs: dict) -> dict:
        ckpt = hf_student(inp / "student.pth")
        hf = inp / "hf"
        if earlier:
            assert export_main([f"ckpt={ckpt}", f"out={hf}", *HF_ARGS]) == 0
        hf.mkdir(exist_ok=True)
        (hf / "notes.txt").write_text("my notes\n")
        if not earlier:
            (hf / "config.json").write_text("{}")
        return {"ckpt": ckpt, "hf": hf}

    return make


EXPORT_HF = ("ckpt={ckpt}", "out={hf}", *HF_ARGS, "overwrite=true")

CASES = [
    Case(
        "run-folder-locked",
        locked(),
        train_in("run"),
        r"error: run folder {run} is in use by another run \(host .*, pid \d+, started 20.*; if pid \d+ is not a run, "
        r"remove {run}/\.surgvista\.lock",
    ),
    Case(
        "run-folder-locked-other-host",
        locked("gpu-node-7"),
        train_in("run"),
        r"locked by a run on another host \(host gpu-node-7, pid \d+.*remove {run}/\.surgvista\.lock",
    ),
    Case(
        "run-folder-of-another-task",
        other_task(),
        train_in("run", experiment="demo_phase"),
        r"error: run folder {run} holds a training run of task_name='demo' with model PretrainModule, not this "
        r"training run of task_name='demo_phase' with model PhaseModule",
    ),
    Case(
        "run-folder-of-another-model",
        other_task("demo", "surgvista.modules.jepa.JEPAModule"),
        train_in("run"),
        r"holds a training run of task_name='demo' with model JEPAModule, not this training run of task_name='demo' "
        r"with model PretrainModule",
    ),
    Case(
        "eval-into-a-training-run",
        other_task("demo_phase", "surgvista.modules.finetune.PhaseModule"),
        eval_in("run"),
        r"run folder {run} holds a training run of task_name='demo_phase' with model PhaseModule, not this "
        r"evaluation run of task_name='demo_phase' with model PhaseModule",
    ),
    Case(
        "run-folder-unreadable-config",
        unreadable_config,
        train_in("run"),
        r"run folder {run}: its config\.yaml cannot be read",
    ),
    Case(
        "resume-incompatible-keeps-config",
        incompatible_checkpoint,
        train_in("run"),
        r"error: {run}/checkpoints/last\.ckpt: a checkpoint of PretrainModule, configured otherwise than this run's "
        r"\(0 missing and 39 unexpected keys, e\.g\. 'student\.decoder_img\.blocks\.1\.norm1\.weight'\); use the "
        r"experiment that wrote it",
    ),
    Case(
        "prepare-users-manifest",
        user_file("cholec80", "train.jsonl"),
        prep("cholec80", "--raw", "{raw}", "--out", "{o}"),
        r"--out {o} holds train\.jsonl, which surgvista-prepare did not write",
    ),
    Case(
        "prepare-users-manifest-overwrite",
        user_file("psiava", "pretrain.jsonl"),
        prep("psiava", "--raw", "{raw}", "--out", "{o}", "--overwrite"),
        r"holds pretrain\.jsonl, which surgvista-prepare did not write .* even with --overwrite",
    ),
    Case(
        "prepare-unrelated-files",
        user_file("psiava", "notes.txt"),
        prep("psiava", "--raw", "{raw}", "--out", "{o}"),
        r"--out {o} holds files that surgvista-prepare did not write: notes\.txt; .* --overwrite",
    ),
    Case(
        "export-hf-overwrite-foreign-folder",
        hf_folder(earlier=False),
        exp(*EXPORT_HF),
        r"out={hf} was not written by surgvista-export \(no \.surgvista-written\.json in it; holds config\.json, "
        r"notes\.txt\)",
    ),
    Case(
        "export-hf-overwrite-earlier-export-plus-user-file",
        hf_folder(earlier=True),
        exp(*EXPORT_HF),
        r"out={hf} holds files that the earlier surgvista-export did not write: notes\.txt",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_before_writing(case: Case, tmp_path, capsys, demo_root, live_pid):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    ctx = {"inp": inp, "out": out, "demo": demo_root, **case.make(inp, out, {"live": live_pid})}
    before = snapshot(inp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop, user_errors():  # what every command prints for a bad input
        case.act(ctx)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert stop.value.code == 1 and len(errors) == 1, f"{case.id}: not one error line: {errors}"
    expect = case.expect.format(**{k: re.escape(str(v)) for k, v in ctx.items()})
    assert re.search(expect, errors[0]), f"{case.id}: culprit not named:\n{errors[0]}"
    assert snapshot(inp) == before, f"{case.id}: an input or an earlier output changed"


def test_every_case_is_in_docs_errors():
    section = (ROOT / "docs" / "errors.md").read_text().split("## Run folders and outputs", 1)[1]
    assert [c.id for c in CASES if f"| `{c.id}` |" not in section] == []


# ------------------------------------------------------------------------------------- what users see
def cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["WANDB_MODE"] = "offline"
    cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_train_cli_into_a_pretraining_run_writes_nothing(tmp_path):
    """The issue's case: ``experiment=demo_phase hydra.run.dir=<a pre-training run>`` used to overwrite its
    config.yaml and .hydra/*.yaml before failing; now one line, and the folder exactly as it was."""
    run = earlier_run(tmp_path / "run")
    before = snapshot(run)
    proc = cli("train.py", "experiment=demo_phase", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: run folder {run} holds a training run of task_name='demo' with model PretrainModule, not this "
        "training run of task_name='demo_phase' with model PhaseModule; nothing was written: choose another folder "
        "(hydra.run.dir=...), or resume that run with the experiment that wrote it"
    ]
    assert snapshot(run) == before


def test_train_cli_on_a_folder_in_use_writes_nothing(tmp_path, live_pid):
    run = earlier_run(tmp_path / "run")
    lock = write_lock(run, live_pid)
    before = snapshot(run)
    proc = cli("train.py", "experiment=demo", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: run folder {run} is in use by another run (host {socket.gethostname()}, pid ")
    assert snapshot(run) == before and json.loads(lock.read_text())["pid"] == live_pid


# --------------------------------------------------------------------------------------------- the lock
def test_lock_records_host_pid_and_start_and_is_exclusive(tmp_path, live_pid):
    lock = acquire_run_lock(tmp_path / "run")
    info = read_lock(lock.path)
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid() and info["started"].startswith("20")
    lock.release()
    assert not lock.path.exists()
    write_lock(tmp_path / "other", live_pid)
    with pytest.raises(RunFolderLockedError, match=rf"pid {live_pid}"):
        acquire_run_lock(tmp_path / "other")


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path, live_pid):
    lock = acquire_run_lock(tmp_path)
    write_lock(tmp_path, live_pid)  # another run took the folder over
    lock.release()
    assert read_lock(tmp_path / LOCK_NAME)["pid"] == live_pid


def test_lock_of_an_earlier_start_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch, caplog, live_pid):
    """A requeued job (SLURM_RESTART_COUNT counted up, maybe on another node) takes over its own earlier lock; a
    second run inside the same allocation (same job, same restart count) does not."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    path = write_lock(tmp_path, live_pid, host="node-a")
    info = {**json.loads(path.read_text()), "slurm_job_id": "4242", "slurm_restart_count": 0}
    path.write_text(json.dumps(info))
    with pytest.raises(RunFolderLockedError, match="on another host"):
        acquire_run_lock(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level("WARNING"):
        lock = acquire_run_lock(tmp_path)
    assert "an earlier start of this requeued SLURM job 4242" in caplog.text
    assert read_lock(path)["pid"] == os.getpid() and read_lock(path)["slurm_restart_count"] == 1
    lock.release()


def test_lock_of_a_reused_pid_is_stale(tmp_path, live_pid, caplog):
    """The lock's pid is alive but started after the lock was written: the run died and its pid was reused."""
    write_lock(tmp_path, live_pid, started="2020-01-01T00:00:00+00:00")
    with caplog.at_level("WARNING"):
        acquire_run_lock(tmp_path).release()
    assert f"pid {live_pid} on {socket.gethostname()} is another process, started after the lock" in caplog.text


def test_stale_lock_is_taken_over_and_the_run_resumes_its_own_folder(tmp_path, demo_root, dead_pid, caplog):
    """A run killed with SIGKILL leaves its lock: the next run into its own folder takes it over (a log line names
    the dead pid), resumes from last.ckpt (ckpt_path=auto) and removes the lock at the end."""
    from surgvista.run import train

    run = tmp_path / "run"
    train(compose("demo", *tiny_demo(demo_root), out=run))
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / LOCK_NAME).exists()
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    write_lock(run, dead_pid)
    with caplog.at_level("INFO"):
        train(compose("demo", *tiny_demo(demo_root), "trainer.max_epochs=2", out=run))
    assert f"taking over the stale lock {run / LOCK_NAME} (pid {dead_pid} is no longer running" in caplog.text
    assert f"ckpt_path=auto: resuming from {run / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * first
    assert not (run / LOCK_NAME).exists()


def test_lock_is_released_when_the_run_fails(tmp_path, demo_root):
    from surgvista.run import train
    from surgvista.utils.config_check import ConfigError

    cfg = compose("demo", *tiny_demo(demo_root), "data.batch_size=64", out=tmp_path / "run")
    with pytest.raises(ConfigError):
        train(cfg)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------- prepare
def test_prepare_overwrite_writes_beside_a_users_files_and_keeps_them(tmp_path):
    raw = F.psiava(tmp_path / "raw")
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "train.jsonl").write_text("mine too\n")
    before = snapshot(out)
    assert prepare_main(["psiava", "--raw", str(raw), "--out", str(out), "--quiet", "--overwrite"]) == 0
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert written_by(out, "surgvista-prepare") == {"frames", ".prepare", "checksums.sha256", "stats.json",
                                                    "pretrain.jsonl"}  # fmt: skip
    assert prepare_main(["psiava", "--raw", str(raw), "--out", str(out), "--quiet", "--overwrite"]) == 0  # resumes


def test_prepare_resumes_an_output_written_before_the_marker(tmp_path):
    raw = F.psiava(tmp_path / "raw")
    out = tmp_path / "o"
    assert prepare_main(["psiava", "--raw", str(raw), "--out", str(out), "--quiet"]) == 0
    (out / MARKER).unlink()  # a folder prepared by an earlier version
    assert prepare_main(["psiava", "--raw", str(raw), "--out", str(out), "--quiet"]) == 0
    assert "pretrain.jsonl" in written_by(out, "surgvista-prepare")


# -------------------------------------------------------------------------------------------- export
def test_export_overwrite_replaces_an_earlier_export(tmp_path):
    ckpt = hf_student(tmp_path / "student.pth")
    hf = tmp_path / "hf"
    args = [f"ckpt={ckpt}", f"out={hf}", *HF_ARGS]
    assert export_main(args) == 0
    first = written_by(hf, "surgvista-export")
    assert first == {p.name for p in hf.iterdir()} - {MARKER} and "model.safetensors" in first
    (hf / "model.safetensors").write_bytes(b"stale")
    assert export_main([*args, "overwrite=true"]) == 0
    assert (hf / "model.safetensors").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "student.pth"]  # no temporary folder left


def test_vjepa_hf_folder_overwrite_replaces_only_an_earlier_export(tmp_path):
    """``write_vjepa_hf`` (V-JEPA runs, ``export_vjepa_hf``) checks the folder before converting anything."""
    from surgvista.checkpoints.vjepa import write_vjepa_hf
    from surgvista.utils.owned_files import ForeignFilesError

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(ForeignFilesError, match=r"hf was not written by surgvista-export .*holds config\.json"):
        write_vjepa_hf({}, None, tmp_path / "hf", overwrite=True)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- umask
@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    assert mode(atomic_write_text(tmp_path / "a.txt", "x")) == mode(plain) == 0o666 & ~umask
    assert mode(temp_dir_next_to(tmp_path / "d")) == mode(tmp_path / "plain_dir") == 0o777 & ~umask


def test_checkpoints_and_hf_exports_follow_the_umask(tmp_path, umask):
    from surgvista.checkpoints.io import SafeCheckpointIO

    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    assert mode(tmp_path / "last.ckpt") == 0o666 & ~umask
    ckpt = hf_student(tmp_path / "student.pth")
    hf = tmp_path / "hf"
    assert export_main([f"ckpt={ckpt}", f"out={hf}", *HF_ARGS]) == 0
    assert mode(hf) == 0o777 & ~umask
    assert {mode(p) for p in hf.iterdir()} == {0o666 & ~umask}
    assert export_main([f"ckpt={ckpt}", "format=original", f"out={tmp_path / 'o.pth'}"]) == 0
    assert mode(tmp_path / "o.pth") == 0o666 & ~umask


def test_run_config_is_saved_after_the_checks_with_the_composed_hydra_files(tmp_path):
    """Outside a Hydra app there are no .hydra files to write; the resolved config.yaml is written atomically."""
    from hydra.core.hydra_config import HydraConfig

    from surgvista.run import hydra_files, save_run_config

    HydraConfig.instance().cfg = None  # an earlier in-process test may have left a Hydra job's config behind
    cfg = compose("demo", out=tmp_path / "run")
    assert hydra_files(cfg) == {}
    save_run_config(cfg, tmp_path / "run", {"overrides.yaml": "- experiment=demo\n"})
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").task_name == "demo"
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == "- experiment=demo\n"
