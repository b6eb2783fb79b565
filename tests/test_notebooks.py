"""Every notebook in notebooks/ runs headless (nbclient) on a small demo run laid out as ``make demo`` writes it
(``<run>/{pretrain,finetune,eval}``), found through SURGVISTA_DEMO_RUN as ``make demo`` prints it."""

from __future__ import annotations

import os

import nbclient  # the `notebooks` extra (make install: .[dev,notebooks])
import nbformat
import pytest
from helpers import ROOT, small_demo_overrides, small_demo_set

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_root):
    from hydra import compose, initialize_config_dir
    from test_finetune import _compose

    from surgvista.run import evaluate, train

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    run = tmp_path_factory.mktemp("demo_pipeline") / "2026-01-01_00-00-00"
    pre = [*small_demo_overrides(demo_root), "model.recon_every_n_steps=0", "callbacks.rich_progress_bar=null"]
    pre += [f"paths.output_dir={run / 'pretrain'}", f"paths.work_dir={run}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides=["experiment=demo", *pre]))
    demo = [
        *small_demo_set(demo_root),
        "model.net.preset=tiny",
    ]
    pretrained = run / "pretrain" / "checkpoints" / "last.ckpt"
    short = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false"]
    train(_compose("demo_phase", *demo, *short, f"model.ckpt={pretrained}", out=run / "finetune"))
    finetuned = run / "finetune" / "checkpoints" / "last.ckpt"
    evaluate(_compose("demo_phase", *demo, f"ckpt_path={finetuned}", out=run / "eval", config="eval"))
    return run


def test_notebooks_exist():
    assert {"quickstart.ipynb", "results.ipynb", "features.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.slow  # a kernel per notebook (~15 s each on 2 cores)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, demo_run, monkeypatch):
    monkeypatch.setenv("SURGVISTA_DEMO_RUN", str(demo_run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"demo run: {demo_run}" in text
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
