"""Types and ranges of the public config knobs (:data:`RULES`), checked once on the composed config before anything
is built; keys absent from it (another experiment's knobs) are not checked. Also checked there: every interpolation
resolves (:func:`check_interpolations`), clip geometry fits the patch grid (:func:`check_geometry`) and Lightning's
own choices (:func:`check_trainer`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationToMissingValueError, OmegaConfBaseException

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
    "data.backend": Rule("str", choices=("decord", "pyav", "torchcodec", "torchcodec-cuda", "memory"), example="pyav"),
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
    "test_ckpt": Rule("str", choices=("best", "last"), example="last"),
}
# Lightning's accepted ``Trainer(precision=...)`` values (lightning.fabric.connector's _PRECISION_INPUT; a test
# keeps them equal).
PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true")
PRECISIONS += ("64-true", "transformer-engine", "transformer-engine-float16")
# (size key, unit key) pairs of a model node: the clip must be a whole number of patches and tubelets.
GEOMETRY = (("img_size", "patch_size"), ("num_frames", "tubelet_size"))


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
    check_interpolations(cfg)
    check_trainer(cfg)
    check_geometry(cfg)


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, raw value)`` of every leaf of a plain container (list items as ``key.<i>``)."""
    if isinstance(node, dict):
        return [leaf for key, v in node.items() for leaf in _leaves(v, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)]


def check_interpolations(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose ``${...}`` refers to a key this config does not have
    (e.g. a callback of one data group's keys after ``data=<another group>``); other resolver failures (Hydra's
    ``${hydra:...}`` outside a Hydra run) are left to where the value is used."""
    for key, raw in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if not isinstance(raw, str) or "${" not in raw:
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_missing=True)
        except (InterpolationKeyError, InterpolationToMissingValueError) as e:
            missing = re.search(r"'([^']+)'", str(e))
            what = missing.group(1) if missing else str(e).splitlines()[0]
            parts = key.split(".")
            off = f" (or {parts[0]}.{parts[1]}=null)" if len(parts) > 2 and parts[0] in ("callbacks", "logger") else ""
            raise ConfigError(
                f"{key}={raw!r} refers to {what}, which is not set in this config (another data or model group?): "
                f"set {what} or override {key}{off}"
            ) from None
        except OmegaConfBaseException:
            continue


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (nothing is resolved: ``${hydra:...}`` may be unset here)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _missing(v, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "???" else []


def check_trainer(cfg: DictConfig) -> None:
    """Lightning's own choices where a typo is likely (``trainer.precision``, ``accelerator``, ``strategy``,
    ``devices``), named with the accepted values before the ``Trainer`` is built."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return
    accelerators = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    choices = {
        "precision": PRECISIONS,
        "accelerator": accelerators,
        "strategy": ("auto", *StrategyRegistry.available_strategies()),
    }
    for name, accepted in choices.items():
        value = OmegaConf.select(trainer, name, default=None, throw_on_resolution_failure=False)
        if value is None or isinstance(value, DictConfig):  # Lightning's default, or an object (_target_)
            continue
        if value not in accepted:
            raise ConfigError(f"trainer.{name}={value!r}: expected one of {list(accepted)}")
    devices = OmegaConf.select(trainer, "devices", default=None, throw_on_resolution_failure=False)
    if devices is not None and not _valid_devices(devices):
        raise ConfigError(
            f"trainer.devices={devices!r}: expected auto, a number of devices >= 1 (-1 = all), a list of device "
            "indices such as [0,1] or a string such as '0,1'"
        )


def _valid_devices(value: Any) -> bool:
    """What Lightning's ``Trainer(devices=...)`` accepts: ``auto``, an int >= 1 or -1, indices, "0,1" or "-1"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        return value == "auto" or re.fullmatch(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*", value) is not None
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    return False


def check_geometry(cfg: DictConfig) -> None:
    """Every model node holding a size and its unit (``img_size``/``patch_size``, ``num_frames``/
    ``tubelet_size``) divides evenly; the error names the key the size comes from (e.g. ``data.input_size``)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in _leaves(raw):
        for size_key, unit_key in GEOMETRY:
            if not key.endswith(f".{size_key}") or key.startswith("data."):
                continue
            node = key[: -len(size_key) - 1]
            size = _int_at(cfg, key)
            unit = _int_at(cfg, f"{node}.{unit_key}")
            if size is None or unit is None or unit < 1 or size % unit == 0:
                continue
            source = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
            culprit = source.group(1) if source else key
            via = f" ({key} = ${{{culprit}}})" if source else ""
            raise ConfigError(
                f"{culprit}={size}: expected a multiple of {node}.{unit_key}={unit}{via}, e.g. {culprit}="
                f"{max(unit, size // unit * unit)}"
            )


def _int_at(cfg: DictConfig, key: str) -> int | None:
    """The resolved value at ``key`` when it is an int, else ``None`` (absent, unresolvable or another type)."""
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
    except OmegaConfBaseException:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
