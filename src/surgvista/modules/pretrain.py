"""``PretrainModule``: SurgVISTA masked video pre-training with image-expert distillation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from surgvista.callbacks.progress import show_on_bar
from surgvista.evaluation.reconstruction import labelled_panel, log_image, reconstruction_panel
from surgvista.layers.masking import DecoderMask, MaskGenerator, positions_mask, token_order
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.models.video_teacher import VideoTeacher
from surgvista.modules.jepa import LatentPrediction, init_from_vjepa
from surgvista.modules.nonfinite import NonFiniteGuardMixin, total_grad_norm
from surgvista.modules.objective import SurgVISTALoss
from surgvista.modules.schedule import adamw_warmup_cosine

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Reference decay/no-decay split: 1-D tensors, ``*.bias`` and exact ``no_weight_decay()`` names skip decay.

    Frozen parameters (the sin-cos tables) are left out. ``mask_token_img/vid`` do *not* match ``mask_token``
    exactly and so are decayed, as in the reference.
    """
    from timm.optim import param_groups_weight_decay  # the same rule: ndim <= 1, *.bias, fnmatch on exact names

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    by_decay = {g["weight_decay"] != 0: g["params"] for g in groups}
    # Always [decay, no_decay], as before: the optimiser-state order of existing checkpoints stays valid.
    return [
        {"params": by_decay.get(True, []), "weight_decay": weight_decay},
        {"params": by_decay.get(False, []), "weight_decay": 0.0},
    ]


IMAGE_BRANCH = ("down_img.", "decoder_img.", "mask_token_img")


