"""``surgvista-ablation`` / ``python -m surgvista.ablation``: the objectives' ablation (docs/objectives.md#ablation).

``surgvista-ablation [--config proxy] [--out DIR] [key=value ...]`` reads ``conf/ablation/<config>.yaml`` (edited by
the ``key=value`` pairs, e.g. ``seeds=[0] only=[random_init,videomae]``), generates the data if asked, trains the
stage-0 teacher, pre-trains every objective with every seed, probes (frozen) and fine-tunes each student, then
writes ``ablation.{md,json,png}`` in the output folder; its last line names the table. A rerun with the same
output folder reuses every finished stage (``stage.json``) and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from surgvista.cli.common import user_errors
from surgvista.data.demo import DemoSet
from surgvista.evaluation.ablation import ablation_result, run_folder, write_ablation
from surgvista.evaluation.color_baseline import color_baseline
from surgvista.metrics.bootstrap import seeds_videos_interval
from surgvista.stages import Stage, compose_stage, run_stages
from surgvista.utils.config_dirs import primary_config_path
from surgvista.utils.errors import ConfigError
from surgvista.utils.io import atomic_write_text


def load_ablation_config(config: str, edits: list[str]) -> DictConfig:
    """``conf/ablation/<config>.yaml`` (or a YAML path) with the ``key=value`` edits merged in."""
    primary = primary_config_path()
    root = resources.files(primary.removeprefix("pkg://")) if primary.startswith("pkg://") else Path(primary)
    path = Path(config) if config.endswith(".yaml") else Path(str(root / "ablation" / f"{config}.yaml"))
    if not path.is_file():
        raise ConfigError(f"--config {config}: no ablation config {path}")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(edits))
    unknown = sorted(set(cfg.only or []) - set(cfg.objectives))
    if unknown:
        known = list(cfg.objectives)
        raise ConfigError(f"only={list(cfg.only)}: unknown objective(s) {unknown}; expected some of {known}")
    return cfg


def quoted(path: Path | str | None) -> str:
    """A path as a Hydra override value (``null`` for none)."""
    return "null" if path is None else "'" + str(path).replace("'", "\\'") + "'"


def objective_names(cfg: DictConfig) -> list[str]:
    """The objectives to run, in the config's order (``only`` selects some)."""
    return [n for n in cfg.objectives if not cfg.only or n in cfg.only]


def encoder_ckpt(cfg: DictConfig, out: Path, name: str, seed: int) -> Path | None:
    """The pre-trained student of ``name`` and ``seed`` (``None`` for random init)."""
    if cfg.objectives[name].get("model") is None:
        return None
    return run_folder(out, "pretrain", name, seed) / "checkpoints" / "last.ckpt"


def pretrain_stages(cfg: DictConfig, shared: list[str], teacher: Path | None) -> list[Stage]:
    """One pre-training per objective (but random init) and seed; the distilling ones read ``teacher``."""
    stages = []
    for name in objective_names(cfg):
        spec = cfg.objectives[name]
        if spec.get("model") is None:
            continue
        if spec.get("teacher") and teacher is None:
            raise ConfigError(f"objective {name} distils: set teacher (stage 0) or teacher_ckpt in the ablation config")
        extra = [f"model.teacher.ckpt={quoted(teacher)}"] if spec.get("teacher") else []
        for seed in cfg.seeds:
            overrides = [f"experiment={cfg.pretrain.experiment}", f"model={spec.model}", *shared, f"seed={seed}"]
            overrides += [*cfg.pretrain.overrides, *extra]
            stages.append(Stage(str(run_folder(Path(), "pretrain", name, seed)), tuple(overrides)))
    return stages


