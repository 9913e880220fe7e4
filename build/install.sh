#!/usr/bin/env bash
# Install everything the project needs into a local virtual environment (default .venv):
# Debian packages when run as root with apt-get, then the pinned PyPI requirements.
set -euo pipefail
venv="${1:-.venv}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# libb64-0d: perf_analyzer (shipped in the tritonclient wheel) links it; openssl: TLS tests
apt_packages=(libb64-0d openssl)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install: apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
else
  echo "install: not root or no apt-get; make sure these Debian packages are present: ${apt_packages[*]}"
fi

python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [ "$version" != "3.11" ]; then
  echo "install: Python 3.11 is required (found $version at $python); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$python" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)'; then
  echo "install: $python has no shared libpython3.11, which Triton's Python backend stub needs" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# Triton's Python backend stub ignores PYTHONPATH but reads the venv's .pth files: list the
# source roots there so every package under them (new ones too) imports in the stub.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$root/python_backends" "$root/client" > "$site/smoothguard-src.pth"
echo "install: ready in $venv"
