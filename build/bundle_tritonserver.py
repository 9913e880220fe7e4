"""Pack the minimal tritonserver that build/gpu_smoke.py needs on a machine without one.

    python build/bundle_tritonserver.py [--python 3.12] [--out var/bundle]

From the installed nvidia-pytriton wheel: bin/tritonserver, the Python backend with the stub
for one Python version, the local response cache, and the shared libraries they load (their
ELF DT_NEEDED closure inside nvidia_pytriton.libs); not the bundled libpython (the stub uses
the machine's) nor the other stubs. Beside it, the few Python packages the smoke may miss
there, as wheels for that Python from the package index, pinned as in requirements.txt:

- `first/`: numpy 1.x, which the pinned stub needs (its pybind11 reads numpy 1.x's array
  descriptors: under numpy 2.x it hands models empty or garbled arrays), so it goes ahead of
  the machine's own packages;
- `last/`: the client, gateway and supervisor packages (tritonclient, grpcio, aiohttp, psutil
  ...), behind the machine's own packages, so they only fill gaps.

Reproducible: sorted members, zero times and owners, fixed modes; SHA256SUMS inside (every
file) and <bundle>.sha256 beside it. MANIFEST.json says what came from where and which
libraries the machine itself must provide.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "requirements.txt"
# Ahead of the machine's packages: what the stub itself needs.
FIRST = ("numpy",)
# Behind the machine's packages: what the smoke's processes import beyond torch/transformers.
LAST = (
    "tritonclient", "grpcio", "protobuf", "python-rapidjson", "packaging", "psutil",
    "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "multidict",
    "propcache", "yarl", "idna", "typing_extensions", "pillow", "PyYAML",
)  # fmt: skip
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
LIBPYTHON = re.compile(r"^libpython\d")


def pytriton_paths() -> tuple[Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs) of the installed wheel, without importing
    pytriton (its __init__ pulls in its whole Python API)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise SystemExit("bundle: nvidia-pytriton is not installed in this environment")
    package = Path(spec.origin).parent
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def needed(path: Path) -> list[str]:
    """DT_NEEDED entries of an ELF64 little-endian shared object or executable."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, shentsize, shnum = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HH", data, 0x3A),
    )
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                start = strtab[4] + value
                names.append(data[start : data.index(b"\0", start)].decode())
    return names


def closure(roots: list[Path], libs: Path) -> tuple[list[Path], list[str]]:
    """(libraries from `libs` that `roots` load, transitively; names left to the machine)."""
    found: dict[str, Path] = {}
    host: set[str] = set()
    todo = list(roots)
    while todo:
        for name in needed(todo.pop()):
            candidate = libs / name
            if LIBPYTHON.match(name) or not candidate.exists():
                host.add(name)
            elif name not in found:
                found[name] = candidate
                todo.append(candidate)
    return sorted(found.values()), sorted(host)


def pins(names: tuple[str, ...]) -> list[str]:
    """NAME==VERSION for each name, as requirements.txt pins it (the project's one place)."""
    pinned = {}
    for line in REQUIREMENTS.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pinned[name.lower().replace("_", "-")] = f"{name}=={version}"
    missing = [n for n in names if n.lower().replace("_", "-") not in pinned]
    if missing:
        raise SystemExit(f"bundle: requirements.txt pins none of {missing}")
    return [pinned[n.lower().replace("_", "-")] for n in names]


def download(requirements: list[str], python: str, dest: Path) -> list[Path]:
    """Wheels for `python` on x86-64 Linux, exactly the pins given (no dependency solving)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--python-version", python, *platforms, "-d", str(dest),
        *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(requirements):
        raise SystemExit(f"bundle: expected {len(requirements)} wheels, got {len(wheels)}")
    return wheels


def unpack_wheel(wheel: Path, target: Path) -> None:
    """Install a wheel's importable files (its purelib/platlib and dist-info, not its scripts
    or data: tritonclient's carry perf_analyzer binaries that the smoke does not use)."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            if info.is_dir() or not name:
                continue
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))
            if (info.external_attr >> 16) & 0o111:
                path.chmod(0o755)


