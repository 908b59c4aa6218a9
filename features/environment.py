"""The numerics environment: what, besides a feature key, decides the exact bits of extracted features.

The same key computed under two environments can differ in the last bits: the
Keras backend and its version pick other kernels, a GPU computes otherwise than
a CPU, oneDNN (`TF_ENABLE_ONEDNN_OPTS`), XLA flags, TF32 matmuls, JAX's matmul
precision or x64 mode change rounding, and another Pillow decodes and resizes
images slightly differently. These are not key fields (as joblib.Memory and
Hugging Face datasets keep library versions out of their cache keys: a key
names *what* is computed, not the machine), so a complete entry is reused
under another environment. But one entry must never mix two environments:
`numerics_environment()` is recorded in every partial chunk and in every
committed entry's metadata, a resumed extraction under another environment
discards the partial chunks and recomputes, and
`FeatureStore.load(..., strict_environment=True)` refuses an entry written
under another environment.

`numerics_environment` is cheap: it builds no model and never imports Keras or
a backend that is not imported yet. Without them, versions come from
`importlib.metadata` and settings from environment variables, and the device
is `None` (unknown) unless `probe_device=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .backend import apply_backend_defaults
from ..core.versions import installed_version
from ..core.files import RECORD_MAX_BYTES, read_bounded_text

__all__ = ["ENVIRONMENT_FLAGS", "environment_differences", "numerics_environment"]

# Environment variables that change the numbers a backend computes (read as set, None when unset).
ENVIRONMENT_FLAGS = (
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_XLA_FLAGS",
    "XLA_FLAGS",
    "TF_DETERMINISTIC_OPS",
    "NVIDIA_TF32_OVERRIDE",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)

# Distribution names of each backend, first installed one wins.
_BACKEND_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tf-nightly"),
    "jax": ("jax",),
    "torch": ("torch",),
    "numpy": ("numpy",),
}


def _backend_name() -> str:
    """The Keras backend in use (or that Keras would use): as Keras decides, without importing it."""
    keras = sys.modules.get("keras")
    if keras is not None:
        with contextlib.suppress(Exception):
            return str(keras.backend.backend())
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return str(json.loads(read_bounded_text(Path(keras_home, "keras.json"), "Keras config", RECORD_MAX_BYTES))["backend"])
    return "tensorflow"


def _cpu_name() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine() or None


def _device(backend: str, *, probe: bool) -> str | None:
    """`"cpu"` or `"gpu:<name>"` as the backend sees it; None when its module is not imported (and not `probe`)."""
    module = sys.modules.get(backend)
    if module is None and probe:
        with contextlib.suppress(Exception):
            module = __import__(backend)
    if module is None:
        return None
    with contextlib.suppress(Exception):
        if backend == "tensorflow":
            gpus = module.config.list_physical_devices("GPU")
            if gpus:
                details = module.config.experimental.get_device_details(gpus[0])
                return f"gpu:{details.get('device_name', gpus[0].name)}"
            return "cpu"
        if backend == "jax":
            device = module.devices()[0]
            return "cpu" if device.platform == "cpu" else f"{device.platform}:{device.device_kind}"
        if backend == "torch":
            if module.cuda.is_available():
                return f"gpu:{module.cuda.get_device_name(0)}"
            if getattr(module.backends, "mps", None) is not None and module.backends.mps.is_available():
                return "mps"
            return "cpu"
    return "unknown"


def _live_settings(backend: str) -> dict[str, Any]:
    """Precision settings set in code rather than environment variables, read from imported modules only."""
    settings: dict[str, Any] = {}
    keras = sys.modules.get("keras")
    if keras is not None:
        with contextlib.suppress(Exception):
            settings["keras_dtype_policy"] = keras.config.dtype_policy().name
    if backend == "tensorflow" and "tensorflow" in sys.modules:
        with contextlib.suppress(Exception):
            settings["tf_tensor_float_32"] = bool(
                sys.modules["tensorflow"].config.experimental.tensor_float_32_execution_enabled()
            )
    if backend == "jax" and "jax" in sys.modules:
        with contextlib.suppress(Exception):
            config = sys.modules["jax"].config
            settings["jax_enable_x64"] = bool(config.jax_enable_x64)
            settings["jax_default_matmul_precision"] = config.jax_default_matmul_precision
    if backend == "torch" and "torch" in sys.modules:
        with contextlib.suppress(Exception):
            torch = sys.modules["torch"]
            settings["torch_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
            settings["torch_cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
            settings["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return settings


def numerics_environment(*, probe_device: bool = False) -> dict[str, Any]:
    """What decides the exact bits of features besides their key, as a flat JSON-ready dict.

    Fields: `backend`, `backend_version`, `keras_version`, `numpy_version`,
    `pillow_version` (decoding and resizing), `device` (`"cpu"`, `"gpu:<name>"`,
    or None when the backend is not imported and `probe_device` is False),
    `cpu` (the CPU model: oneDNN and XLA pick kernels by instruction set),
    `env` (each of `ENVIRONMENT_FLAGS` as set, or None) and the precision
    settings of the imported modules (`keras_dtype_policy`, `tf_tensor_float_32`,
    `jax_enable_x64`, `jax_default_matmul_precision`, `torch_*_tf32`...).

    Args:
        probe_device: Import the backend module (not Keras) if needed to name the device.
    """
    apply_backend_defaults()  # the flags a backend layerprobe imports later will start with
    backend = _backend_name()
    environment: dict[str, Any] = {
        "backend": backend,
        "backend_version": installed_version(*_BACKEND_DISTRIBUTIONS.get(backend, (backend,))),
        "keras_version": installed_version("keras"),
        "numpy_version": installed_version("numpy"),
        "pillow_version": installed_version("pillow", "Pillow"),
        "device": _device(backend, probe=probe_device),
        "cpu": _cpu_name(),
        "env": {name: os.environ.get(name) for name in ENVIRONMENT_FLAGS},
    }
    environment.update(_live_settings(backend))
    return environment


def environment_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Field -> (recorded, current) for every field that differs; `env` flags are compared one by one.

    A field the current environment cannot tell (None, e.g. the device before the backend
    is imported) is not a difference; a field missing from `recorded` is.
    """
    differences: dict[str, tuple[Any, Any]] = {}
    for field in sorted(set(recorded) | set(current)):
        if field == "env":
            flags_then, flags_now = recorded.get("env") or {}, current.get("env") or {}
            for flag in sorted(set(flags_then) | set(flags_now)):
                if flags_then.get(flag) != flags_now.get(flag):
                    differences[f"env.{flag}"] = (flags_then.get(flag), flags_now.get(flag))
            continue
        if field not in current or current[field] is None:
            continue
        if recorded.get(field) != current[field]:
            differences[field] = (recorded.get(field), current[field])
    return differences
