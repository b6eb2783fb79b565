"""One exit convention for every command (``surgvista.cli``): a bad input is exactly one ``error: ...`` line on
stderr and exit status 1; bad usage is the usage text and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback.
Each command's ``main`` runs in-process."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

# command -> (a bad input, the start of its one line after "error: ", bad usage); {tmp} is the test's folder.
COMMANDS = {
    "prepare": (
        ["cholec80", "--raw", "{tmp}/nowhere", "--out", "{tmp}/out", "--quiet"],
        "cholec80: raw folder {tmp}/nowhere does not exist",
        ["cholec80", "--raw", "{tmp}/nowhere"],
    ),
    "export": (
        ["ckpt={tmp}/gone.pth", "format=original", "out={tmp}/out.pth"],
        "checkpoint not found: {tmp}/gone.pth",
        ["ckpt={tmp}/gone.pth", "format=original", "out={tmp}/out.pth", "overwite=true"],
    ),
    "score": (
        ["phase", "{tmp}/gt", "{tmp}/pred", "--dataset", "cholec80"],
        "{tmp}/gt: not a folder of per-video files",
        ["phase", "{tmp}/gt", "{tmp}/pred", "--dataset", "cholec80", "--relaxed", "maybe"],
    ),
    "shards": (
        ["{tmp}/nothing.jsonl", "--out", "{tmp}/shards"],
        "manifest not found: {tmp}/nothing.jsonl",
        ["{tmp}/nothing.jsonl"],
    ),
    "demo_data": (
        ["--out", "{tmp}/demo", "--videos", "2", "--val-videos", "2"],
        "need 0 < num_val_videos < num_videos, got 2 and 2",
        ["--out", "{tmp}/demo", "--videos", "eight"],
    ),
    "leaderboard": (["{tmp}/nowhere"], "{tmp}/nowhere is not a folder", ["{tmp}/nowhere", "--bogus"]),
    "pretrain_probe": (
        ["{tmp}/nowhere"],
        "{tmp}/nowhere/config.yaml not found",
        ["{tmp}/nowhere", "--seeds", "three"],
    ),
    "features": (
        ["extract", "experiment=demo"],
        "data=DemoDataModule has no feature cache to fill",
        ["extrakt", "experiment=demo"],
    ),
}


def run(name: str, argv: list[str], tmp: Path, capsys) -> tuple[int, str, str]:
    """``surgvista.cli.<name>.main(argv)``: exit status, stdout, stderr."""
    main = importlib.import_module(f"surgvista.cli.{name}").main
    capsys.readouterr()
    try:
        code = main([a.format(tmp=tmp) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli_env(monkeypatch, tmp_path) -> Path:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))  # features composes the clone's configs
    return tmp_path


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_bad_input_is_one_error_line_and_exit_1(name, cli_env, capsys):
    argv, expected, _ = COMMANDS[name]
    code, out, err = run(name, argv, cli_env, capsys)
    assert code == 1, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: " + expected.format(tmp=cli_env)), err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_bad_usage_is_the_usage_text_and_exit_2(name, cli_env, capsys):
    code, out, err = run(name, COMMANDS[name][2], cli_env, capsys)
    assert code == 2 and not out
    assert err.startswith("usage: surgvista-") and f"surgvista-{name.replace('_', '-')}" in err
    assert "error: " in err.strip().splitlines()[-1]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_exits_0(name, capsys):
    code, out, _ = run(name, ["--help"], Path("."), capsys)
    assert code == 0 and out.startswith("usage: surgvista-")


# Commands whose --help must not wait for Lightning or torchmetrics (seconds to import): they load them after parsing.
LIGHT_HELP = ["ablation", "pretrain_probe", "score", "leaderboard", "label_efficiency", "prepare", "demo_data"]


def test_help_loads_neither_lightning_nor_torchmetrics():
    code = (
        "import contextlib, io, sys\n"
        f"for name in {LIGHT_HELP!r}:\n"
        "    main = __import__(f'surgvista.cli.{name}', fromlist=['main']).main\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(['--help'])\n"
        "print(sorted(m for m in ('lightning', 'torchmetrics', 'timm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_full_error_shows_the_traceback(cli_env, monkeypatch):
    from surgvista.cli.score import main
    from surgvista.evaluation.scoring import ScoreError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ScoreError, match="not a folder of per-video files"):
        main(["phase", str(cli_env / "gt"), str(cli_env / "pred"), "--dataset", "cholec80"])