def stage(staging: Path, python: str, wheel_dir: Path) -> dict[str, object]:
    """Lay the bundle out under `staging`; returns the manifest."""
    triton, libs = pytriton_paths()
    stub = triton / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.exists():
        raise SystemExit(f"bundle: the wheel ships no Python backend stub for Python {python}")
    site = staging / "site"
    tree = site / "pytriton" / "tritonserver"
    copies = {
        triton / "bin" / "tritonserver": tree / "bin" / "tritonserver",
        triton / "backends" / "python" / "libtriton_python.so": tree / "backends" / "python"
        / "libtriton_python.so",
        triton / "backends" / "python" / "triton_python_backend_utils.py": tree / "backends"
        / "python" / "triton_python_backend_utils.py",
        triton / "caches" / "local" / "libtritoncache_local.so": tree / "caches" / "local"
        / "libtritoncache_local.so",
        stub: tree / "python_backend_stubs" / python / "triton_python_backend_stub",
    }  # fmt: skip
    elves = [src for src in copies if src.suffix != ".py"]
    libraries, host = closure(elves, libs)
    copies |= {lib: site / "nvidia_pytriton.libs" / lib.name for lib in libraries}
    for src, dst in copies.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    # Only locates the binary (smoothguard.serving.server); the wheel's __init__ imports its API.
    (site / "pytriton" / "__init__.py").write_text(
        '"""The tritonserver of nvidia-pytriton, bundled by build/bundle_tritonserver.py."""\n'
    )
    wheels = {}
    for group, names in (("first", FIRST), ("last", LAST)):
        dest = wheel_dir / group
        dest.mkdir(parents=True, exist_ok=True)
        for wheel in download(pins(names), python, dest):
            unpack_wheel(wheel, staging / group)
            wheels[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    from importlib.metadata import version

    return {
        "tritonserver": "2.51.0",
        "nvidia-pytriton": version("nvidia-pytriton"),
        "python": python,
        "layout": {
            "site": "pytriton/ and nvidia_pytriton.libs/: the venv's own site-packages",
            "first": "ahead of the machine's packages (the stub's numpy<2)",
            "last": "behind the machine's packages (gaps only)",
        },
        "libraries": [lib.name for lib in libraries],
        "host_libraries": host,
        "wheels": wheels,
    }


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def write_bundle(staging: Path, archive: Path, preset: int) -> str:
    """SHA256SUMS inside, a deterministic tar.xz, and its digest (also written beside it)."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(staging)}\n" for p in files
    )
    (staging / "SHA256SUMS").write_text(sums)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(staging.rglob("*")):
            tar.add(
                path, arcname=str(path.relative_to(staging)), recursive=False, filter=_normalise
            )
    archive.write_bytes(lzma.compress(buffer.getvalue(), preset=preset))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return digest


def build(python: str, out: Path, preset: int = 9 | lzma.PRESET_EXTREME) -> Path:
    """The bundle for `python` in `out`. The default xz preset (9e) packs smallest and takes
    minutes on two cores; the CI test packs with 0, the same files."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"tritonserver-2.51.0-py{python}-x86_64.tar.xz"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staging = Path(tmp) / "bundle"
        manifest = stage(staging, python, Path(tmp) / "wheels")
        (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        write_bundle(staging, archive, preset)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the target machine's Python X.Y")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bundle")
    parser.add_argument(
        "--xz-preset", type=int, default=9, choices=range(10), help="9 (default) adds -e"
    )
    args = parser.parse_args(argv)
    preset = args.xz_preset | (lzma.PRESET_EXTREME if args.xz_preset == 9 else 0)
    archive = build(args.python, args.out.resolve(), preset)
    size = archive.stat().st_size
    print(f"{archive} ({size / 2**20:.1f} MiB)")
    print(archive.with_name(archive.name + ".sha256").read_text().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
