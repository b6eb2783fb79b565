"""Cost of a probe grid against one head on CPU: ``python bench/probe_grid.py [--heads 20] [--repeats 5]``.

One training epoch (forward, loss, backward, AdamW step over every batch) of cached features of the demo's shape
(``--clips`` clips, batch 64, ``--dim``-wide pooled vectors / ``--tokens`` tokens), for the linear and the attentive
probe: one head (today's protocol) and a ``--heads`` grid (:class:`surgvista.models.probe_grid.ProbeGrid`), timed
side by side (alternating, after one warm-up epoch each), median of ``--repeats``. Prints the ratio grid / one head.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader

from surgvista.features.clip_data import CachedClipDataset
from surgvista.models.probe_grid import ProbeGrid
from surgvista.models.probes import AttentiveProbe, LinearProbe
from surgvista.modules.grid_optim import GridAdamW


def epoch_seconds(head, optimizer, data: dict, batch: int, loader: bool) -> float:
    """Seconds of one epoch of probe training; ``loader``: batches from the protocol's ``DataLoader`` over the
    cached samples (as a probe run reads them), else slices of the feature tensors (the head's own cost)."""
    key = "tokens" if head.inputs == "tokens" else "pooled"
    n = len(data["index"])
    start = time.perf_counter()
    if loader:
        batches = iter(DataLoader(CachedClipDataset(data, key), batch))
    else:
        batches = (
            {"video": data[key][i : i + batch].float(), "target": data["target"][i : i + batch]}
            for i in range(0, n, batch)
        )
    for b in batches:
        logits, y = head(b["video"]), b["target"]
        if logits.ndim == 3:  # as FinetuneModule.training_step: K × the mean loss of the K·B rows
            loss = len(logits) * F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)))
        else:
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def setups(kind: str, dim: int, classes: int, heads: int) -> dict:
    """``{"one head": (module, optimiser), "grid": ...}`` for ``kind`` (linear | attentive)."""
    make = (lambda: LinearProbe(classes)) if kind == "linear" else (lambda: AttentiveProbe(classes))
    one = make()
    one.build(dim)
    one_opt = torch.optim.AdamW(
        param_groups_layer_decay(one, 0.01, one.no_weight_decay(), layer_decay=1.0), lr=1e-3, fused=True
    )
    settings = [(10 ** (-4 + 2 * i / max(heads - 1, 1)), 0.01) for i in range(heads)]
    grid = ProbeGrid(make(), settings)
    grid.build(dim)
    grid_opt = GridAdamW(grid.param_groups(1e-3), lr=1e-3)
    return {"one head": (one.train(), one_opt), "grid": (grid.train(), grid_opt)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--tokens", type=int, default=196)  # the demo student: 8 frames at 112 px = 4 x 7 x 7
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    targets = torch.randint(0, args.classes, (args.clips,))
    tokens = torch.randn(args.clips, args.tokens, args.dim)
    index = torch.arange(args.clips)
    data = {"pooled": tokens.mean(1), "tokens": tokens.half(), "target": targets}
    data |= {"video_index": index, "frame_index": index, "index": index}
    for kind in ("linear", "attentive"):
        runs = setups(kind, args.dim, args.classes, args.heads)
        for loader in (False, True):
            times: dict[str, list[float]] = {name: [] for name in runs}
            for r in range(args.repeats + 1):  # the first round warms up
                for name, (head, opt) in runs.items():
                    seconds = epoch_seconds(head, opt, data, 64, loader)
                    if r:
                        times[name].append(seconds)
            one, grid = statistics.median(times["one head"]), statistics.median(times["grid"])
            what = "probe epoch (DataLoader + head)" if loader else "head only"
            print(
                f"{kind}, {what}: one head {one * 1e3:.1f} ms, grid of {args.heads} {grid * 1e3:.1f} ms, "
                f"ratio {grid / one:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
