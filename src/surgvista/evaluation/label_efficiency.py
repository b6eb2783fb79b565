"""Label efficiency of frozen probes: test metric against the fraction of training videos (or shots per class).

``python -m surgvista.label_efficiency <multirun dir> [--metric top1] [--out DIR]`` reads every ``probe.json``
under the folder (runs of a ``data.train_fraction=…`` / ``data.train_shots=…`` sweep, see docs/benchmark.md) and
writes ``label_efficiency.csv`` (one row per backbone × protocol × fraction: mean over the subset seeds, band) and
``label_efficiency.png`` (one curve per backbone × protocol, band shaded) next to the leaderboard. The band is the
bootstrap interval of the runs where ``probe.json`` holds one (``ci.<metric>.lo/hi``, averaged over the seeds),
else the range over the subset seeds (a single seed: no band). Also run at the end of a multirun
(:class:`LabelEfficiencyCallback`, ``experiment=probe_demo_label_efficiency``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from surgvista.utils.io import atomic_write, atomic_write_text


def run_value(rec: Mapping, metric: str) -> tuple[float, float | None, float | None]:
    """``(value, lo, hi)`` of ``metric`` in one ``probe.json`` record (``lo``/``hi`` None without an interval)."""
    metrics = {k.removeprefix("test/"): v for k, v in rec.get("metrics", {}).items()}
    if metric not in metrics:
        raise KeyError(f"probe.json of {rec.get('backbone')}/{rec.get('protocol')}: no test metric {metric!r}")
    ci = (rec.get("ci") or {}).get(metric) or (rec.get("ci") or {}).get(f"test/{metric}")
    if isinstance(ci, Mapping):
        return float(metrics[metric]), ci.get("lo"), ci.get("hi")
    if isinstance(ci, Sequence) and len(ci) == 2:
        return float(metrics[metric]), float(ci[0]), float(ci[1])
    return float(metrics[metric]), None, None


def collect_curves(root: str | Path, metric: str = "top1") -> dict[str, dict[str, np.ndarray]]:
    """``{"<dataset> <backbone> <protocol>": {"fraction", "mean", "lo", "hi", "runs"}}`` over the ``probe.json``
    under ``root``, one point per training fraction (k-shot runs: ``shots`` instead of a fraction)."""
    points: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(Path(root).rglob("probe.json")):
        rec = json.loads(path.read_text())
        shots = rec.get("train_shots")
        x = float(shots) if shots else float(rec.get("train_fraction", 1.0))
        label = f"{rec['dataset']} {rec['backbone']} {rec['protocol']}" + (" (shots)" if shots else "")
        points[label][x].append(run_value(rec, metric))
    curves = {}
    for label, by_x in points.items():
        xs = sorted(by_x)
        mean, lo, hi = [], [], []
        for x in xs:
            values = np.array([v for v, _, _ in by_x[x]], dtype=float)
            intervals = [(a, b) for _, a, b in by_x[x] if a is not None and b is not None]
            mean.append(values.mean())
            if intervals:
                lo.append(float(np.mean([a for a, _ in intervals])))
                hi.append(float(np.mean([b for _, b in intervals])))
            else:
                lo.append(values.min())
                hi.append(values.max())
        runs = np.array([len(by_x[x]) for x in xs])
        curves[label] = {
            k: np.array(v, dtype=float) for k, v in (("fraction", xs), ("mean", mean), ("lo", lo), ("hi", hi))
        }
        curves[label]["runs"] = runs
    return curves


def plot_label_efficiency(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, metric: str) -> Path:
    """``curves[label] = {"fraction", "mean", "lo", "hi"}`` (arrays of one length) as lines with shaded bands on a
    log x axis, written to ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, c in curves.items():
        x, mean = np.asarray(c["fraction"], float), np.asarray(c["mean"], float)
        (line,) = ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, np.asarray(c["lo"], float), np.asarray(c["hi"], float), color=line.get_color(), alpha=0.2)
    shots = any("(shots)" in label for label in curves)
    ax.set_xscale("log")
    ax.set_xlabel("shots per class" if shots else "fraction of training videos")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_label_efficiency(root: str | Path, metric: str = "top1", out: str | Path | None = None) -> Path:
    """``label_efficiency.csv`` and ``label_efficiency.png`` of the runs under ``root`` into ``out`` (default
    ``root``); prints ``label efficiency: <png>`` last and returns the PNG path."""
    curves = collect_curves(root, metric)
    if not curves:
        raise FileNotFoundError(f"no probe.json under {root}: did the probe runs finish their test?")
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["curve", "fraction_or_shots", f"{metric}_mean", f"{metric}_lo", f"{metric}_hi", "runs"])
    for label, c in curves.items():
        for row in zip(c["fraction"], c["mean"], c["lo"], c["hi"], c["runs"]):
            writer.writerow([label, *(round(float(v), 4) if math.isfinite(v) else v for v in row)])
    atomic_write_text(out / "label_efficiency.csv", text.getvalue())
    png = plot_label_efficiency(curves, out / "label_efficiency.png", metric)
    print(f"label efficiency: {png}")
    return png


class LabelEfficiencyCallback(Callback):
    """Hydra callback: the label-efficiency table and plot of the sweep folder at the end of a multirun."""

    def __init__(self, metric: str = "top1") -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_label_efficiency(config.hydra.sweep.dir, self.metric)
