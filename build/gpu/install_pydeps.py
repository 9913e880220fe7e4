"""Install the few packages the gpu profile's Python models need beyond the NGC image.

    python3 build/gpu/install_pydeps.py --target /models/pydeps [--profile gpu] [--dry-run]

The list is gpu.container.pydeps in build/profiles.yaml. `pip install --target` ignores what
is installed and resolves dependencies afresh, so a plain call put numpy 2.x in front of the
image's site-packages (PYTHONPATH comes first), where the image's TensorRT-LLM and Python
backend need numpy<2. Here every pin goes in with --no-deps, a distribution the image already
has is left to the image, and numpy is refused outright.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import site
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

BUILD = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUILD))

from render import RenderError, load_profile  # noqa: E402

# Never from the volume: the image's builds (TensorRT-LLM, the Python backend) need its own.
FORBIDDEN = ("numpy",)


def _name(pin: str) -> str:
    return pin.split("==", 1)[0].split("[", 1)[0].strip().lower().replace("_", "-")


def image_distributions() -> dict[str, str]:
    """{dist: version} installed in this interpreter's site-packages, i.e. in the image; what
    PYTHONPATH adds (the builder image's own tools) does not count, as the server lacks it."""
    found = {}
    for dist in importlib.metadata.distributions(path=site.getsitepackages()):
        found.setdefault(_name(dist.metadata["Name"]), dist.version)
    return found


def plan(pins: Sequence[str], installed: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(pins to install, {dist: version the image keeps}); every pin must be exact."""
    install, kept = [], {}
    for pin in pins:
        name = _name(pin)
        if name in FORBIDDEN:
            raise RenderError(f"{pin}: {name} must come from the image, never from pydeps")
        if "==" not in pin:
            raise RenderError(f"{pin}: pydeps are pinned exactly (NAME==VERSION)")
        version = installed.get(name)
        if version is None:
            install.append(pin)
        else:
            kept[name] = version
    return install, kept


def pip_command(target: Path, pins: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps",
        "--target", str(target), *pins,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = parser.parse_args(argv)
    try:
        install, kept = plan(
            load_profile(args.profile)["container"]["pydeps"], image_distributions()
        )
    except RenderError as exc:
        print(f"install_pydeps: error: {exc}", file=sys.stderr)
        return 2
    for name, version in sorted(kept.items()):
        print(f"install_pydeps: the image has {name} {version}; not installed")
    command = pip_command(args.target, install)
    print(" ".join(command), flush=True)
    if args.dry_run or not install:
        return 0
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
