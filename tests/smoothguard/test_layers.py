"""The package's layers hold: the defense core imports no Triton, torch, CuPy or client code, and
imports run only along the arrows (core <- adapters <- synthetic <- evaluation; serving apart)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import smoothguard
from smoothguard import _moved

PACKAGE = Path(smoothguard.__file__).parent
# Packages a core module may never import, anywhere in its body.
NEVER_IN_CORE = {
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "tritonclient",
    "tritonserver",
    "triton_python_backend_utils",
    "smoothguard_client",
    "smoothguard_triton",
    "grpc",
    "aiohttp",
}
# GPU array libraries: only inside a function (imported when a caller hands CuPy arrays).
LAZY_ONLY_IN_CORE = {"cupy", "cupyx", "cuml"}
# Which sibling layers each layer may import.
ALLOWED = {
    "core": {"core"},
    "adapters": {"core", "adapters"},
    "synthetic": {"core", "adapters", "synthetic"},
    "evaluation": {"core", "adapters", "synthetic", "evaluation"},
    "serving": {"serving"},
}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(dotted name, at module top level) for every absolute import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try-blocks at top level still run at import
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


def layer_files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def test_every_module_sits_in_a_layer() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py", "_moved.py"}
    assert not loose, f"modules outside a layer folder: {sorted(loose)}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(ALLOWED)


@pytest.mark.parametrize("path", layer_files("core"), ids=lambda p: p.name)
def test_core_module_imports_no_runtime_or_client(path: Path) -> None:
    for name, at_top in imports(path):
        root = name.split(".")[0]
        assert root not in NEVER_IN_CORE, f"{path.name} imports {name}"
        assert not (root in LAZY_ONLY_IN_CORE and at_top), f"{path.name} imports {name} at load"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_along_the_arrows(layer: str) -> None:
    for path in layer_files(layer):
        for name, _ in imports(path):
            parts = name.split(".")
            if parts[0] == "smoothguard" and len(parts) > 1 and parts[1] in ALLOWED:
                assert parts[1] in ALLOWED[layer], f"{path.relative_to(PACKAGE)} imports {name}"
            assert not (
                parts[0] == "smoothguard"
                and len(parts) > 1
                and parts[1] in {m.split(".")[1] for m in _moved.MOVED}
            ), f"{path} uses the old name {name}"


def test_importing_the_whole_core_loads_no_runtime() -> None:
    """What really happens at import, transitive imports included, in a fresh interpreter."""
    modules = [m.name for m in pkgutil.walk_packages([str(PACKAGE / "core")], "smoothguard.core.")]
    assert len(modules) >= 10
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & (NEVER_IN_CORE | LAZY_ONLY_IN_CORE), loaded & (
        NEVER_IN_CORE | LAZY_ONLY_IN_CORE
    )


def test_old_flat_names_alias_the_new_modules_with_a_warning() -> None:
    import importlib

    from smoothguard.core import noise
    from smoothguard.synthetic.synthvlm import tokenizer

    for old, new in (("smoothguard.noise", noise), ("smoothguard.synthvlm.tokenizer", tokenizer)):
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert importlib.import_module(old) is new
        assert any(issubclass(w.category, DeprecationWarning) for w in caught), old
        sys.modules.pop(old, None)


def test_old_supervisor_command_still_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "smoothguard.supervisor", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "tritonserver" in out.stdout
    assert "deprecated" in out.stderr and "smoothguard.serving.supervisor" in out.stderr
