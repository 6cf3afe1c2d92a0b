#!/usr/bin/env bash
# Wheels of the packages maskstatus needs that the lent GPU machine's image lacks (it has torch, timm,
# lightning, pandas, scikit-learn, OpenCV, ONNX, NVML, ...; Python 3.12; nothing can be fetched there).
# Saved to .whl/ (ignored by git), at the versions installed here, for the device call to install:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
# Usage: benchmarks/device_wheels.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PACKAGES=(albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types typing-inspection
          typing-extensions lightning-fabric)
specs=()
for name in "${PACKAGES[@]}"; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "device_wheels: $name is not installed in $PY (run make setup first)" >&2; exit 1; }
    specs+=("$name==$version")
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
du -sh .whl
ls .whl
