"""Types and ranges of the public config knobs (:data:`RULES`), checked once on the composed config before anything
is built; keys absent from it (another experiment's knobs) are not checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from surgvista.utils.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """``kind`` int | float | str | bool; ``lo``/``hi`` bounds (``open`` excludes them); ``choices``; ``null`` ok."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    null: bool = False
    example: Any = None

    def describe(self) -> str:
        if self.choices:
            text = f"one of {list(self.choices)}"
        else:
            text = {"int": "an integer", "float": "a number"}.get(self.kind, f"a {self.kind}")
            if self.lo is not None and self.hi is not None:
                text += f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
        return text + (" or null" if self.null else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.choices:
            return value in self.choices
        if self.kind in ("int", "float"):
            ok_type = isinstance(value, int) if self.kind == "int" else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok_type or not math.isfinite(value):
                return False
            low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
            high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
            return low and high
        return isinstance(value, {"str": str, "bool": bool}[self.kind])


POSITIVE_INT = Rule("int", 1, example=8)
RATE = Rule("float", 0, 1, hi_open=True, example=0.1)
RULES: dict[str, Rule] = {
    "seed": Rule("int", null=True, example=0),
    "data.batch_size": POSITIVE_INT,
    "data.eval_batch_size": POSITIVE_INT,
    "data.num_workers": Rule("int", 0, example=4),
    "data.num_frames": POSITIVE_INT,
    "data.sampling_rate": POSITIVE_INT,
    "data.input_size": Rule("int", 16, example=224),
    "data.num_clips_per_video": POSITIVE_INT,
    "data.min_video_frames": POSITIVE_INT,
    "data.val_anchor_stride": POSITIVE_INT,
    "data.prefetch_factor": Rule("int", 1, null=True, example=2),
    "data.on_bad_video": Rule("str", choices=("error", "skip"), example="skip"),
    "data.backend": Rule("str", choices=("decord", "pyav", "torchcodec", "torchcodec-cuda"), example="pyav"),
    "data.allow_leakage": Rule("bool", example=False),
    "allow_geometry_change": Rule("bool", example=False),
    "model.base_lr": Rule("float", 0, lo_open=True, example=1.5e-4),
    "model.min_lr": Rule("float", 0, example=1e-6),
    "model.warmup_epochs": Rule("float", 0, example=5),
    "model.weight_decay": Rule("float", 0, example=0.05),
    "model.layer_decay": Rule("float", 0, 1, lo_open=True, example=0.75),
    "model.lr_scale_batch": POSITIVE_INT,
    "model.mixup": Rule("float", 0, example=0.8),
    "model.cutmix": Rule("float", 0, example=1.0),
    "model.label_smoothing": RATE,
    "model.teacher_every_k": POSITIVE_INT,
    "model.recon_every_n_steps": Rule("int", 0, example=500),
    "model.decoder_mask_ratio": Rule("float", choices=(0, 0.25, 0.5, 0.75), null=True, example=0.5),
    "model.masking.ratio": Rule("float", 0, 1, lo_open=True, hi_open=True, example=0.85),
    "model.masking.kind": Rule("str", choices=("tube", "random"), example="tube"),
    "model.loss.pixel_weight": Rule("float", 0, example=1.0),
    "model.loss.distill_weight": Rule("float", 0, example=0.05),
    "model.student.drop_path_rate": RATE,
    "model.net.drop_path_rate": RATE,
    "model.net.num_classes": POSITIVE_INT,
    "trainer.max_epochs": Rule("int", -1, null=True, example=10),
    "trainer.max_steps": Rule("int", -1, null=True, example=1000),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.gradient_clip_val": Rule("float", 0, null=True, example=1.0),
    "trainer.log_every_n_steps": POSITIVE_INT,
}


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first knob of ``cfg`` that is unset (``???``) or breaks its rule."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        raise ConfigError(f"{missing[0]} must be set: add the override {missing[0]}=<value> to the command line")
    for key, rule in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]})") from None
        if isinstance(value, str) and value == "__absent__":
            continue
        if not rule.accepts(value):
            raise ConfigError(f"{key}={value!r}: expected {rule.describe()} (e.g. override {key}={rule.example!s})")


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (nothing is resolved: ``${hydra:...}`` may be unset here)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _missing(v, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "???" else []
