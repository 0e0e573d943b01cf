#!/usr/bin/env bash
# Download, on a machine with a network, the wheels benchmarks/gpu_check.sh installs offline:
# ttach, grad-cam 1.5.7 and torchcam 0.5.0, into .wheels/ (ignored by git) or the folder given.
#
#   benchmarks/fetch_wheels.sh [DIR]          # then carry DIR (.wheels) to the GPU machine
#
# The three are pure Python. grad-cam 1.5.7 is published as a source archive only: it is built
# into a wheel here (pip wheel, which needs setuptools from the index), so that the offline
# install (pip install --no-index --find-links DIR) builds nothing. camlib itself is installed
# there from the checkout with --no-build-isolation, using the setuptools the machine has; if that
# fails (camlib's metadata needs setuptools 77 or later), with build isolation from the setuptools
# and wheel wheels downloaded here as well (and packaging, which wheel needs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.wheels}"
python="${PYTHON:-python3}"
mkdir -p "$dir"
"$python" -m pip download --no-deps -d "$dir" ttach==0.0.3 grad-cam==1.5.7 torchcam==0.5.0
"$python" -m pip download --no-deps --only-binary=:all: -d "$dir" "setuptools>=77" wheel packaging
for sdist in "$dir"/*.tar.gz; do
  [[ -e "$sdist" ]] || continue
  "$python" -m pip wheel --no-deps -w "$dir" "$sdist"
  rm -f "$sdist"
done
ls -l "$dir"
# the same offline install gpu_check.sh runs, into a throwaway target: fails if a wheel is missing
target="$(mktemp -d)"
trap 'rm -rf "$target"' EXIT
"$python" -m pip install --quiet --no-deps --no-index --find-links "$dir" --target "$target" \
  ttach grad-cam==1.5.7 torchcam==0.5.0
echo "fetch_wheels.sh: $dir installs offline: $(ls "$target" | grep -c dist-info) packages"
