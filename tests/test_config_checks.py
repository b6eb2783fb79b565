"""Config values checked before work starts (docs/errors.md, "Config values checked before work"): every experiment
composes with every data group of its task, constructor validation and Lightning's own choices are one ``error:``
line, paths and free disk are checked before anything is written, and a full disk is named as such.

Each bad-input case (the harness of test_bad_inputs.py) asserts: non-zero exit, exactly one ``error:`` line naming
the culprit, no traceback, the input files unchanged (sha256) and, for cases refused before work starts, no
checkpoint written.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose
from omegaconf import OmegaConf, open_dict
from test_bad_inputs import (
    Case,
    demo_link,
    demo_overrides,
    eval_with,
    lightning_file,
    outcome,
    snapshot,
    tiny_phase_state,
    train_with,
)

import surgvista.run  # noqa: F401  (Lightning's log handlers bind sys.stderr at import: outside any capture)
from surgvista.cli.common import user_errors
from surgvista.utils.config_check import PRECISIONS, check_config
from surgvista.utils.errors import ConfigError


# ------------------------------------------------------------------------- 5. every group combination composes
def task_of(target: str) -> str:
    """The task family of a data module class, from its base class: what a data group file declares by its
    ``_target_``. Pre-training clips, single frames (stage 0), labelled downstream clips (phase, triplet, CVS,
    action: one module, the label is a key) or cached features (TeCNO)."""
    from hydra.utils import get_class

    from surgvista.data.datamodule import PretrainDataModule
    from surgvista.data.downstream import DownstreamDataModule
    from surgvista.data.frame_images import DemoFrameDataModule
    from surgvista.features.clip_data import ProbeDataModule
    from surgvista.features.frame_data import FeatureDataModule

    families = {
        PretrainDataModule: "pretraining",
        DemoFrameDataModule: "frames",
        DownstreamDataModule: "downstream",
        ProbeDataModule: "downstream",  # a probe reads a downstream task's clips through data.source
        FeatureDataModule: "features",
    }
    cls = get_class(target)
    return next(task for base, task in families.items() if issubclass(cls, base))


def compose_with_hydra(experiment: str, *overrides: str):
    """The composed config as a Hydra run sees it (``${hydra:...}`` resolvable), without the ``hydra`` node."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    cfg = hydra_compose("train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    choice = cfg.hydra.runtime.choices.get("data")
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choice


def group_pairs() -> list[tuple[str, str]]:
    """(experiment, data group) for every data group of the experiment's task. The rule: an experiment's task is
    the family (:func:`task_of`) of the data group its defaults select; the data groups of that task are those
    whose ``_target_`` is of the same family."""
    from hydra import initialize_config_dir

    data_groups = sorted(p.stem for p in (ROOT / "conf" / "data").glob("*.yaml"))
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    pairs = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        family = {d: task_of(compose_with_hydra("demo", f"data={d}")[0].data._target_) for d in data_groups}
        for exp in experiments:
            _, own = compose_with_hydra(exp)
            pairs += [(exp, d) for d in data_groups if family[d] == family[own]]
    return pairs


@pytest.mark.slow  # about 150 compositions (a minute on 2 cores)
def test_every_experiment_composes_with_every_data_group_of_its_task(monkeypatch):
    """Composes and resolves, or stops with one line naming the key to set (``data.root`` of the demo's probe
    monitor used to stop ``experiment=demo data=pretrain_mix`` with an InterpolationKeyError)."""
    from hydra import initialize_config_dir

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    pairs = group_pairs()
    assert ("demo", "pretrain_mix") in pairs and ("phase_cholec80", "demo_phase") in pairs
    assert ("tecno_cholec80", "demo_features") in pairs and ("demo", "demo_phase") not in pairs
    refused = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for exp, data in pairs:
            cfg, _ = compose_with_hydra(exp, f"data={data}")
            try:
                check_config(cfg)
            except ConfigError as e:
                refused[exp, data] = str(e)
                continue
            OmegaConf.resolve(cfg)  # every interpolation resolves
    for (exp, data), message in refused.items():
        assert "\n" not in message, (exp, data)
        assert re.match(r"[\w.]+ must be set: add the override [\w.]+=<value>", message), (exp, data, message)
    assert ("demo", "pretrain_mix") not in refused
    assert len(refused) < len(pairs) / 2  # most combinations run as they are


# ------------------------------------------------------------------------------------------ bad-input cases
def one_line(act, capsys) -> str:
    """Run ``act`` inside the commands' error handler: the message (one ``error:`` line and the logs)."""

    def run():
        with user_errors():
            return act()

    return outcome(run, capsys)


def folder_with_ckpt(inp: Path, out: Path) -> dict:
    folder = inp / "run" / "checkpoints"
    lightning_file(folder / "last.ckpt", tiny_phase_state())
    return {"c": folder}


