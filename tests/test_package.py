"""The built wheel as a new user gets it: installed (no deps) into a temp target on top of the test venv, run from an
empty directory outside the clone; console scripts, shipped configs, user config folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, small_demo_overrides

SCRIPTS = (
    "surgvista-train",
    "surgvista-eval",
    "surgvista-prepare",
    "surgvista-export",
    "surgvista-score",
    "surgvista-features",
    "surgvista-shards",
    "surgvista-demo-data",
    "surgvista-leaderboard",
    "surgvista-pretrain-probe",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (nothing written into the clone) and install it into a target."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next((work / "dist").glob("surgvista-*.whl"))
    target = work / "target"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True, text=True
    )
    return target


def run_installed(target: Path, cwd: Path, *cmd: str, env_extra: dict | None = None, check: bool = True):
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ROOT", "PYTHONPATH", "SURGVISTA_CONFIG_DIR")}
    env.update(PYTHONPATH=str(target), WANDB_MODE="offline", HYDRA_FULL_ERROR="1", PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    exe = [str(target / "bin" / cmd[0])] if cmd[0] in SCRIPTS else [sys.executable]
    proc = subprocess.run(
        [*exe, *cmd[1:]] if cmd[0] in SCRIPTS else [*exe, *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def test_wheel_ships_configs_plugin_and_type_marker(installed):
    files = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    yaml = [p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")]
    shipped = {f"surgvista/conf/{p}" for p in yaml if not p.startswith("local/")}
    assert shipped and shipped <= files
    assert not [f for f in files if f.startswith("surgvista/conf/local/")]  # a developer's own overrides stay home
    assert {
        "surgvista/py.typed",
        "surgvista/conf/__init__.py",
        "hydra_plugins/surgvista_searchpath/__init__.py",
    } <= files
    assert {f"bin/{s}" for s in SCRIPTS} <= files


def test_installed_package_is_used_and_has_one_version(installed, tmp_path):
    import surgvista

    proc = run_installed(
        installed,
        tmp_path,
        "-c",
        "import surgvista, importlib.metadata as m; "
        "print(surgvista.__file__); print(surgvista.__version__, m.version('surgvista'))",
    )
    where, versions = proc.stdout.split("\n")[:2]
    assert Path(where).is_relative_to(installed)
    assert versions.split() == [surgvista.__version__] * 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_scripts_answer_help(installed, tmp_path, script):
    proc = run_installed(installed, tmp_path, script, "--help")
    assert proc.stdout.strip()
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.iterdir())  # --help writes nothing


def test_console_scripts_follow_the_exit_convention(installed, tmp_path):
    """A bad input: one ``error:`` line, exit status 1; bad usage: the usage text, exit status 2."""
    plain = {"HYDRA_FULL_ERROR": "0"}
    bad = run_installed(installed, tmp_path, "surgvista-score", "phase", "gt", "pred", "--dataset", "cholec80",
                        check=False, env_extra=plain)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["error: gt: not a folder of per-video files"]
    usage = run_installed(installed, tmp_path, "surgvista-prepare", check=False, env_extra=plain)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: surgvista-prepare")
    assert not list(tmp_path.iterdir())


def test_train_from_an_empty_directory_writes_a_checkpoint_under_log_dir(installed, demo_root, tmp_path):
    cwd, logs, data = tmp_path / "empty", tmp_path / "logs", tmp_path / "data"
    cwd.mkdir()
    data.mkdir()
    (data / "demo").symlink_to(demo_root)  # data.root defaults to ${paths.data_dir}/demo
    small = [o for o in small_demo_overrides(demo_root) if not o.startswith("data.root=")]
    run_installed(
        installed,
        cwd,
        "surgvista-train",
        "experiment=demo",
        f"paths.data_dir={data}",
        f"paths.log_dir={logs}",
        *small,
        "model.recon_every_n_steps=0",
    )
    ckpts = list(logs.glob("demo/runs/*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    assert not list(cwd.iterdir())  # nothing written into the working directory


def _user_conf(root: Path, marker: int) -> Path:
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "mine.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - demo\ntrainer:\n  max_epochs: {marker}\n"
    )
    return root


def test_user_config_folders_extend_and_override_the_shipped_configs(installed, tmp_path):
    cwd = tmp_path / "project"
    _user_conf(cwd / "conf", 7)  # ./conf adds an experiment that builds on the shipped demo
    proc = run_installed(installed, cwd, "surgvista-train", "experiment=mine", "--cfg", "job")
    assert "max_epochs: 7" in proc.stdout and "task_name: demo" in proc.stdout
    env_dir = tmp_path / "env_conf"
    (env_dir / "trainer").mkdir(parents=True)  # $SURGVISTA_CONFIG_DIR overrides a shipped group option
    (env_dir / "trainer" / "cpu.yaml").write_text("defaults:\n  - default\naccelerator: cpu\nmax_epochs: 123\n")
    proc = run_installed(
        installed,
        tmp_path,
        "surgvista-train",
        "trainer=cpu",
        "--cfg",
        "job",
        env_extra={"SURGVISTA_CONFIG_DIR": str(env_dir)},
    )
    assert "max_epochs: 123" in proc.stdout
    bad = run_installed(
        installed,
        tmp_path,
        "surgvista-train",
        "--cfg",
        "job",
        check=False,
        env_extra={"SURGVISTA_CONFIG_DIR": str(tmp_path / "missing")},
    )
    assert bad.returncode != 0 and "SURGVISTA_CONFIG_DIR" in bad.stderr and "missing" in bad.stderr


def test_clone_entry_points_stay_thin_wrappers():
    for script in ("train.py", "eval.py"):
        assert len((ROOT / script).read_text().splitlines()) <= 10


@pytest.mark.parametrize(
    "name",
    ["train", "eval", "prepare", "export", "score", "features", "shards", "demo_data", "leaderboard", "pretrain_probe"],
)
def test_modules_run_with_python_dash_m(installed, tmp_path, name):
    proc = run_installed(installed, tmp_path, "-m", f"surgvista.{name}", "--help")
    assert proc.stdout.strip() and not list(tmp_path.iterdir())


def test_a_working_directory_conf_extends_the_clone_configs_too(tmp_path):
    from helpers import run_script

    _user_conf(tmp_path / "conf", 9)
    proc = run_script("train.py", "experiment=mine", "--cfg", "job", cwd=tmp_path)
    assert "max_epochs: 9" in proc.stdout and "task_name: demo" in proc.stdout
