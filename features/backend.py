"""The one home of layerprobe's contact with Keras internals.

* `import_keras_quietly`: import Keras with the backend's C++ start-up notices muted.
* The few private Keras APIs layerprobe needs (graph edges for stage detection,
  the global seed state to restore after a seeded block, an optimizer's
  variable index) are wrapped here and nowhere else. Each wrapper checks that
  the private attribute is still there and otherwise raises a `RuntimeError`
  naming the installed Keras version and the range layerprobe was tested with,
  instead of an `AttributeError` deep inside a run.
* `load_weights_strictly`: Keras 3's `load_weights` only warns when parts of a
  file do not match the model; layerprobe treats that as an error.
* `apply_backend_defaults`: TensorFlow's oneDNN kernels on by default, set
  (unless the user has) before the backend is imported.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Any, Iterator

__all__ = [
    "ONEDNN_FLAG",
    "TESTED_KERAS",
    "apply_backend_defaults",
    "get_global_seed_state",
    "import_keras_quietly",
    "inbound_layers",
    "is_functional_model",
    "load_weights_strictly",
    "isolated_default_seeds",
    "optimizer_variable_index",
    "set_global_seed_state",
]

TESTED_KERAS = ">=3.3,<4"
_SEED_ATTRIBUTES = ("global_random_seed", "global_seed_generator")

# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or
# AMX. Elsewhere they are faster too (measured in benchmarks/RESULTS.md, "oneDNN on every CPU"),
# and their results, unlike Eigen's, do not depend on the number of threads. A user's own
# setting of the variable wins.
ONEDNN_FLAG = "TF_ENABLE_ONEDNN_OPTS"


def apply_backend_defaults() -> None:
    """Make TensorFlow's oneDNN flag explicit where the user has not set it.

    Called before layerprobe imports a backend and before it records the numerics
    environment. If TensorFlow is not imported yet, the flag is set to "1"; if it is
    (by the user, first), it read the flag at import, so the flag is set to the state
    TensorFlow started in. Either way the recorded flag is the one in force, and
    processes started from this one (dask workers) compute like it.
    """
    if ONEDNN_FLAG in os.environ:
        return
    if "tensorflow" not in sys.modules:
        os.environ[ONEDNN_FLAG] = "1"
    elif (enabled := _imported_tensorflow_onednn()) is not None:
        os.environ[ONEDNN_FLAG] = "1" if enabled else "0"


def _imported_tensorflow_onednn() -> bool | None:
    """Whether the imported TensorFlow runs its oneDNN kernels; None where it cannot tell."""
    with contextlib.suppress(Exception):
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    return None


def import_keras_quietly() -> Any:
    """Import Keras and create its device context with C++ stderr muted; return the module.

    TensorFlow prints start-up notices (oneDNN, missing CUDA) from C++ before
    its logging is configured, so no environment variable silences them all.
    Python errors still surface: they are raised after stderr is restored.
    Callers import Keras through this only when they need it, so work that is
    all cached never pays for the import. Set `LAYERPROBE_VERBOSE=1` (the CLI's
    `--verbose`) to see the notices.
    """
    if "keras" in sys.modules:
        import keras

        return keras
    if os.environ.get("LAYERPROBE_VERBOSE"):
        return _import_keras()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            keras = _import_keras()
            keras.ops.zeros((1,))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _import_keras() -> Any:
    """`import keras`, or a `BackboneError` saying which extra installs the missing backend."""
    from ..core.errors import BackboneError

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    apply_backend_defaults()
    try:
        import keras
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing == "keras" or missing == _BACKEND_PACKAGES.get(backend):
            raise BackboneError(
                f"Keras cannot start: {error}. Install the backend as an extra of layerprobe, e.g. "
                f"pip install 'layerprobe[{backend if backend in _BACKEND_PACKAGES else 'tensorflow'}]' "
                f"(extras: tensorflow, jax, torch), or choose an installed one with KERAS_BACKEND. "
                f"Received: KERAS_BACKEND={backend!r}"
            ) from error
        raise
    return keras


def _internals_error(what: str, error: Exception) -> RuntimeError:
    import keras

    return RuntimeError(
        f"layerprobe uses a private Keras API ({what}) that the installed Keras {keras.__version__} "
        f"no longer provides ({type(error).__name__}: {error}). layerprobe is tested with keras{TESTED_KERAS}: "
        f"install a tested version (pip install 'keras{TESTED_KERAS}') or report this at layerprobe's tracker."
    )


def load_weights_strictly(model, path: str | os.PathLike) -> None:
    """`model.load_weights(path)`, raising where Keras 3 only warns that parts did not match.

    Keras leaves the unmatched layers randomly initialised; features from them
    would be silently wrong.

    Raises:
        ValueError: If Keras skipped or mismatched any part of the file; any
            error `load_weights` itself raises passes through.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message)]
    if skipped:
        raise ValueError(f"{len(skipped)} part(s) of the file did not match the model, e.g. {skipped[0]}")


def inbound_layers(layer) -> Iterator[Any]:
    """The layers (operations) whose outputs feed `layer`, over all of its call sites."""
    try:
        nodes = layer._inbound_nodes
        for node in nodes:
            for tensor in node.input_tensors:
                yield tensor._keras_history.operation
    except AttributeError as error:
        raise _internals_error("Layer._inbound_nodes / KerasTensor._keras_history", error) from error


def is_functional_model(model) -> bool:
    """Whether `model` is a graph of layers (functional or Sequential), whose intermediate outputs can be tapped.

    A subclassed `keras.Model` is not: its `call` is Python code, not a graph.
    """
    import keras

    if isinstance(model, keras.Sequential):
        return True
    try:
        from keras.src.models.functional import Functional
    except ImportError as error:
        raise _internals_error("keras.src.models.functional.Functional", error) from error
    return isinstance(model, Functional)


def get_global_seed_state() -> dict[str, Any]:
    """Keras's global seed attributes, to restore after a seeded block."""
    try:
        from keras.src.backend.common import global_state

        return {name: global_state.get_global_attribute(name) for name in _SEED_ATTRIBUTES}
    except (ImportError, AttributeError) as error:
        raise _internals_error("keras.src.backend.common.global_state", error) from error


def set_global_seed_state(state: dict[str, Any]) -> None:
    """Restore what `get_global_seed_state` returned."""
    from keras.src.backend.common import global_state

    for name, value in state.items():
        global_state.set_global_attribute(name, value)


@contextlib.contextmanager
def isolated_default_seeds(seed: int) -> Iterator[None]:
    """Inside the block, Keras draws default seeds from a private `random.Random(seed)`.

    Initializers and seed generators built without a seed draw one from Python's
    shared `random` module (`keras.src.random.seed_generator.make_default_seed`).
    Any other thread that uses `random` meanwhile (dask's event loop, for one)
    would change those draws, and so the weights of a seeded random
    initialisation. A private generator seeded like `random.seed(seed)` gives
    the same draws as a quiet process, whatever other threads do.
    """
    try:
        from keras.src.random import seed_generator

        shared = seed_generator.python_random
    except (ImportError, AttributeError) as error:
        raise _internals_error("keras.src.random.seed_generator.python_random", error) from error
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def optimizer_variable_index(optimizer, variable) -> int:
    """The index of `variable` in `optimizer`'s built variable list (Optimizer._get_variable_index)."""
    try:
        return optimizer._get_variable_index(variable)
    except AttributeError as error:
        raise _internals_error("Optimizer._get_variable_index", error) from error