def evaluation_stages(cfg: DictConfig, out: Path, shared: list[str], data_root: Path) -> list[Stage]:
    """Every probe and the few-video fine-tuning of each objective's encoder (random init: seeded init)."""
    stages = []
    for name in objective_names(cfg):
        spec = cfg.objectives[name]
        for seed in cfg.seeds:
            ckpt = quoted(encoder_ckpt(cfg, out, name, seed))
            for protocol, probe in cfg.probes.items():
                overrides = [f"experiment={probe.experiment}", *shared, f"seed={seed}", f"backbone_name={name}"]
                overrides += [f"backbone.ckpt={ckpt}", f"++backbone.seed={seed}", *probe.overrides]
                overrides += [*spec.get("backbone", [])]
                if cfg.data.get("generate"):
                    overrides.append(f"data.cache_root={quoted(data_root / 'features')}")
                stages.append(Stage(str(run_folder(Path(), protocol, name, seed)), tuple(overrides)))
            ft = cfg.finetune
            overrides = [f"experiment={ft.experiment}", *shared, *spec.get("finetune", []), f"seed={seed}"]
            overrides += [f"model.ckpt={ckpt}", *ft.overrides]
            stages.append(Stage(str(run_folder(Path(), "finetune", name, seed)), tuple(overrides)))
    return stages


def data_root_and_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """``(paths.data_dir/<data.root>, paths.log_dir)`` as train.py resolves them."""
    probe = compose_stage([f"experiment={cfg.pretrain.experiment}", *cfg.common], Path.cwd())
    return Path(probe.paths.data_dir) / cfg.data.root, Path(probe.paths.log_dir)


def colour_baselines(cfg: DictConfig, data_root: Path, out: Path) -> dict:
    """The colour-histogram baseline's per-video accuracy on the test videos (cached in ``out``) and chance."""
    cache = out / "color_baseline.json"
    if not cache.is_file():
        result = color_baseline(data_root / "train.jsonl", data_root / "val.jsonl")
        atomic_write_text(cache, json.dumps(result.as_dict(), indent=1))
    result = json.loads(cache.read_text())
    colour = seeds_videos_interval([[100 * a for a in result["video_accuracies"]]]).as_dict()
    chance = 100 * result["uniform_chance"]
    return {"colour histogram (logreg)": colour, "chance (uniform)": {"value": chance, "lo": chance, "hi": chance}}


def plan(cfg: DictConfig, out: Path, data_root: Path) -> list[Stage]:
    """Every stage in order: stage 0 (when configured), the pre-trainings, then the probes and fine-tunings."""
    shared = [*cfg.common, *cfg.data.overrides]
    if cfg.data.get("generate"):
        shared.append(f"data.root={quoted(data_root)}")
    teacher = Path(cfg.teacher_ckpt) if cfg.get("teacher_ckpt") else None
    stages = []
    if cfg.get("teacher"):
        teacher = out / "teacher" / "teacher.pth"
        stages.append(Stage("teacher", (f"experiment={cfg.teacher.experiment}", *shared, *cfg.teacher.overrides)))
    return stages + pretrain_stages(cfg, shared, teacher) + evaluation_stages(cfg, out, shared, data_root)


def run_ablation(cfg: DictConfig, out: Path | None, name: str = "proxy") -> Path:
    """Every stage of the ablation, then its table (default folder ``<paths.log_dir>/ablation/<name>``)."""
    data_root, log_dir = data_root_and_paths(cfg)
    out = Path(out or log_dir / "ablation" / name).resolve()
    if cfg.data.get("generate"):
        g = cfg.data.generate
        frames, size = g.get("frames", (300, 420)), g.get("size", (160, 128))
        DemoSet(data_root, g.videos, g.val_videos, tuple(frames), tuple(size), g.seed, g.variant).generate()
    run_stages(plan(cfg, out, data_root), out)
    baselines = colour_baselines(cfg, data_root, out) if cfg.data.get("generate") else {}
    protocols = [*cfg.probes, "finetune"]
    result = ablation_result(out, objective_names(cfg), list(cfg.seeds), protocols, cfg.metric)
    return write_ablation(result, out, baselines)


def main(argv: list[str] | None = None) -> int:
    """``surgvista-ablation``: 0 when done; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = argparse.ArgumentParser(prog="surgvista-ablation", description=__doc__.split("\n")[2])
    parser.add_argument("--config", default="proxy", help="conf/ablation/<name>.yaml or a YAML file")
    parser.add_argument("--out", default=None, help="output folder (default: <paths.log_dir>/ablation/<config>)")
    parser.add_argument("edits", nargs="*", help="key=value edits of the ablation config, e.g. seeds=[0]")
    args = parser.parse_args(argv)
    with user_errors():
        cfg = load_ablation_config(args.config, args.edits)
        table = run_ablation(cfg, Path(args.out) if args.out else None, Path(args.config).stem)
        print(table.read_text())
        print(f"ablation: {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
