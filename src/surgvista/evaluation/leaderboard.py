"""Leaderboard of a frozen-probe grid: ``python -m surgvista.leaderboard <multirun dir> [--out DIR]``.

Reads every ``probe.json`` under the folder (one per job, written by :class:`surgvista.callbacks.probing.ProbeCallback`)
and writes ``leaderboard.csv`` and ``leaderboard.md`` (into ``--out``, default the folder): one row per (dataset,
backbone, protocol) with the backbone's parameter count, the task's test metrics (phase: accuracy, mean video
accuracy, Jaccard/F1/precision/recall, and their ``relaxed_`` versions where the dataset has relaxed boundaries;
the edit score and segmental F1@10/25/50; with ``protocol=surgmotion`` SurgMotion's per-video ``sm_*`` metrics;
triplets: mAP_ivt and its components; CVS/action: top-1/top-k, balanced
accuracy, mAP) and the feature extraction throughput. A metric with a bootstrap interval in the run's record
(``probe.json``'s ``ci``) shows as ``mean [lo, hi]`` in the Markdown table and gets ``<metric>_lo``/``_hi`` columns
in the CSV. The last printed line is
``leaderboard: <path to leaderboard.csv>``. Also run at the end of a ``-m`` grid (:class:`LeaderboardCallback`).
With ``--wandb`` (or at the end of a grid run with ``logger=wandb``) the table also goes to W&B (:func:`log_to_wandb`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Headline metrics, in column order, when a run logged them (test/<name>); the rest stay in the per-run files.
HEADLINE = (
    "top1", "accuracy", "video_accuracy_mean", "video_accuracy_std", "jaccard", "f1", "precision", "recall",
    "relaxed_accuracy", "relaxed_video_accuracy_mean", "relaxed_jaccard", "relaxed_f1", "relaxed_precision",
    "relaxed_recall", "edit", "f1@10", "f1@25", "f1@50", "accuracy_top3", "accuracy_top5", "balanced_accuracy", "mAP",
    "mAP_ivt", "mAP_i", "mAP_v", "mAP_t", "mAP_iv", "mAP_it",
    "sm_accuracy", "sm_precision", "sm_recall", "sm_jaccard", "sm_f1", "sm_edit",
)  # fmt: skip
FIXED = ("dataset", "backbone", "params_M", "protocol")


def collect(root: str | Path) -> list[dict]:
    """One row per ``probe.json`` under ``root`` (sorted by dataset, backbone, protocol)."""
    rows = []
    for path in sorted(Path(root).rglob("probe.json")):
        rec = json.loads(path.read_text())
        metrics = {k.removeprefix("test/"): v for k, v in rec["metrics"].items()}
        rows.append(
            {
                "dataset": rec["dataset"],
                "backbone": rec["backbone"],
                "params_M": round(rec["params"] / 1e6, 3) if rec.get("params") else None,
                "protocol": rec["protocol"],
                **metrics,
                **{f"{k}_{end}": v.get(end) for k, v in (rec.get("ci") or {}).items() for end in ("lo", "hi")},
                "clips_per_s": round(rec["clips_per_s"], 2) if rec.get("clips_per_s") else None,
                **({"train_fraction": rec["train_fraction"]} if rec.get("train_fraction", 1.0) != 1.0 else {}),
                **({"grid": rec["grid"]["summary"]} if rec.get("grid") else {}),
                "run": str(path.parent),
            }
        )
    return sorted(rows, key=lambda r: (r["dataset"], r["backbone"], r["protocol"], r.get("train_fraction", 1.0)))


def columns(rows: list[dict]) -> list[str]:
    """The CSV columns: fixed, the headline metrics present (each followed by its interval ends), throughput."""
    present = {k for r in rows for k in r}
    metrics = [c for m in HEADLINE if m in present for c in (m, f"{m}_lo", f"{m}_hi") if c in present]
    extra = [c for c in ("train_fraction", "grid") if c in present]  # label-efficiency runs, probe grids
    return [*FIXED, *extra, *metrics, "clips_per_s", "run"]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def md_cell(row: dict, column: str) -> str:
    """``mean [lo, hi]`` when the row has the metric's interval, else the plain value."""
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if column in HEADLINE and isinstance(lo, float) and isinstance(hi, float):
        return f"{_cell(row.get(column))} [{lo:.2f}, {hi:.2f}]"
    return _cell(row.get(column))


def write(rows: list[dict], out: str | Path) -> Path:
    """``leaderboard.csv`` and ``leaderboard.md`` in ``out``; returns the CSV path."""
    if not rows:
        raise FileNotFoundError(f"no probe.json under {out}: did the probe runs finish their test?")
    out = Path(out)
    cols = columns(rows)
    with (out / "leaderboard.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in cols if c != "run" and not c.endswith(("_lo", "_hi"))]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(md_cell(r, c) for c in shown) + " |" for r in rows]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    return out / "leaderboard.csv"


def leaderboard(root: str | Path, out: str | Path | None = None) -> Path:
    """Collect ``root``, write the two files, print the Markdown table and ``leaderboard: <csv>``."""
    csv_path = write(collect(root), out or root)
    print(csv_path.with_suffix(".md").read_text(), end="")
    print(f"leaderboard: {csv_path}")
    return csv_path


def log_to_wandb(csv_path: str | Path, sweep_dir: str | Path, project: str = "surgvista", offline: bool = True) -> Path:
    """The leaderboard CSV as the table ``leaderboard`` of a W&B run (``job_type="leaderboard"``) in the group of the
    sweep's own runs (:func:`~surgvista.callbacks.wandb_summary.sweep_group` of ``sweep_dir``), saved under the CSV's
    folder; returns the run's folder."""
    import wandb

    from surgvista.callbacks.wandb_summary import read_csv_table, sweep_group

    csv_path = Path(csv_path)
    columns, rows = read_csv_table(csv_path)
    mode = "offline" if offline else None  # None: WANDB_MODE / the wandb settings decide
    run = wandb.init(
        project=project, group=sweep_group(sweep_dir), job_type="leaderboard", name="leaderboard",
        dir=str(csv_path.parent), mode=mode,
    )  # fmt: skip
    try:
        run.log({"leaderboard": wandb.Table(columns=columns, data=rows)})
        folder = Path(run.dir).parent
    finally:
        run.finish()
    log.info("W&B leaderboard table: %s", folder)
    return folder


def wandb_logger(config: DictConfig) -> DictConfig | None:
    """The ``WandbLogger`` entry of a run config's ``logger`` group, if any."""
    for node in (config.get("logger") or {}).values():
        if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("WandbLogger"):
            return node
    return None


class LeaderboardCallback(Callback):
    """Hydra callback: the leaderboard of the sweep folder at the end of a multirun (and its W&B table when the
    grid logged to W&B)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        csv_path = leaderboard(config.hydra.sweep.dir)
        node = wandb_logger(config)
        if node is not None:
            project, offline = node.get("project") or "surgvista", bool(node.get("offline"))
            log_to_wandb(csv_path, config.hydra.sweep.dir, project, offline)
