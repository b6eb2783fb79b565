"""The objectives' ablation table: per protocol and objective, the mean per-video metric over the test videos and
the seeds with its 95 % interval (seeds and videos resampled, ``metrics.bootstrap.seeds_videos_interval``), the
pre-training cost, and the colour-histogram baseline on the same test videos; written as JSON, Markdown and a plot.

Inputs are run folders (``<root>/<protocol>/<objective>/seed<k>``, each with its ``per_video.json``) and the
pre-training stages' ``stage.json`` (``<root>/pretrain/<objective>/seed<k>``), as ``surgvista-ablation`` lays
them out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from surgvista.evaluation.uncertainty import load_per_video
from surgvista.metrics.bootstrap import seeds_videos_interval
from surgvista.utils.errors import ConfigError
from surgvista.utils.io import atomic_write, atomic_write_text

#: per-video record field of each table metric (phase records, ``metrics.per_video``)
RECORD_FIELDS = {"video_accuracy": "accuracy", "edit": "edit"}


def run_folder(root: Path, stage: str, objective: str, seed: int) -> Path:
    """``<root>/<stage>/<objective>/seed<seed>``: where the ablation runs one stage of one objective and seed."""
    return Path(root) / stage / objective / f"seed{seed}"


def per_video_matrix(run_dirs: Sequence[Path], metric: str) -> np.ndarray:
    """``(runs, videos)`` per-video values of ``metric`` (videos in sorted id order; every run on the same ones)."""
    field = RECORD_FIELDS[metric]
    rows, videos = [], None
    for run in run_dirs:
        doc = load_per_video(run)
        by_video = {r["video"]: r[field] for r in doc["videos"]}
        if videos is None:
            videos = sorted(by_video)
        elif sorted(by_video) != videos:
            raise ConfigError(f"{doc['path']}: other test videos than {run_dirs[0]} ({sorted(by_video)} vs {videos})")
        rows.append([math.nan if by_video[v] is None else float(by_video[v]) for v in videos])
    return np.asarray(rows, dtype=np.float64)


def pretrain_cost(root: Path, objective: str, seeds: Sequence[int]) -> dict[str, float] | None:
    """Mean wall and CPU seconds of the objective's pre-training runs (``None``: no pre-training)."""
    records = []
    for seed in seeds:
        done = run_folder(root, "pretrain", objective, seed) / "stage.json"
        if done.is_file():
            records.append(json.loads(done.read_text()))
    if not records:
        return None
    return {k: float(np.mean([r[k] for r in records])) for k in ("wall_s", "cpu_s")}


def ablation_result(
    root: Path, objectives: Sequence[str], seeds: Sequence[int], protocols: Sequence[str], metric: str, **ci
) -> dict:
    """``{"metric", "seeds", "protocols", "rows": [{"objective", "cost", protocol: interval dict}]}``."""
    rows = []
    for objective in objectives:
        row: dict = {"objective": objective, "cost": pretrain_cost(root, objective, seeds)}
        for protocol in protocols:
            matrix = per_video_matrix([run_folder(root, protocol, objective, s) for s in seeds], metric)
            row[protocol] = {**seeds_videos_interval(matrix, **ci).as_dict(), "videos": matrix.shape[1]}
        rows.append(row)
    return {"metric": metric, "seeds": list(seeds), "protocols": list(protocols), "rows": rows}


def _cell(value: Mapping | None) -> str:
    if value is None or value.get("value") is None:
        return "–"
    return f"{value['value']:.1f} [{value['lo']:.1f}, {value['hi']:.1f}]"


def ablation_markdown(result: dict, baseline: Mapping | None = None) -> str:
    """The table: objective × protocol ``mean [lo, hi]``, pre-training seconds; the baseline rows below it."""
    protocols = result["protocols"]
    head = ["objective", *protocols, "pre-training wall s (CPU s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cost = row["cost"]
        seconds = "–" if cost is None else f"{cost['wall_s']:.0f} ({cost['cpu_s']:.0f})"
        lines.append("| " + " | ".join([row["objective"], *(_cell(row[p]) for p in protocols), seconds]) + " |")
    for name, value in (baseline or {}).items():
        lines.append("| " + " | ".join([name, *(_cell(value) for _ in protocols), "–"]) + " |")
    seeds = len(result["seeds"])
    videos = result["rows"][0][protocols[0]]["videos"] if result["rows"] else 0
    note = (
        f"\n{result['metric']} (%): mean over {videos} test videos × {seeds} seeds [95 % bootstrap interval, seeds "
        "and videos resampled]. Baselines need no pre-training and are the same in every column."
    )
    return "\n".join(lines) + note + "\n"


def ablation_plot(result: dict, path: Path, baseline: Mapping | None = None) -> Path:
    """Grouped bars (protocols × objectives) with interval whiskers; baselines as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocols, rows = result["protocols"], result["rows"]
    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        x = np.arange(len(protocols)) + (i - (len(rows) - 1) / 2) * width
        mean = np.array([row[p]["value"] for p in protocols], dtype=float)
        err = np.array([[mean[j] - row[p]["lo"], row[p]["hi"] - mean[j]] for j, p in enumerate(protocols)]).T
        ax.bar(x, mean, width, yerr=err, capsize=2, label=row["objective"])
    for k, (name, value) in enumerate((baseline or {}).items()):
        ax.axhline(value["value"], color=f"C{len(rows) + k}", linestyle="--", linewidth=1, label=name)
    ax.set_xticks(np.arange(len(protocols)), protocols)
    ax.set_ylabel(f"{result['metric']} (%)")
    ax.set_title(f"objectives on the proxy: mean [95 % CI] over test videos × {len(result['seeds'])} seeds")
    ax.legend(fontsize=7, ncols=2)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_ablation(result: dict, out: Path, baseline: Mapping | None = None) -> Path:
    """``ablation.{json,md,png}`` in ``out`` (atomic); returns the Markdown table's path."""
    out = Path(out)
    atomic_write_text(out / "ablation.json", json.dumps({**result, "baselines": dict(baseline or {})}, indent=1))
    ablation_plot(result, out / "ablation.png", baseline)
    return atomic_write_text(out / "ablation.md", ablation_markdown(result, baseline))