def file_as_run_folder(inp: Path, out: Path) -> dict:
    (inp / "logs").write_text("a file where the log folder should be\n")
    return {"out": inp / "logs" / "run1"}


def read_only_run_folder(inp: Path, out: Path) -> dict:
    folder = inp / "readonly"
    folder.mkdir()
    (folder / "keep.txt").write_text("kept\n")
    folder.chmod(0o555)
    return {"out": folder / "run1", "ro": folder}


def swapped_data(*overrides: str, experiment: str = "demo"):
    """A run of ``experiment`` with another data group (none of the demo set's keys apply)."""

    def act(ctx):
        from surgvista.run import train

        return train(compose(experiment, *[o.format(**ctx) for o in overrides], out=ctx["out"]))

    return act


CASES = [
    Case(
        "cfg-input-size-not-a-multiple-of-the-patch",
        lambda i, o: {},
        train_with("data.input_size=100"),
        r"data\.input_size=100: expected a multiple of model\.student\.patch_size=16 "
        r"\(model\.student\.img_size = \$\{{data\.input_size\}}\), e\.g\. data\.input_size=96",
    ),
    Case(
        "cfg-frames-not-a-multiple-of-the-tubelet",
        lambda i, o: {},
        train_with("data.num_frames=5"),
        r"data\.num_frames=5: expected a multiple of model\.student\.tubelet_size=2",
    ),
    Case(
        "cfg-constructor-validation",
        lambda i, o: {},
        train_with("callbacks.preemption.signals=[SIGFOO]"),
        r"callbacks\.preemption\.signals: unknown signal 'SIGFOO'",
    ),
    Case(
        "cfg-constructor-unknown-key",
        lambda i, o: {},
        train_with("+model.student.drop_rate=0.1"),
        r"model\.student\.drop_rate: not an argument of SurgVISTAStudent \(a typo\? remove or rename it\)",
    ),
    Case(
        "cfg-test-ckpt",
        lambda i, o: {},
        train_with("test_ckpt=middle", experiment="demo_phase"),
        r"test_ckpt='middle': expected one of \['best', 'last'\]",
    ),
    Case(
        "cfg-precision-typo",
        lambda i, o: {},
        train_with("trainer.precision=16-mix"),
        r"trainer\.precision='16-mix': expected one of \[.*'16-mixed'.*\]",
    ),
    Case(
        "cfg-accelerator-typo",
        lambda i, o: {},
        train_with("trainer.accelerator=gpuu"),
        r"trainer\.accelerator='gpuu': expected one of \['auto', 'gpu', .*'cpu'.*\]",
    ),
    Case(
        "cfg-strategy-typo",
        lambda i, o: {},
        train_with("+trainer.strategy=dpp"),
        r"trainer\.strategy='dpp': expected one of \['auto', 'ddp', .*\]",
    ),
    Case(
        "cfg-devices-text",
        lambda i, o: {},
        train_with("trainer.devices=abc"),
        r"trainer\.devices='abc': expected auto, a number of devices >= 1",
    ),
    Case(
        "cfg-devices-zero",
        lambda i, o: {},
        train_with("trainer.devices=0"),
        r"trainer\.devices=0: expected auto",
    ),
    Case(
        "cfg-ckpt-path-folder",
        folder_with_ckpt,
        train_with("ckpt_path={c}", experiment="demo_phase"),
        r"ckpt_path=.*checkpoints: a folder, not a checkpoint file \(it holds last\.ckpt\)",
    ),
    Case(
        "cfg-eval-ckpt-path-folder",
        folder_with_ckpt,
        eval_with("ckpt_path={c}"),
        r"ckpt_path=.*checkpoints: a folder, not a checkpoint file",
    ),
    Case(
        "cfg-run-folder-under-a-file",
        file_as_run_folder,
        train_with(),
        r"paths\.output_dir=.*run1: .*logs is a file, expected a folder",
    ),
    Case(
        "cfg-run-folder-read-only",
        read_only_run_folder,
        train_with(),
        r"paths\.output_dir=.*run1: .*readonly is not writable",
    ),
    Case(
        "cfg-demo-with-pretrain-mix",
        lambda i, o: {},
        swapped_data("data=pretrain_mix", "data.include=[cholec80]", "paths.data_dir={inp}/nodata"),
        r"manifest not found: .*nodata/cholec80/pretrain\.jsonl",
    ),
    Case(
        "cfg-interpolation-to-another-group",
        lambda i, o: {},
        swapped_data("data=downstream", "paths.data_dir={inp}/nodata"),
        r"data\.train_manifest='\$\{{paths\.data_dir\}}/\$\{{data_name\}}/train\.jsonl' refers to data_name, which is "
        r"not set in this config .*: set data_name or override data\.train_manifest",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_config_value_is_checked_before_work(case: Case, tmp_path, capsys, monkeypatch, demo_root):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    ctx = {"inp": inp, "out": out, **case.make(inp, out)}
    if "ro" in ctx and os.geteuid() == 0:  # root writes anywhere: a read-only mount is what os.access reports
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ctx["ro"] else real(p, m))
    demo_link(inp, demo_root)
    before = snapshot(inp)
    capsys.readouterr()
    message = one_line(lambda: case.act(ctx), capsys)
    errors = [line for line in message.splitlines() if line.startswith("error:")]
    expect = case.expect.format(**{k: re.escape(str(v)) for k, v in ctx.items()})
    assert len(errors) == 1 and re.search(expect, errors[0]), f"{case.id}: culprit not named:\n{message[-2000:]}"
    assert "Traceback" not in message, f"{case.id}: a traceback:\n{message[-2000:]}"
    assert snapshot(inp) == before, f"{case.id}: an input file changed"
    assert not list(Path(ctx["out"]).rglob("*.ckpt")) if Path(ctx["out"]).is_dir() else True


def test_lightning_precisions_are_ours():
    """PRECISIONS is Lightning's own list (a Lightning upgrade that adds one fails here, not for a user)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    theirs = {v for group in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(group)}
    assert set(PRECISIONS) == theirs


# ----------------------------------------------------------------------------------------- disk space
def test_disk_full_during_a_checkpoint_write_is_one_line(tmp_path, capsys, caplog, monkeypatch, demo_root):
    """Free space below one checkpoint: a warning with the numbers at start; then the checkpoint write fails with
    ENOSPC (as torch.save on a full disk): one line naming the disk, the file and the free space."""
    import shutil

    import surgvista.utils.preflight as preflight
    from surgvista.run import train

    inp = tmp_path / "in"
    demo_link(inp, demo_root)
    before = snapshot(inp)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage._replace(free=1 << 20))

    def no_space(obj, f, *a, **k):
        Path(f).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    cfg = compose("demo", *demo_overrides(inp / "demo"), out=tmp_path / "out")
    with caplog.at_level("WARNING"):
        message = one_line(lambda: train(cfg), capsys)
    warning = next(r.getMessage() for r in caplog.records if "low disk space" in r.getMessage())
    assert re.search(r"1\.0 MiB free on the filesystem of .*checkpoints, but one checkpoint needs about [\d.]+ MiB",
                     warning)
    errors = [line for line in message.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in message, message[-2000:]
    assert re.fullmatch(
        r"error: .*/checkpoints/epoch_000\.ckpt: disk full, the write failed after 1000 B \(1\.0 MiB free on "
        r".*/checkpoints\); free some space or write the run elsewhere \(paths\.log_dir / hydra\.run\.dir\)",
        errors[0],
    ), errors[0]
    assert not list((tmp_path / "out").rglob("*.ckpt*")) and not list((tmp_path / "out").rglob(".*.tmp"))
    assert snapshot(inp) == before


def test_checkpoint_size_estimate_matches_a_real_checkpoint(tmp_path):
    """The estimate (weights + two Adam moments per trainable weight) is at least the file of weights and optimiser
    state, and within 20% of it (it also counts weights a module leaves out of its state dict)."""
    from helpers import tiny_pretrain_module

    from surgvista.utils.preflight import checkpoint_bytes

    module = tiny_pretrain_module()
    params = list(module.parameters())
    opt = torch.optim.AdamW([p for p in params if p.requires_grad])
    for p in params:
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    torch.save({"state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()]}, tmp_path / "c.ckpt")
    size = (tmp_path / "c.ckpt").stat().st_size
    assert size <= checkpoint_bytes(params) <= 1.2 * size


# --------------------------------------------------------------------------------------- what users see
@pytest.mark.slow
def test_train_cli_constructor_error_and_run_folder_under_a_file_are_one_line(tmp_path):
    """From the command line: a value validated inside a constructor (Hydra's instantiate), and a log folder that
    is a file (checked before Hydra creates the run folder), are one line each, exit status 1."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    (tmp_path / "logs").write_text("a file\n")

    def train_cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "train.py"), "experiment=demo", f"paths.data_dir={tmp_path / 'data'}", *args]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        return proc

    proc = train_cli("callbacks.preemption.signals=[SIGFOO]", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: callbacks.preemption.signals: unknown signal 'SIGFOO' (e.g. SIGUSR1, SIGTERM)"
    )
    proc = train_cli(f"paths.log_dir={tmp_path / 'logs'}")
    assert re.fullmatch(
        rf"error: hydra\.run\.dir={re.escape(str(tmp_path))}/logs/demo/runs/[\d_-]+: {re.escape(str(tmp_path))}/logs "
        r"is a file, expected a folder \(set hydra\.run\.dir or paths\.log_dir to a folder\)",
        proc.stderr.strip(),
    ), proc.stderr
    assert (tmp_path / "logs").read_text() == "a file\n"
