#!/usr/bin/env bash
# Device check (issue 13): layerprobe on a GPU machine with JAX or PyTorch and no TensorFlow.
#
#   bash benchmarks/device_check.sh            # GPU machine: about 7 minutes, jax then torch
#   bash benchmarks/device_check.sh --smoke    # CPU, tiny, current KERAS_BACKEND (default tensorflow)
#
# 1. Installs from .whl/ the wheels this Python lacks of keras and its requirements
#    (keras 3.15.1, namex, optree, typing_extensions for CPython 3.12 manylinux x86_64),
#    simplejpeg (the optional JPEG decoder) and nvImageCodec with nvJPEG
#    (nvidia-nvimgcodec-cu12, nvidia-nvjpeg-cu12: decoding on the GPU), into a temporary folder, offline:
#    pip --no-index --no-deps --no-compile --target (or unzip, without pip). Nothing is built.
# 2. If `import layerprobe` does not give this checkout, makes it importable through
#    a symlink named layerprobe (the repository root is the package).
# 3. Prints nvidia-smi -L, then runs benchmarks/device_check.py with the arguments
#    given here; it writes $OUT/device_check.json and .md (without $OUT:
#    benchmarks/out/device_check/) and prints the markdown tables last.
# Environment: PYTHON (default python3), DEVICE_CHECK_WHEELS (default .whl).
set -uo pipefail
export DEVICE_CHECK_STARTED="${DEVICE_CHECK_STARTED:-$(date +%s.%N)}"
cd "$(dirname "$0")/.." || exit 2
REPO="$(pwd -P)"
PY="${PYTHON:-python3}"
WHEELS="${DEVICE_CHECK_WHEELS:-$REPO/.whl}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/layerprobe-device-check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

# Keras and what it requires (Requires-Dist of its wheel), simplejpeg and nvImageCodec: those this Python lacks.
missing=$("$PY" - "$WHEELS" <<'EOF'
import glob, importlib.metadata, os, sys
needed = {"keras", "namex", "optree", "typing_extensions", "absl_py", "rich", "h5py", "ml_dtypes", "packaging",
          "simplejpeg", "nvidia_nvimgcodec_cu12", "nvidia_nvjpeg_cu12"}
for wheel in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = os.path.basename(wheel).split("-")[0]
    if name.lower().replace(".", "_") not in needed:
        continue
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        print(wheel)
EOF
)
if [ -n "$missing" ]; then
    echo "device_check: installing offline into $SCRATCH/site:" $(basename -a $missing)
    # shellcheck disable=SC2086
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$SCRATCH/site" $missing; then
        # No pip: a wheel is a zip archive whose top level goes on sys.path as it is.
        echo "device_check: pip failed; unpacking the wheels instead" >&2
        "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
            "$SCRATCH/site" $missing || echo "device_check: the offline install failed" >&2
    fi
    export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
    # nvImageCodec's nvJPEG extension loads libnvjpeg.so.12 from the nvidia-nvjpeg-cu12 wheel
    if [ -d "$SCRATCH/site/nvidia/nvjpeg/lib" ]; then
        export LD_LIBRARY_PATH="$SCRATCH/site/nvidia/nvjpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
elif ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('keras') is None)" 2>/dev/null; then
    echo "device_check: keras is not importable and $WHEELS holds no wheel this Python lacks" >&2
fi

found=$(cd / && "$PY" -c "import os, layerprobe; print(os.path.dirname(os.path.realpath(layerprobe.__file__)))" 2>/dev/null)
if [ "$found" != "$REPO" ]; then
    mkdir -p "$SCRATCH/src" && ln -sfn "$REPO" "$SCRATCH/src/layerprobe"
    export PYTHONPATH="$SCRATCH/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "device_check: layerprobe imported from this checkout through $SCRATCH/src/layerprobe"
fi

if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi

"$PY" benchmarks/device_check.py "$@"
status=$?
exit $status
