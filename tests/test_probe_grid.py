"""Probe grid: K heads in one pass equal K heads trained alone; the head is chosen on validation, never on test;
without a validation split the whole grid is reported and says so."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import run_script, small_demo_set
from timm.optim import param_groups_layer_decay

from surgvista.callbacks.probing import ProbeCallback, make_grid
from surgvista.models.probe_grid import ProbeGrid
from surgvista.models.probes import AttentiveProbe, LinearProbe
from surgvista.modules.grid_optim import GridAdamW

SETTINGS = [(1e-3, 0.0), (1e-2, 0.05), (3e-3, 0.3)]
BASE_LR = 1e-3


def train_alone(head, lr: float, wd: float, batches) -> None:
    """The single-head protocol: timm's decay groups (as FinetuneModule) and the fused AdamW."""
    groups = param_groups_layer_decay(head, wd, head.no_weight_decay(), layer_decay=1.0)
    opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(x), y).backward()
        opt.step()


def train_grid(grid: ProbeGrid, batches, fused: bool) -> None:
    """The grid: one forward of the shared inputs per batch, K × the mean loss of the K·B rows, GridAdamW."""
    opt = GridAdamW(grid.param_groups(BASE_LR), lr=BASE_LR, fused=fused)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        logits = grid(x)
        (len(grid) * F.cross_entropy(logits.flatten(0, 1), y.repeat(len(grid)))).backward()
        opt.step()


@pytest.mark.parametrize("kind,fused", [("linear", True), ("attentive", True), ("attentive", False)])
def test_grid_heads_equal_heads_trained_alone(kind, fused):
    torch.manual_seed(0)
    dim, classes = 12, 4
    template = LinearProbe(classes) if kind == "linear" else AttentiveProbe(classes, num_queries=2, num_heads=3)
    shape = (16, dim) if kind == "linear" else (16, 5, dim)
    batches = [(torch.randn(*shape) * 2 + 1, torch.randint(0, classes, (16,))) for _ in range(6)]
    heads = []
    for _ in SETTINGS:
        head = copy.deepcopy(template)
        head.build(dim)
        with torch.no_grad():  # non-trivial starting points (zero-initialised parts included)
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        heads.append(head)
    grid = ProbeGrid(template, SETTINGS)
    grid.build(dim)
    grid.load_heads(heads)
    grid.train()
    train_grid(grid, batches, fused)
    for k, ((lr, wd), head) in enumerate(zip(SETTINGS, heads)):
        head.train()
        train_alone(head, lr, wd, batches)
        trained = grid.head(k)
        for name, p in head.named_parameters():
            got = dict(trained.named_parameters())[name]
            if name == "attn.in_proj_bias":  # the key bias never changes an output (softmax): compare the rest
                p, got = torch.cat([p[:dim], p[2 * dim :]]), torch.cat([got[:dim], got[2 * dim :]])
            torch.testing.assert_close(got, p, rtol=1e-4, atol=2e-6, msg=f"head {k} {name}")
        x = batches[0][0]
        torch.testing.assert_close(trained.eval()(x), head.eval()(x), rtol=1e-4, atol=1e-5)
        grid.eval().active = k
        torch.testing.assert_close(grid(x), head(x), rtol=1e-4, atol=1e-5)
        grid.train()
    assert not torch.equal(grid.head(0).head.weight, grid.head(1).head.weight)  # different lr/wd, different heads


def test_grid_settings_and_default_head():
    grid = make_grid(LinearProbe(3), {"lrs": [1e-4, 1e-3, 1e-2], "wds": [0.0, 0.1]}, base_lr=1e-3, weight_decay=0.1)
    assert len(grid) == 6 and grid.settings[grid.default] == (1e-3, 0.1) and grid.active == grid.default
    grid.build(8)
    heads = [grid.head(k) for k in range(len(grid))]
    assert not torch.equal(heads[0].head.weight, heads[1].head.weight)  # each head its own initialisation
    assert grid(torch.randn(5, 8)).shape == (6, 5, 3)
    with pytest.raises(ValueError, match="lrs"):
        make_grid(LinearProbe(3), {"lrs": [], "wds": [0.0]}, 1e-3, 0.0)


