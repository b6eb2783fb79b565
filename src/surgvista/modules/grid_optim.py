"""AdamW for a probe grid's stacked parameters (:class:`surgvista.models.probe_grid.ProbeGrid`).

Every parameter has a leading head axis K; a group's ``head_lr`` (K,) multiplies the group's ``lr`` (which the
schedule sets) and ``head_wd`` (K,) is each head's decoupled weight decay. Head k's slice is updated as
``torch.optim.AdamW`` updates a head trained alone with ``lr × head_lr[k]`` and ``head_wd[k]``: by default with
torch's own fused AdamW kernel run once per head on that head's slices for large heads, else (small heads, or
``fused=False``) with plain in-place tensor ops over all heads at once. A step with ``optimizer.found_inf`` > 0 (the
non-finite guard, :mod:`surgvista.modules.nonfinite`) changes nothing, decided on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

FUSED_MIN_PER_HEAD = 50_000  # measured on CPU: below it the K fused calls cost more than one vectorised update


class GridAdamW(torch.optim.Optimizer):
    """AdamW with a learning-rate factor and a weight decay per head (the leading axis of every parameter)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        for group in self.param_groups:
            if "head_lr" not in group or "head_wd" not in group:
                raise ValueError("GridAdamW: every parameter group needs head_lr and head_wd (ProbeGrid.param_groups)")
        self.fused = fused

    def _use_fused(self, params: list[torch.Tensor]) -> bool:
        """``fused=None``: the per-head fused kernel for heads of at least :data:`FUSED_MIN_PER_HEAD` parameters
        (K kernel calls pay off), else the plain tensor ops over all heads at once (a linear head's few weights)."""
        if self.fused is not None:
            return self.fused
        per_head = sum(p.numel() // len(p) for p in params)
        return hasattr(torch, "_fused_adamw_") and per_head >= FUSED_MIN_PER_HEAD

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        found = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and self._use_fused(params):
                self._fused_step(params, group, found)
            else:
                for p in params:
                    self._update(p, group, found)
        return loss

    def _fused_step(self, params: list[torch.Tensor], group: dict, found: torch.Tensor | None) -> None:
        """Torch's fused AdamW kernel (the one ``AdamW(fused=True)`` runs) once per head on that head's slices."""
        if not params:
            return
        states = [self.state[p] for p in params]
        for state, p in zip(states, params):
            if not state:
                state["step"] = torch.zeros(len(p), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        found = None if found is None else found.to(params[0].device, torch.float32)
        beta1, beta2 = group["betas"]
        for k, (lr, wd) in enumerate(zip(group["head_lr"].tolist(), group["head_wd"].tolist())):
            steps = [s["step"][k] for s in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(
                [p[k] for p in params], [p.grad[k] for p in params], [s["exp_avg"][k] for s in states],
                [s["exp_avg_sq"][k] for s in states], [], steps, lr=group["lr"] * lr, beta1=beta1, beta2=beta2,
                weight_decay=wd, eps=group["eps"], amsgrad=False, maximize=False, found_inf=found,
            )  # fmt: skip
            if found is not None:
                torch._foreach_sub_(steps, [found] * len(steps))

    def _update(self, p: torch.Tensor, group: dict, found: torch.Tensor | None) -> None:
        """In place, on the device: a bad step (``found`` > 0) multiplies every change by 0 (gradient zeroed first)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        ok = torch.ones((), device=p.device) if found is None else (found.to(p.device) <= 0).to(p.dtype)
        shape = (len(p),) + (1,) * (p.ndim - 1)
        lr = (group["lr"] * group["head_lr"].to(p.device, p.dtype)).view(shape) * ok
        wd = group["head_wd"].to(p.device, p.dtype).view(shape)
        beta1, beta2 = group["betas"]
        g, exp_avg, exp_avg_sq, step = (
            p.grad.nan_to_num_(0.0, 0.0, 0.0),
            state["exp_avg"],
            state["exp_avg_sq"],
            state["step"],
        )
        step.add_(ok)
        exp_avg.lerp_(g, (1 - beta1) * ok)
        exp_avg_sq.mul_(1 - (1 - beta2) * ok).addcmul_(g, g * ((1 - beta2) * ok))
        bias1 = 1 - beta1 ** step.clamp_min(1)
        bias2_sqrt = (1 - beta2 ** step.clamp_min(1)).sqrt()
        p.mul_(1 - lr * wd)
        denom = exp_avg_sq.sqrt().div_(bias2_sqrt).add_(group["eps"])
        p.sub_(exp_avg.div(denom).mul_(lr / bias1))
