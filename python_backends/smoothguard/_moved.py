"""Old flat module names (``smoothguard.noise``, ``python -m smoothguard.supervisor``) keep working
after the move into layers: each resolves to the module's new home with a DeprecationWarning.

An alias is the new module object itself (not a second copy), so classes and state stay single.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

LAYERS = {
    "core": (
        "adaptive",
        "aggregate",
        "audio",
        "kmeans",
        "noise",
        "pipeline",
        "policy",
        "settings",
        "validation",
        "xp",
    ),
    "adapters": ("embedder", "mllm", "preprocess", "trtllm"),
    "synthetic": ("synthalm", "synthaudio", "synthpope", "synthvlm"),
    "evaluation": ("attacks",),
    "serving": ("gateway", "server", "supervisor", "watchdog"),
}
MOVED = {f"smoothguard.{m}": f"smoothguard.{layer}.{m}" for layer, ms in LAYERS.items() for m in ms}


def new_name(fullname: str) -> str | None:
    """The new dotted name for an old one (submodules of moved packages included), else None."""
    head, _, rest = fullname.partition(".")
    if head != "smoothguard" or not rest:
        return None
    top = "smoothguard." + rest.split(".")[0]
    if top not in MOVED:
        return None
    return MOVED[top] + fullname[len(top) :]


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""

    def get_code(self, fullname: str) -> CodeType | None:
        """What ``python -m old.name`` runs: the new module's code."""
        warnings.warn(
            f"python -m {fullname} is deprecated: use python -m {self.target}",
            FutureWarning,  # shown by default: the person at the shell should see it
            stacklevel=2,
        )
        spec = importlib.util.find_spec(self.target)
        assert spec is not None and isinstance(spec.loader, importlib.abc.InspectLoader)
        return spec.loader.get_code(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None):
        target_name = new_name(fullname)
        if target_name is None:
            return None
        real = importlib.util.find_spec(target_name)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(
            fullname,
            _AliasLoader(target_name),
            origin=real.origin,  # runpy sets sys.argv[0] from it
            is_package=real.submodule_search_locations is not None,
        )
        spec.submodule_search_locations = real.submodule_search_locations
        return spec


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
