"""A real 2-process gloo run on CPU: each rank updates with its DistributedSampler shard (padding duplicates
included) and ``compute()`` equals the 1-process result exactly."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_ports

from surgvista.metrics import ClipMetrics, PhaseMetrics, TripletMetrics

WORLD = 2


def shard(n: int, world: int, rank: int) -> list[int]:
    """``DistributedSampler(shuffle=False, drop_last=False)`` indices: pad by repeating the first samples."""
    total = math.ceil(n / world) * world
    idx = list(range(n)) + list(range(total - n))
    return idx[rank:total:world]


def make_data() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    video = np.concatenate([np.full(n, v) for v, n in enumerate((23, 17, 31))])  # 71 rows: one padding row
    frame = np.concatenate([np.arange(n) for n in (23, 17, 31)])
    target = np.concatenate([np.sort(rng.integers(0, 7, n)) for n in (23, 17, 31)])
    probs = rng.random((len(video), 7)).astype(np.float32)
    probs[np.arange(len(video)), target] += 0.6
    phase = {"probs": probs / probs.sum(1, keepdims=True), "target": target, "video": video, "frame": frame}
    tv = np.repeat([0, 1, 2], 11)  # 33 rows
    triplet = {
        "probs": rng.random((33, 100)).astype(np.float32),
        "target": (rng.random((33, 100)) < 0.1) * 1,
        "video": tv,
        "frame": np.tile(np.arange(11), 3),
    }
    clip = {"probs": rng.random((25, 5)).astype(np.float32), "target": rng.integers(0, 5, 25), "index": np.arange(25)}
    return {"phase": phase, "triplet": triplet, "clip": clip}


def run(data, order: dict[str, list[int]], batch: int = 6) -> dict:
    metrics = {"phase": PhaseMetrics(7), "triplet": TripletMetrics(), "clip": ClipMetrics(5, top_k=(1, 3))}
    for name, m in metrics.items():
        rows = order[name]
        for s in range(0, len(rows), batch):
            sel = rows[s : s + batch]
            args = [torch.from_numpy(np.asarray(a)[sel]) for a in data[name].values()]
            m.update(*args)
    out = {name: m.compute() for name, m in metrics.items()}
    out["predictions"] = metrics["phase"].predictions()
    out["triplet_ap"] = metrics["triplet"].per_class_ap("iv")
    return out


def worker(rank: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data = make_data()
        order = {name: shard(len(d["probs"]), WORLD, rank) for name, d in data.items()}
        result = run(data, order)
        if rank == 0:
            torch.save(result, path)
    finally:
        dist.destroy_process_group()


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_two_gloo_processes_equal_one(tmp_path):
    (port,) = free_ports(1)
    path = str(tmp_path / "rank0.pt")
    mp.spawn(worker, args=(port, path), nprocs=WORLD, join=True)
    two = torch.load(path, weights_only=False)
    data = make_data()
    rng = np.random.default_rng(1)
    one = run(data, {name: rng.permutation(len(d["probs"])).tolist() for name, d in data.items()})
    assert same(one, two), (one, two)
    assert len(two["predictions"][2]["frame"]) == 31
