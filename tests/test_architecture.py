"""The package's layering rules (docs/architecture.md), checked on the source: an AST walk over src/surgvista that
counts every import, function-level ones included. Each rule is also shown failing on a deliberately wrong module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "surgvista"
MAX_FUNCTION_LINES = 60
VOCABULARY = "surgvista.data.vocab"  # label names: the one module of data/ that metrics/ may read

# part of the package -> parts it must not import (a part is the first folder or module under surgvista/)
FORBIDDEN = {
    "data": {"models", "checkpoints", "features", "modules", "metrics", "callbacks", "evaluation", "cli"},
    "models": {"data", "modules", "features", "callbacks", "evaluation", "cli"},
    "layers": {"models", "data", "modules", "features", "callbacks", "evaluation", "cli", "checkpoints", "metrics"},
    # the layers above, as docs/architecture.md draws them (cli is covered by its own rule below)
    "checkpoints": {"data", "features", "modules", "metrics", "callbacks", "evaluation", "run", "strategies"},
    "features": {"modules", "metrics", "callbacks", "evaluation", "run", "strategies"},
    "callbacks": {"modules", "evaluation", "run", "features"},
    "strategies": {"data", "features", "modules", "callbacks", "evaluation", "run"},
    "evaluation": {"modules", "run", "features"},
    "modules": {"run", "strategies"},
    # online phase recognition: plain nn.Modules and the data's transforms, never the Lightning side
    "streaming": {"modules", "run", "cli", "callbacks", "strategies", "stages"},
}
MODELS_FROM_CHECKPOINTS = "surgvista.models.presets"  # export reads the named presets (plain data, no torch)
ONLY_ALLOWED = {"utils": {"utils"}, "metrics": {"metrics", "utils"}}  # part -> the only parts it may import


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ("surgvista", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """``surgvista.data.manifest`` -> ``data``; ``surgvista.run`` -> ``run``; ``surgvista`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """Every ``surgvista`` import in the file, anywhere in it: (module, imported names, line)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "surgvista"]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            if target.split(".")[0] == "surgvista":
                found.append((target, [a.name for a in node.names], node.lineno))
    return found


def is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def is_launcher(tree: ast.Module) -> bool:
    """``python -m surgvista.<command>``: a docstring, ``from surgvista.cli.<command> import main`` and the call."""
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    imports = [n for n in body if isinstance(n, ast.ImportFrom)]
    return (
        len(body) == 2
        and len(imports) == 1
        and (imports[0].module or "").startswith("surgvista.cli.")
        and [a.name for a in imports[0].names] == ["main"]
    )


def import_violations(module: str, imports: list[tuple[str, list[str], int]], launcher: bool) -> list[str]:
    part, out = part_of(module), []
    for target, names, line in imports:
        where, dest = f"{module}:{line}", part_of(target)
        if dest == part or target == "surgvista":
            pass
        elif part == "checkpoints" and dest == "models" and target != MODELS_FROM_CHECKPOINTS:
            out.append(f"{where}: checkpoints/ may read only {MODELS_FROM_CHECKPOINTS} of models/, not {target}")
        elif dest in FORBIDDEN.get(part, ()) and not (part == "metrics" and target == VOCABULARY):
            out.append(f"{where}: {part}/ must not import {target}")
        elif part in ONLY_ALLOWED and dest not in ONLY_ALLOWED[part] and target != VOCABULARY:
            out.append(f"{where}: {part}/ may import only {sorted(ONLY_ALLOWED[part])}, not {target}")
        if dest == "cli" and part != "cli" and not launcher:
            out.append(f"{where}: only cli/ (and the python -m launchers) may import {target}")
        if target != module:
            out += [f"{where}: imports the private {n} of {target}" for n in names if n.startswith("_") and n[1] != "_"]
    return out


def source_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every rule this one file breaks, one line each (``module:line: what``)."""
    tree = ast.parse(source)
    launcher = is_launcher(tree)
    out = import_violations(module, imported_modules(tree, module, is_package), launcher)
    in_cli = part_of(module) in ("cli", "bench")
    if not in_cli and not launcher:
        out += [f"{module}:{n.lineno}: `if __name__ == '__main__'` outside cli/" for n in tree.body if is_main_guard(n)]
        if module.endswith(".__main__"):
            out.append(f"{module}: a __main__ module outside cli/ that is not a launcher")
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{module}:{node.lineno}: {node.name} has {length} lines (at most {MAX_FUNCTION_LINES})")
    return out


def package_violations(root: Path = SRC) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        out += source_violations(module_name(path, root), path.read_text(), path.name == "__init__.py")
    return out


def test_the_package_keeps_its_layering_rules():
    violations = package_violations()
    assert not violations, "\n".join(violations)


WRONG = [  # (module, source, the violation it must produce)
    ("surgvista.data.manifest", "from surgvista.models.student import SurgVISTAStudent\n", "data/ must not import"),
    (
        "surgvista.data.readers",
        "def read():\n    from surgvista.checkpoints.read import torch_load\n",
        "data/ must not import surgvista.checkpoints.read",
    ),
    ("surgvista.utils.io", "import surgvista.data.manifest\n", "utils/ may import only"),
    ("surgvista.layers.vit", "from surgvista.models import presets\n", "layers/ must not import"),
    ("surgvista.models.student", "from surgvista.modules.objective import x\n", "models/ must not import"),
    ("surgvista.metrics.phase", "from surgvista.data.manifest import read_manifest\n", "metrics/ may import only"),
    ("surgvista.run", "from surgvista.cli.train import main\n", "only cli/"),
    ("surgvista.evaluation.plots", "from surgvista.modules.finetune import PhaseModule\n", "evaluation/ must not"),
    ("surgvista.checkpoints.load", "from surgvista.models.student import SurgVISTAStudent\n", "may read only"),
    ("surgvista.run", "from surgvista.data.demo import _private_helper\n", "imports the private _private_helper"),
    ("surgvista.data.shards", "def main():\n    pass\n\nif __name__ == '__main__':\n    main()\n", "outside cli/"),
    ("surgvista.data.demo", "def f():\n" + "    x = 1\n" * 60, "f has 61 lines"),
]


@pytest.mark.parametrize(("module", "source", "expected"), WRONG, ids=[w[2].split()[-1] for w in WRONG])
def test_a_deliberately_wrong_module_is_caught(module, source, expected):
    violations = source_violations(module, source)
    assert any(expected in v for v in violations), violations


def test_allowed_imports_pass():
    ok = [
        ("surgvista.metrics.triplet", f"from {VOCABULARY} import CHOLECT50_IVT\nfrom surgvista.utils.io import x\n"),
        ("surgvista.models.teacher", "def load():\n    from surgvista.checkpoints.read import torch_load\n"),
        (
            "surgvista.cli.score",
            "from surgvista.evaluation.scoring import score_phase\nif __name__ == '__main__':\n    main()\n",
        ),
        (
            "surgvista.score",
            '"""launcher"""\nfrom surgvista.cli.score import main\n\nif __name__ == "__main__":\n'
            "    raise SystemExit(main())\n",
        ),
        ("surgvista.data.manifest", "from surgvista.data.adapters import REGISTRY\nfrom surgvista import __version__"),
    ]
    for module, source in ok:
        assert source_violations(module, source) == [], module
