"""Training data loading that resumes exactly mid-epoch, with any number of workers and ranks.

The whole data stream is a function of ``(seed, epoch, position)``; docs/fault_tolerance.md explains the design and
why it is not ``torchdata``'s ``StatefulDataLoader``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of ``epoch``'s global order."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def permutation(size: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(size, generator=g).tolist()


class ResumableSampler(DistributedSampler):
    """Per-epoch order from ``seed`` (``order(epoch)`` or a permutation of ``size``), sharded over ranks.

    Subclasses ``DistributedSampler`` only so that Lightning keeps it instead of injecting its own; it needs no
    process group. Each rank gets ``size // num_replicas`` positions (the tail is dropped, as ``drop_last``).
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        order: Callable[[int], Sequence[int]] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.size, self.seed, self.num_replicas, self.rank = size, seed, num_replicas, rank
        self.order = order
        self.epoch = 0
        self.num_samples = size // num_replicas
        self.total_size = self.num_samples * num_replicas
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, start: int) -> None:
        """The next iteration (over ``epoch``) skips this rank's first ``start`` samples, once. The epoch is set here
        too: with workers, Lightning creates the iterator before it calls ``set_epoch``."""
        if start >= self.num_samples:  # saved after the epoch's last batch: continue with the next epoch
            epoch, start = epoch + 1, 0
        self.epoch, self._resume = epoch, (epoch, start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # A generator: the epoch and resume point are read at the first next(), after Lightning's set_epoch.
        epoch = self.epoch
        order = list(self.order(epoch)) if self.order is not None else permutation(self.size, self.seed, epoch)
        if len(order) < self.total_size:
            raise ValueError(f"order({self.epoch}) gave {len(order)} indices, expected at least {self.total_size}")
        start, self._resume = (self._resume[1] if self._resume and self._resume[0] == self.epoch else 0), None
        for pos in range(self.rank + start * self.num_replicas, self.total_size, self.num_replicas):
            yield order[pos], sample_seed(self.seed, self.epoch, pos)


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(index, seed)``: the item is made with every global RNG seeded from ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def batches_done(trainer) -> int:
    """Training batches of the current epoch that a checkpoint written now counts as done.

    Mirrors Lightning's restart rule: a save from ``on_train_batch_end`` (the batch is processed but not yet
    marked completed) resumes after that batch; any other save resumes after the last completed batch.
    """
    p = trainer.fit_loop.epoch_loop.batch_progress.current
    return p.processed if p.ready == p.started == p.processed == p.completed + 1 else p.completed


class _LazyIterator:
    """Starts the real iterator at the first ``next()``: Lightning may call ``iter()`` on the training loader
    before it restores the loader's state (``estimated_stepping_batches`` in ``configure_optimizers``), and a
    worker iterator would prefetch from the wrong position."""

    def __init__(self, start: Callable[[], Iterator]) -> None:
        self._start, self._it = start, None

    def __iter__(self) -> _LazyIterator:
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._start()
        return next(self._it)


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over :class:`SeededSamples` with a :class:`ResumableSampler`, whose position
    goes into the checkpoint. ``trainer`` is attached by the data module (``None`` outside a fit)."""

    trainer = None

    def __iter__(self) -> Iterator:
        return _LazyIterator(super().__iter__)

    def state_dict(self) -> dict:
        sampler, trainer = self.sampler, self.trainer
        epoch, done = sampler.epoch, batches_done(trainer) if trainer is not None else 0
        if trainer is not None and done >= trainer.num_training_batches:  # the epoch is over: the next one is due
            epoch, done = epoch + 1, 0
        return {
            "epoch": epoch,
            "batches": done,
            "batch_size": self.batch_size,
            "seed": sampler.seed,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        now = {"batch_size": self.batch_size, "seed": sampler.seed, "num_replicas": sampler.num_replicas}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            log.warning(
                "resuming with a different %s (checkpoint, now): the data order will not continue exactly", changed
            )
        sampler.resume_at(int(state["epoch"]), int(state["batches"]) * self.batch_size)
        log.info("resuming the training data at epoch %d, batch %d", state["epoch"], state["batches"])


def eval_loader(dataset: Dataset, **loader_kwargs) -> DataLoader:
    """A validation/test loader whose worker seeds come from its own generator: starting it (which a resumed run
    does at another time than the uninterrupted one) never draws from the global torch RNG."""
    return DataLoader(dataset, generator=torch.Generator().manual_seed(0), **loader_kwargs)


def data_seed(default: int = 0) -> int:
    """The run's seed (``seed_everything`` exports it as ``PL_GLOBAL_SEED``, identical on every rank) or ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


def resumable_loader(
    dataset: Dataset,
    trainer,
    seed: int,
    order: Callable[[int], Sequence[int]] | None = None,
    **loader_kwargs,
) -> ResumableDataLoader:
    """The training loader: this rank's share of ``dataset`` (all of it outside distributed training)."""
    world, rank = 1, 0
    connector = getattr(trainer, "_accelerator_connector", None)
    if trainer is not None and getattr(connector, "use_distributed_sampler", True):
        world, rank = trainer.world_size, trainer.global_rank
    sampler = ResumableSampler(len(dataset), seed, world, rank, order)
    loader = ResumableDataLoader(
        SeededSamples(dataset),
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        **loader_kwargs,
    )
    loader.trainer = trainer
    return loader
