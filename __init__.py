"""layerprobe: which layer of a pretrained Keras network transfers best to your images?

Cut a network at intermediate layers, cache pooled activations in an HDF5
feature store, train scikit-learn probes on them, finetune the top blocks, and
get advice on which mode to use, with the evidence.

The public API is importable from here; each name is loaded on first use, so
``import layerprobe`` imports neither Keras nor TensorFlow (nor scikit-learn):
work that only reads cached features stays fast.

    >>> import layerprobe
    >>> store = layerprobe.FeatureStore("layerprobe-store")

Where each idea lives (each package's docstring maps its own modules):

* ``features/``: images in, cached layer features out (inputs, backbones,
  extraction, the store); ``core/`` is the common core every module
  uses (errors, checks, atomic writes, lazy exports, digests, versions);
* ``pipeline/``: what is done with cached features (configs, classifiers and
  probes, finetuning, batch runs, results, advice, the command line);
* ``benchmarks/`` (with the figures, ``benchmarks/RESULTS.md``) and ``tests/``
  are not installed.

The repository root is this package (setup.cfg maps ``layerprobe`` to ``.``,
``layerprobe.features`` to ``features/`` and ``layerprobe.pipeline`` to
``pipeline/``): an install provides exactly one top-level name, ``layerprobe``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports
from .core.versions import layerprobe_version

__version__ = layerprobe_version()

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    "FeatureExtractor": "features.extract",
    "ExtractionReport": "features.chunks",
    "FeatureStore": "features.store",
    "FeatureSet": "features.store",
    "FeatureKey": "features.keys",
    "ImageDataset": "features.inputs",
    "from_directory": "features.inputs",
    "from_csv": "features.inputs",
    "from_arrays": "features.inputs",
    "register_backbone": "features.registry",
    "BackboneSpec": "features.registry",
    "fit_classifier": "pipeline.classifiers",
    "evaluate": "pipeline.evaluate",
    "run_experiment": "pipeline.run",
    "load_config": "pipeline.config",
    "config_from_dict": "pipeline.config",
    "LayerFeatures": "pipeline.layer_features",
    "export_model": "pipeline.export",
    "predict_images": "pipeline.predict",
    "advice_text": "pipeline.advice",
    "LayerprobeError": "core.errors",
    "ConfigError": "core.errors",
    "StoreError": "core.errors",
    "CorruptEntryError": "core.errors",
    "IncompleteEntryError": "core.errors",
    "EntryNotFoundError": "core.errors",
    "EntryLockedError": "core.errors",
    "InputError": "core.errors",
    "UnreadableImageError": "core.errors",
    "BackboneError": "core.errors",
    "UnknownLayerError": "core.errors",
    "WeightsUnavailableError": "core.errors",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .features.chunks import ExtractionReport  # noqa: F401
    from .core.errors import (  # noqa: F401
        BackboneError,
        ConfigError,
        CorruptEntryError,
        EntryLockedError,
        EntryNotFoundError,
        IncompleteEntryError,
        InputError,
        LayerprobeError,
        StoreError,
        UnknownLayerError,
        UnreadableImageError,
        WeightsUnavailableError,
    )
    from .features.extract import FeatureExtractor  # noqa: F401
    from .features.inputs import ImageDataset, from_arrays, from_csv, from_directory  # noqa: F401
    from .features.keys import FeatureKey  # noqa: F401
    from .features.registry import BackboneSpec, register_backbone  # noqa: F401
    from .features.store import FeatureSet, FeatureStore  # noqa: F401
    from .pipeline.classifiers import fit_classifier  # noqa: F401
    from .pipeline.config import config_from_dict, load_config  # noqa: F401
    from .pipeline.evaluate import evaluate  # noqa: F401
    from .pipeline.export import export_model  # noqa: F401
    from .pipeline.layer_features import LayerFeatures  # noqa: F401
    from .pipeline.predict import predict_images  # noqa: F401
    from .pipeline.run import run_experiment  # noqa: F401