class PretrainModule(NonFiniteGuardMixin):
    """Student + frozen teacher + masking + loss, AdamW with linear warm-up and cosine decay per step.

    ``lr = base_lr × global_batch / lr_scale_batch`` with
    ``global_batch = batch_size × clips_per_sample × accumulate × world`` (``clips_per_sample`` = the loader's
    ``num_clips_per_video``: each loader sample gives that many clips, the reference's ``num_sample``).

    ``latent`` adds the V-JEPA latent-prediction loss (:mod:`surgvista.modules.jepa`): alone with an encoder-only
    student (``model=vjepa``) or beside the pixel and distillation losses (``model=surgvista_jepa``);
    ``init_from`` then loads a V-JEPA 2 checkpoint (HF folder or hub ``.pt``) into the student, target and predictor.

    Speed knobs (``grad_checkpointing``, ``compile``/``compile_kwargs``, ``teacher_every_k``, FSDP2 per block
    under ``ModelParallelStrategy``) are described in docs/performance.md; non-finite steps are skipped and counted
    (:mod:`surgvista.modules.nonfinite`). ``decoder_mask_ratio`` (0.25/0.5/0.75; ``None``: off) turns on VideoMAE V2
    dual masking of the pixel decoder (:class:`~surgvista.layers.masking.DecoderMask`).
    """

    def __init__(
        self,
        student: SurgVISTAStudent,
        teacher: ImageTeacher | VideoTeacher | None,
        loss: SurgVISTALoss,
        masking: MaskGenerator,
        batch_size: int,
        clips_per_sample: int = 1,
        base_lr: float = 1.5e-4,
        min_lr: float = 1e-4,
        warmup_epochs: float = 40,
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1e-8,
        lr_scale_batch: int = 256,
        recon_every_n_steps: int = 0,
        recon_frames: int = 4,
        grad_checkpointing: bool | None = None,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        teacher_every_k: int = 1,
        max_consecutive_nonfinite: int = 10,
        nonfinite_check_every: int | None = None,
        latent: LatentPrediction | None = None,
        init_from: str | None = None,
        decoder_mask_ratio: float | None = None,
    ) -> None:
        super().__init__()
        if teacher_every_k < 1:
            raise ValueError(f"model.teacher_every_k must be >= 1, got {teacher_every_k}")
        # logger=False: the run logs the whole config once (surgvista.run.log_hyperparameters)
        self.save_hyperparameters(ignore=["student", "teacher", "loss", "masking", "latent"], logger=False)
        self.student, self.teacher, self.loss, self.masking = student, teacher, loss, masking
        self.latent = latent
        self._set_up_latent(init_from)
        if grad_checkpointing is not None:
            for network in (student, latent.predictor if latent is not None else None):
                if network is not None:
                    network.set_grad_checkpointing(grad_checkpointing)
        self._check_teacher()
        # Dual masking (VideoMAE V2): the pixel decoder reconstructs a running-cell subset of the masked tokens.
        self.decoder_masking = DecoderMask(decoder_mask_ratio) if decoder_mask_ratio else None
        if self.decoder_masking is not None and student.decoder_vid is None:
            raise ValueError("model.decoder_mask_ratio needs the pixel decoder (model.student.pixel_decoder=true)")
        self._configured = False
        self._init_guard(max_consecutive_nonfinite, nonfinite_check_every)
        # The teacher is never saved (ImageTeacher.state_dict is empty): do not ask checkpoints for it.
        self.register_load_state_dict_post_hook(self._ignore_missing_teacher_keys)
        self._mask_rng: torch.Generator | None = None
        self._mask_rng_state: torch.Tensor | None = None  # restored state, applied when the generator is made
        self._block_rng: torch.Generator | None = None  # V-JEPA multi-block masks, drawn on the host
        self._block_rng_state: torch.Tensor | None = None
        self._last_recon_step = -1

    @staticmethod
    def _ignore_missing_teacher_keys(module: nn.Module, keys) -> None:
        keys.missing_keys[:] = [k for k in keys.missing_keys if not k.startswith("teacher.")]

    def _set_up_latent(self, init_from: str | None) -> None:
        """Check that there is a loss; build the latent objective's predictor and target, load ``init_from``."""
        s, latent = self.student, self.latent
        if s.decoder_img is None and s.decoder_vid is None and latent is None:
            raise ValueError("the student has no decoder and model.latent is null: there is no loss to train")
        if init_from and latent is None:
            raise ValueError("model.init_from loads V-JEPA 2 weights and needs model.latent (model=vjepa)")
        if latent is not None:
            latent.attach(s)
            if init_from:
                init_from_vjepa(init_from, s, latent)

    def _check_teacher(self) -> None:
        s = self.student
        if s.decoder_img is None:
            return
        if self.teacher is None:
            raise ValueError("student.image_decoder=true needs a teacher; set model.teacher or disable the decoder")
        want = (s.token_grid[0] * s.token_grid[1] * s.token_grid[2], s.decoder_img.head.out_features)
        frames = s.num_frames // self.teacher.frame_stride
        have = (frames * self.teacher.tokens_per_frame, self.teacher.embed_dim)
        grid = getattr(self.teacher, "token_grid", None)  # a video teacher: the same tubes, not just as many
        grids = f" (token grids: teacher {tuple(grid)}, student {s.token_grid})" if grid is not None else ""
        if want != have or (grid is not None and tuple(grid) != tuple(s.token_grid)):
            raise ValueError(
                f"teacher gives {have[0]} tokens of width {have[1]} but the student expects {want[0]} of width "
                f"{want[1]}{grids}: match model.teacher (preset, img_size, patch_size, frame_stride) with "
                "model.student (img_size, num_frames, tubelet_size, teacher_dim)"
            )

    # ------------------------------------------------------------------------------ model / devices
    def configure_model(self) -> None:
        """FSDP2 ``fully_shard`` per block under ``ModelParallelStrategy``; ``torch.compile`` per block if asked."""
        if self._configured:
            return
        self._configured = True
        if self.latent is not None and self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError("model.latent (V-JEPA) runs under DDP or FSDP2 (trainer=ddp or trainer=fsdp2), not "
                             "FSDP1 (trainer=fsdp): its EMA target is updated on FSDP2's local shards")
        if self.device_mesh is not None:
            self._fully_shard(self.device_mesh)
        if self.hparams.compile:
            for module in self._networks():
                for blk in self._blocks(module):
                    blk.compile(**(self.hparams.compile_kwargs or {}))

    def _networks(self) -> list[nn.Module]:
        """The student, the teacher, the predictor and the target encoder (those that exist)."""
        latent = self.latent
        found = [self.student, self.teacher] + ([latent.predictor, latent.target] if latent is not None else [])
        return [m for m in found if m is not None]

    def _fully_shard(self, mesh) -> None:
        """FSDP2 units: every block, then each network's root (the replicated teacher is left alone)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names else mesh
        kw = {"mesh": dp_mesh}
        if str(self.trainer.precision).startswith("bf16"):
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        sharded = [m for m in self._networks() if m is not self.teacher or self.teacher.shard]
        for module in sharded:
            for blk in self._blocks(module):
                fully_shard(blk, **kw)
            fully_shard(module, **kw)  # the root unit: __call__ (and encode, below) run the gather hooks
        for encoder in (self.student, self.latent.target if self.latent is not None else None):
            if encoder is not None:
                register_fsdp_forward_method(encoder, "encode")
        log.info(
            "FSDP2: fully_shard on %d student blocks and the student root over a data-parallel mesh of %d ranks "
            "(%d networks sharded in all); teacher %s", len(self._blocks(self.student)), dp_mesh.size(), len(sharded),
            "sharded" if self.teacher is not None and self.teacher.shard else "replicated",
        )

    @staticmethod
    def _blocks(module: nn.Module | None) -> list[nn.Module]:
        """Every transformer block (``…blocks.<i>``: ours, timm's, the predictor's) inside ``module``, in order."""
        if module is None:
            return []
        parts = ((name.split("."), m) for name, m in module.named_modules())
        return [m for p, m in parts if len(p) > 1 and p[-2].endswith("blocks") and p[-1].isdigit()]

    def on_fit_start(self) -> None:
        self._teacher_to_device()
        if self.teacher is not None:  # the frozen teacher is in eval mode by design: exactly that warning is noise
            n = sum(1 for _ in self.teacher.modules())
            warnings.filterwarnings("ignore", message=rf"Found {n} module\(s\) in eval mode at the start of training")

    def on_validation_start(self) -> None:
        self._teacher_to_device()

    def _teacher_to_device(self) -> None:
        # FSDP (FSDPStrategy) ignores the replicated teacher, so it does not move it to the GPU.
        if self.teacher is not None and self._trainer is not None:
            self.teacher.to(self.trainer.strategy.root_device)

    # ----------------------------------------------------------------------------------------- steps
    def decoder_positions(
        self, mask: torch.Tensor, num_masked: int, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """Dual masking: positions ``(B, K)`` of the masked tokens the pixel decoder reconstructs; ``None`` when off
        (no random numbers drawn then, so the masks are those of a run without the knob)."""
        if self.decoder_masking is None:
            return None
        masked = token_order(mask, num_masked)[1]
        return self.decoder_masking(masked, self.student.token_grid, generator)

    def _run_teacher(self) -> bool:
        """Whether this optimiser step computes distillation targets (every ``teacher_every_k``-th step)."""
        k = self.hparams.teacher_every_k
        return k == 1 or not self.training or self.global_step % k == 0

    def _shared_step(
        self, video: torch.Tensor, generator: torch.Generator | None, block_rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        s = self.student
        if s.decoder_img is None and s.decoder_vid is None:  # encoder-only student: latent prediction alone
            zero = video.new_zeros((), dtype=torch.float32)
            out = {"loss": zero, "mask": None, "pixel_pred": None}
        else:
            out = self._masked_reconstruction(video, generator)
        if self.latent is not None:
            masks = [m._replace(context=m.context.to(video.device), target=m.target.to(video.device))
                     for m in self.latent.masks(video.shape[0], s.token_grid, block_rng)]
            out.update(self.latent(s, video, masks))
            out["loss"] = out["loss"] + self.latent.weight * out["loss_latent"]
        return out

    def _masked_reconstruction(self, video: torch.Tensor, generator: torch.Generator | None) -> dict:
        """The SurgVISTA losses (pixel reconstruction and image distillation) under a tube mask."""
        s = self.student
        mask = self.masking(video.shape[0], s.token_grid, video.device, generator)
        n_masked = self.masking.num_masked(s.token_grid)  # known on the host: no device sync to select tokens
        decoded = self.decoder_positions(mask, n_masked, generator)  # dual masking; None when off
        image_pred, pixel_pred = s(video, mask, n_masked, decoded)
        distill = image_pred is not None and self._run_teacher()
        targets = (image_pred, self.teacher(video)) if distill else (None, None)
        out = self.loss(video, mask, pixel_pred, *targets, s.tubelet_size, s.patch_size, n_masked, decoded)
        k = self.hparams.teacher_every_k
        if distill and k > 1 and self.training:
            # k× the distillation weight on the steps that run the teacher: the expected gradient is unchanged.
            out["loss"] = out["loss"] + (k - 1) * self.loss.distill_weight * out["loss_distill"]
        elif image_pred is not None and not distill:
            # No distillation this step: keep the image branch in the graph with a zero loss (DDP needs every
            # parameter to get a gradient); its gradients are dropped before the optimiser step.
            out["loss"] = out["loss"] + 0.0 * image_pred.float().sum()
        out.update(mask=mask, pixel_pred=pixel_pred, decoded=decoded)
        return out

    def _log_losses(self, out: dict[str, torch.Tensor], stage: str, batch_size: int) -> None:
        on_step = stage == "train"
        for name in self._loss_names():
            self.log(
                f"{stage}/{name}", out[name].detach(), on_step=on_step, on_epoch=True,
                prog_bar=name == "loss" and not on_step, sync_dist=not on_step, batch_size=batch_size,
            )

    def _loss_names(self) -> list[str]:
        s, names = self.student, ["loss"]
        if s.decoder_vid is not None:
            names.append("loss_pixel")
        if s.decoder_img is not None:
            names.append("loss_distill")
        return names + (["loss_latent", "target_std"] if self.latent is not None else [])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        if self._mask_rng is None or self._mask_rng.device != video.device:
            self._mask_rng = self._rank_generator(video.device, 0, self._mask_rng_state)
            self._mask_rng_state = None
        if self._block_rng is None:
            self._block_rng = self._rank_generator(torch.device("cpu"), 104729, self._block_rng_state)
            self._block_rng_state = None
        out = self._shared_step(video, self._mask_rng, self._block_rng)
        self._remember_loss(out["loss"])
        self._log_losses(out, "train", video.shape[0])
        show_on_bar(self, loss=out["loss"].detach(), lr=self.optimizers().param_groups[0]["lr"])
        every, step = self.hparams.recon_every_n_steps, self.global_step
        if every and step % every == 0 and step != self._last_recon_step and out["pixel_pred"] is not None:
            self._last_recon_step = step  # once per optimiser step, also under gradient accumulation
            self._log_reconstruction(video, out, "train")
        return out["loss"]

    def _rank_generator(self, device: torch.device, offset: int, state: torch.Tensor | None) -> torch.Generator:
        """A generator seeded per rank (distinct masks even when every rank was seeded alike), or restored."""
        generator = torch.Generator(device)
        generator.manual_seed((torch.initial_seed() + offset + 7919 * self.global_rank) % 2**63)
        if state is not None:
            generator.set_state(state)
        return generator

    def rng_states(self) -> dict[str, torch.Tensor]:
        """This rank's mask-generator states, for exact resume (:mod:`surgvista.callbacks.resume`)."""
        found = {"mask": self._mask_rng, "blocks": self._block_rng}
        return {name: gen.get_state() for name, gen in found.items() if gen is not None}

    def load_rng_states(self, states: dict[str, torch.Tensor]) -> None:
        self._mask_rng_state, self._block_rng_state = states.get("mask"), states.get("blocks")
        self._mask_rng = self._block_rng = None  # remade from the restored states at the next training step

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        video = batch["video"]
        gen = torch.Generator(video.device)
        gen.manual_seed(batch_idx)  # the same masks at every validation, so val/loss is comparable
        out = self._shared_step(video, gen, torch.Generator().manual_seed(batch_idx))
        self._log_losses(out, "val", video.shape[0])
        # One panel per validation (not the sanity check), the same clip and mask every time.
        wanted = self.hparams.recon_every_n_steps and not self.trainer.sanity_checking
        if batch_idx == 0 and wanted and out["pixel_pred"] is not None:
            self._log_reconstruction(video, out, "val")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._run_teacher():
            # teacher_every_k: the image branch had no loss this step, so it gets no update (AdamW skips None).
            for name, p in self.student.named_parameters():
                if name.startswith(IMAGE_BRANCH):
                    p.grad = None
        grads = [p.grad for p in self._trainable_parameters() if p.grad is not None]
        norm = None
        if grads:
            strategy = self.trainer.strategy
            fsdp1 = isinstance(strategy, FSDPStrategy) and strategy.world_size > 1 and str(
                strategy.sharding_strategy).rsplit(".", 1)[-1] in ("FULL_SHARD", "SHARD_GRAD_OP")
            norm = total_grad_norm(grads, fsdp1)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        self._guard_step(optimizer, norm)

    def _log_reconstruction(self, video: torch.Tensor, out: dict[str, torch.Tensor], stage: str) -> None:
        """Input / masked / reconstruction rows of the first clip, labelled with the stage, step and loss."""
        if self.global_rank != 0:
            return
        s = self.student
        mask = out["mask"][:1]
        if out.get("decoded") is not None:  # dual masking: the panel shows the tokens the pixel decoder rebuilt
            mask = positions_mask(out["decoded"][:1], mask.shape[1])
        panel = reconstruction_panel(
            video[0], mask[0], out["pixel_pred"][0].detach(), s.token_grid, s.tubelet_size,
            s.patch_size, self.loss.normalize_pixels, self.hparams.recon_frames,
        )
        caption = f"{stage} | step {self.global_step} | loss {float(out['loss'].detach()):.4f}"
        log_image(self.trainer.loggers, f"{stage}/reconstruction", labelled_panel(panel, caption), self.global_step,
                  self.trainer.default_root_dir)

    @torch.no_grad()
    def health_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled features ``(B, D)`` of the batch's clips for the health monitor: the target encoder's (before its
        LayerNorm) when there is one, else the student encoder's on the whole clip."""
        if self.latent is not None:
            return self.latent.encode_target(batch["video"]).mean(dim=1)
        return self.student.encode(batch["video"]).float().mean(dim=1)

    # ------------------------------------------------------------------------------------ optimiser
    def _trainable_parameters(self) -> list[nn.Parameter]:
        predictor = list(self.latent.predictor.parameters()) if self.latent is not None else []
        return list(self.student.parameters()) + predictor

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.student, hp.weight_decay)
        if self.latent is not None:  # the predictor after the student: the student's optimiser order is kept
            for group, extra in zip(groups, param_groups(self.latent.predictor, hp.weight_decay)):
                group["params"] = list(group["params"]) + list(extra["params"])
        return adamw_warmup_cosine(
            groups, self.trainer, hp.batch_size * hp.clips_per_sample,
            hp.base_lr, hp.min_lr, hp.lr_scale_batch, hp.warmup_epochs, hp.betas, hp.eps,
        )

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the EMA update of the target encoder (skipped with a skipped step)."""
        super().optimizer_step(*args, **kwargs)
        if self.latent is None:
            return
        optimizer = args[2] if len(args) > 2 else kwargs["optimizer"]
        momentum = self.latent.momentum(self.global_step, self.trainer.estimated_stepping_batches)
        skipped = getattr(optimizer, "found_inf", None)
        self.latent.update_target(self.student, momentum, skipped if isinstance(skipped, torch.Tensor) else None)
        self.log("train/ema_momentum", momentum, on_step=True, on_epoch=False)
