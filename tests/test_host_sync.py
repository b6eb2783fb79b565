"""No device→host synchronisation in a training step (issue 14: "no host syncs in the step").

On a GPU each sync empties the launch queue; between logging steps a step must have none. The CPU tests count the
operations that would sync (``HostSyncCounter``); the CUDA test uses ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import compose, small_demo_data, small_demo_set, tiny_pretrain_module

from surgvista.layers.masking import MaskGenerator, take, token_order
from surgvista.utils.host_sync import HostSyncCounter, device_constant

LOG_EVERY = 5


def test_counter_sees_syncing_calls_and_not_gathers():
    x, mask = torch.randn(2, 6, 3), torch.tensor([[True, False] * 3, [False, True] * 3])
    scale = device_constant((1.0, 2.0, 3.0), x.device)  # made (one copy) here, then cached
    with HostSyncCounter() as counter:
        x.sum().item()
        bool(x.sum() > 0)
        x[~mask]
        torch.where(mask)
        mask.nonzero()
        torch.tensor([1.0, 2.0], device="cpu")
        take(x, token_order(mask, 3)[0])  # integer positions: no sync
        assert device_constant((1.0, 2.0, 3.0), x.device) is scale
    assert [op for _, op, _ in counter.events] == ["item", "__bool__", "__getitem__", "where", "nonzero", "tensor"]
    assert all("test_host_sync.py" in where for _, _, where in counter.events)


def test_device_constant_is_made_once_per_device_and_is_a_normal_tensor():
    with torch.inference_mode():
        a = device_constant([0.5, 0.25], "cpu", (2, 1))
    assert not a.is_inference() and a.shape == (2, 1) and a.dtype == torch.float32
    assert device_constant((0.5, 0.25), torch.device("cpu"), (2, 1)) is a


# ------------------------------------------------------------------------------------- through Lightning
class SyncTag(L.Callback):
    """Tags the counter's events with the optimiser step and whether they came in the step or after it."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.tag = ("step", trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counter.tag = ("after", trainer.global_step - 1)


def _compose(experiment: str, out, *overrides: str):
    """One loader worker: the data is read outside the counted (main) thread."""
    return compose(experiment, f"trainer.log_every_n_steps={LOG_EVERY}", *overrides, out=out, workers=1)


def _fit_counting(cfg, steps: int, monkeypatch) -> HostSyncCounter:
    """``train(cfg)`` with every configured callback (rich bar, checkpoints, exact resume, ...), counting syncs."""
    import surgvista.run as run

    counter, instantiate_group = HostSyncCounter(), run.instantiate_group

    def with_tag(group):  # the tagging callback first (its hooks run before the others), then the configured ones
        items = instantiate_group(group)
        return [SyncTag(counter), *items] if any(isinstance(i, L.Callback) for i in items) else items

    monkeypatch.setattr(run, "instantiate_group", with_tag)
    with counter:
        run.train(cfg)
    tagged = {tag[1] for tag, _, _ in counter.events if isinstance(tag, tuple)}
    assert counter.tag == ("after", steps - 1) and tagged, "the tag callback did not follow the fit"
    return counter


def _quiet_steps(steps: int) -> set[tuple[str, int]]:
    """Tags of the optimiser steps that must be free of syncs: not the first, not a logging step, not the last."""
    logging = {s for s in range(steps) if (s + 1) % LOG_EVERY == 0}
    return {(where, s) for s in range(1, steps - 1) if s not in logging for where in ("step", "after")}


def _assert_quiet(counter: HostSyncCounter, steps: int) -> None:
    found = counter.by_caller(_quiet_steps(steps))
    assert not found, "device syncs between logging steps:\n" + "\n".join(f"{n}x {k}" for k, n in found.items())
    assert counter.by_caller(), "the counter saw nothing at all: it is not hooked into the fit"


@pytest.mark.slow
def test_pretraining_steps_have_no_host_sync_between_logging_steps(demo_root, tmp_path, monkeypatch):
    steps = 12
    cfg = _compose(
        "demo", tmp_path, *small_demo_data(demo_root), "data.num_frames=4", "data.batch_size=2",
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0",
        "callbacks.probe_monitor=null", "model.recon_every_n_steps=0",
    )  # fmt: skip
    _assert_quiet(_fit_counting(cfg, steps, monkeypatch), steps)


@pytest.mark.slow
def test_finetuning_steps_have_no_host_sync_between_logging_steps(demo_root, tmp_path, monkeypatch):
    steps = 12
    cfg = _compose(
        "demo_phase", tmp_path, *small_demo_set(demo_root), "model.net.preset=tiny", "data.input_size=32",
        "data.num_frames=4", "data.batch_size=2", "test=false",
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0",
    )  # fmt: skip
    _assert_quiet(_fit_counting(cfg, steps, monkeypatch), steps)


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pretraining_step_does_not_synchronise():
    """Student + teacher + loss + backward + grad norm + non-finite guard + fused AdamW, bf16 autocast, on CUDA."""
    module = tiny_pretrain_module().cuda()
    opt = torch.optim.AdamW(module.student.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator("cuda").manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32, device="cuda")
    n = module.masking.num_masked(module.student.token_grid)
    assert n == MaskGenerator("tube", 0.5).num_masked(module.student.token_grid)

    def step() -> None:
        from surgvista.modules.nonfinite import mark_nonfinite_step, total_grad_norm

        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module._shared_step(video, gen)
        out["loss"].backward()
        norm = total_grad_norm([p.grad for p in module.student.parameters() if p.grad is not None])
        mark_nonfinite_step(opt, out["loss"].detach(), norm, skipped, consecutive)
        opt.step()
        opt.zero_grad(set_to_none=True)

    skipped, consecutive = torch.zeros((), device="cuda"), torch.zeros((), device="cuda")
    step()  # the first step makes the optimiser state and the cached constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert float(skipped) == 0.0