def constant_grid() -> ProbeGrid:
    """Three linear heads that always answer class 0, 1 and 0 (weights zero, biases one-hot)."""
    grid = ProbeGrid(LinearProbe(2), [(1e-3, 0.0), (1e-2, 0.0), (1e-1, 0.0)], default=2)
    grid.build(3)
    with torch.no_grad():
        grid.param("head.weight").zero_()
        grid.param("head.bias").copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]))
    return grid.eval()


def batches(label: int) -> list[dict]:
    return [{"video": torch.randn(4, 3), "target": torch.full((4,), label)}]


def run_test_hooks(tmp_path, independent_val: bool) -> dict:
    grid = constant_grid()
    dm = SimpleNamespace(
        independent_val=independent_val,
        val_dataloader=lambda: batches(1),  # head 1 is right on validation
        test_dataloader=lambda: batches(0),  # heads 0 and 2 are right on test
        meta={"params": 10, "embed_dim": 3, "clips_per_s": 1.0, "device": "cpu"},
        frozen=True,
        directory=tmp_path,
        subset_record=lambda: {"train_fraction": 1.0},
    )
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True, default_root_dir=str(tmp_path), callback_metrics={})
    module = SimpleNamespace(net=grid, device=torch.device("cpu"), multilabel=False)
    callback = ProbeCallback("b", "linear", "d", grid={"enabled": True})
    callback.on_test_start(trainer, module)
    callback.on_test_end(trainer, module)
    return json.loads((tmp_path / "probe.json").read_text())["grid"]


def test_selection_uses_validation_not_test(tmp_path):
    record = run_test_hooks(tmp_path, independent_val=True)
    assert record["selected"] == 1  # best on validation although it is the worst on test
    assert record["val"] == [0.0, 100.0, 0.0] and record["test"] == [100.0, 0.0, 100.0]
    assert record["selection"].startswith("val/top1") and "val-selected" in record["summary"]


def test_without_validation_the_grid_is_reported_and_says_so(tmp_path):
    record = run_test_hooks(tmp_path, independent_val=False)
    assert record["selected"] == 2  # the recipe's head (the grid's default), not the best on test
    assert record["val"] is None and record["test"] == [100.0, 0.0, 100.0] and len(record["settings"]) == 3
    assert "no validation split" in record["selection"] and "no val" in record["summary"]
    assert "test top1 0.0-100.0" in record["summary"]


@pytest.mark.parametrize("fused", [True, False])
def test_grid_adamw_skips_a_step_marked_non_finite(fused):
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = GridAdamW([{"params": [p], "head_lr": torch.ones(2), "head_wd": torch.zeros(2)}], lr=0.1, fused=fused)
    p.grad = torch.full((2, 3), float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(2, 3))
    opt.found_inf = torch.tensor(0.0)
    p.grad = torch.ones(2, 3)
    opt.step()
    assert torch.all(p < 1)


@pytest.mark.slow  # ~17 s: a two-protocol grid sweep through train.py on the small demo set
def test_grid_sweep_reports_the_grid_when_validation_is_the_test_split(demo_root, tmp_path):
    sweep = tmp_path / "sweep"
    run_script(
        "train.py", "-m", "experiment=probe_demo", "model/backbone=demo_student", "probe=linear,attentive",
        "probe.grid.enabled=true", *small_demo_set(demo_root), f"data.cache_root={tmp_path / 'cache'}",
        "data.input_size=32", "data.num_frames=4", "data.num_workers=0", "data.batch_size=8", "trainer.max_epochs=1",
        "print_config=false", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    rows = {r["protocol"]: r for r in csv.DictReader((sweep / "leaderboard.csv").open())}
    for protocol, recipe in (("linear", (1e-3, 0.0)), ("attentive", (1e-3, 0.01))):
        record = json.loads((Path(rows[protocol]["run"]) / "probe.json").read_text())
        grid = record["grid"]  # the demo validates on its test videos: nothing may be selected on them
        assert grid["size"] == 20 and len(grid["test"]) == 20 and grid["val"] is None
        assert tuple(grid["settings"][grid["selected"]]) == recipe  # the recipe's head, fixed before training
        assert grid["test"][grid["selected"]] == pytest.approx(record["metrics"]["test/top1"], abs=1e-3)
        assert rows[protocol]["grid"].startswith("20 heads, no val: recipe head")
