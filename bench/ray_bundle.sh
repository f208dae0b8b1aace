#!/usr/bin/env bash
# Build a Ray bundle small enough to travel to a bare GPU machine (Python 3.12, no Ray, no network).
#
#   bench/ray_bundle.sh [OUT_DIR]        # default /tmp/raybundle
#
# Why: Ray's manylinux wheel (~79 MB) is larger than what a device call can carry (64 MiB), but
# most of it is Java jars and libraries bluff_ray never imports (rllib, serve, tune, train, llm,
# data). This downloads PyPI's cp312 manylinux wheel of the Ray version installed in .venv,
# unpacks it, drops those folders, and packs the rest as OUT_DIR/ray-stripped.tar.xz; the small
# pure/binary dependencies the GPU image lacks go to OUT_DIR/wheels/ (cp312 manylinux).
# On the device (see BENCHMARKS.md, "GPU"):
#   mkdir -p /tmp/site && tar -xJf raybundle/ray-stripped.tar.xz -C /tmp/site &&
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site raybundle/wheels/*.whl &&
#   export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail

OUT=${1:-/tmp/raybundle}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-$("$PY" -c 'import ray; print(ray.__version__)')}
# Ray's own needs and bluff_ray's that the GPU image's package list (click, filelock, msgpack,
# packaging, protobuf, pyyaml, requests, aiohttp, attrs, fsspec, pyarrow... are there) lacks.
DEPS=${DEPS:-"jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core annotated-types typing-inspection"}
DROP="ray/jars ray/rllib ray/serve ray/tune ray/train ray/llm ray/data"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

pip_download() {  # cp312 manylinux wheels, no dependency resolution (we name every package)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$1" "${@:2}"
}

rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/tmp"
echo "ray $RAY_VERSION: downloading the cp312 manylinux wheel"
pip_download "$OUT/tmp" "ray==$RAY_VERSION"
WHEEL=$(ls "$OUT"/tmp/ray-*.whl)
mkdir -p "$OUT/tmp/site"
"$PY" -m zipfile -e "$WHEEL" "$OUT/tmp/site"
for d in $DROP; do rm -rf "${OUT:?}/tmp/site/$d"; done
# Dropping ray/data breaks nothing bluff_ray imports; record what was dropped next to the package.
echo "$DROP" > "$OUT/tmp/site/ray/STRIPPED_BY_BLUFF_RAY"
echo "unpacked and stripped: $(du -sh "$OUT/tmp/site" | cut -f1)"
tar -C "$OUT/tmp/site" -cf - . | xz -9 -T1 > "$OUT/ray-stripped.tar.xz"  # ~2 minutes on one core
for p in $DEPS; do  # the versions installed here (pydantic and pydantic-core must match)
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null || true)
  pip_download "$OUT/wheels" "$p${v:+==$v}"
done
echo "Ray requires (check each is on the GPU image or in wheels/):"
grep '^Requires-Dist' "$OUT"/tmp/site/ray-*.dist-info/METADATA | grep -v 'extra ==' | sed 's/^/  /'
rm -rf "$OUT/tmp"
ls -l "$OUT/ray-stripped.tar.xz" "$OUT"/wheels/
echo "total: $(du -sh "$OUT" | cut -f1) (a device call carries at most 64 MiB with the working tree)"
