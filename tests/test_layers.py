"""The package's imports run one way: no module imports one of a higher layer.

Read from the source with ``ast`` (nothing is imported or executed), so that lazy imports
inside functions count too: they run one day, and a lower layer that reaches up is a cycle in
waiting. The layer order is :data:`LAYERS`, the one table; CONTRIBUTING.md shows the same
order and a test below keeps the two equal. import-linter's "layers" contract does the same
job; fifty lines of ``ast`` avoid a dependency for it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "supernet_kernels"

# Top-level modules and packages of supernet_kernels, bottom layer first. A module may import
# its own layer and those below it. The package's __init__ (the public facade) may import all.
LAYERS: tuple[tuple[str, ...], ...] = (
    # support: stdlib and torch only (file I/O, native library, backend choice, dispatch
    # tables, tile tuning, timers)
    (
        "_direct_reads",
        "_io",
        "_native",
        "_version",
        "backends",
        "compile",
        "config_files",
        "dispatch",
        "planning",
        "registry",
        "timing",
        "tuning",
    ),
    ("quant",),  # numerics: the packing format, quantizers, fake quantization
    ("kernels",),  # Triton kernels and launchers
    ("ops",),  # torch.library registrations
    ("nn",),  # layers
    ("supernet", "transform"),  # model conversion: supernets, whole-model quantization
    ("cost",),  # cost model and latency tables
    ("recipes", "search", "train"),
    ("cli", "quickstart"),  # entry points
)

# Deprecated names kept importable from a lower layer: a module-level ``__getattr__`` (PEP 562)
# resolves them on first use, so loading the module imports nothing above it. Only these
# (module, imported module) pairs may reach up, and only from inside ``__getattr__``.
DEPRECATED_ALIASES = {
    ("supernet_kernels.quant", "supernet_kernels.transform"),
    ("supernet_kernels.quant.model", "supernet_kernels.transform"),
    ("supernet_kernels.quant.fake", "supernet_kernels.nn.fake_quant"),
}

LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names of what ``node`` imports: ``from .. import ops`` is supernet_kernels.ops."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names]


def _imports(path: Path, root: Path = ROOT):
    """(imported name, line, inside a module-level __getattr__) for each import in ``path``."""
    module, is_package = _module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    in_getattr = {
        id(inner)
        for top in tree.body
        if isinstance(top, ast.FunctionDef) and top.name == "__getattr__"
        for inner in ast.walk(top)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = _resolve(node, module, is_package)
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("supernet_kernels."):
                yield name, node.lineno, id(node) in in_getattr


def _top(name: str) -> str:
    """supernet_kernels.nn.quant -> nn; supernet_kernels.transform -> transform."""
    return name.split(".")[1]


def _upward(root: Path = ROOT) -> list[str]:
    """Every import from a lower layer to a higher one under ``root``/supernet_kernels."""
    package = root / "supernet_kernels"
    upward = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "__init__.py":
            continue
        module, _ = _module_name(path, root)
        src = LAYER_OF[_top(module)]
        for name, line, in_getattr in _imports(path, root):
            dst = LAYER_OF.get(_top(name))
            if dst is None or dst <= src:
                continue
            if in_getattr and any(
                module == m and name.startswith(t) for m, t in DEPRECATED_ALIASES
            ):
                continue
            target = ".".join(name.split(".")[:3])
            upward.append(
                f"{path.relative_to(root)}:{line}: {module} (layer {src}) imports {target} "
                f"(layer {dst})"
            )
    return upward


def test_every_module_has_a_layer():
    tops = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    tops |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    unplaced = sorted(tops - set(LAYER_OF))
    assert not unplaced, f"place these in a layer of LAYERS (tests/test_layers.py): {unplaced}"
    stale = sorted(set(LAYER_OF) - tops)
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_import_reaches_a_higher_layer():
    upward = _upward()
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_deprecated_aliases_still_exist():
    """Each exemption is a live alias (a stale one would hide a real upward import)."""
    for module, target in DEPRECATED_ALIASES:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
        found = [n for n, _, in_getattr in _imports(path) if in_getattr and n.startswith(target)]
        assert found, f"{module} no longer imports {target} in __getattr__: drop the exemption"


def test_contributing_shows_the_same_layers():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(r"Layers, top to bottom.*?```text\n(.*?)```", text, re.S)
    assert match, "CONTRIBUTING.md has no 'Layers, top to bottom' block"
    documented = [
        tuple(sorted(line.split("#")[0].split()))
        for line in match.group(1).splitlines()
        if line.split("#")[0].strip()
    ]
    assert documented[::-1] == [tuple(sorted(layer)) for layer in LAYERS]


@pytest.mark.parametrize(
    "source",
    [
        "from ..recipes import flora_space",
        "from .. import recipes",
        "from ..recipes.flora import flora_space",
        "import supernet_kernels.recipes.flora",
        "from supernet_kernels import transform",
    ],
)
def test_the_checker_finds_an_upward_import(tmp_path, source):
    """An upward import written any of these ways, even inside a function, is found; the same
    import inside __getattr__ is found too unless it is a listed deprecated alias."""
    nn_dir = tmp_path / "supernet_kernels" / "nn"
    nn_dir.mkdir(parents=True)
    (nn_dir / "probe.py").write_text(f"def f():\n    {source}\n")
    found = _upward(tmp_path)
    assert len(found) == 1 and "supernet_kernels.nn.probe (layer 4)" in found[0], found
    (nn_dir / "probe.py").write_text(f"def __getattr__(name):\n    {source}\n")
    assert len(_upward(tmp_path)) == 1
    (nn_dir / "probe.py").write_text("from ..quant.packing import pack\nfrom . import quant\n")
    assert _upward(tmp_path) == []
