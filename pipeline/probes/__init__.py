"""Fast probes on cached features: closed-form ridge with exact leave-one-out, LogME, multi-layer selection.

- :mod:`.ridge`: :class:`RidgeProbeCV`, every penalty's LOO accuracy from one eigendecomposition.
- :mod:`.logme`: :func:`logme_score`, the LogME transferability score (You et al., ICML 2021).
- :mod:`.multilayer`: :class:`MultiLayerProbe`, greedy layer (group) selection on concatenated layers.
- :mod:`.svm`: :class:`LinearSVM`, LinearSVC's model by Newton steps on the Gram matrix.
- :mod:`.streamed`: :class:`StreamedLinearClassifier`, logistic regression or the linear SVM fitted on
  row blocks (a `FeatureStore.stream`), standardization folded into the weights.
- :mod:`.blocks`: passes over an array or a feature stream in row blocks.

Which layers a run screens and how they are ranked is `layerprobe.pipeline.run.screening`;
the warm-started C path of logistic regression is `layerprobe.pipeline.classifiers`.

Names are loaded on first use, so importing this package imports nothing heavy.
"""

from __future__ import annotations

from ...core.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_ALPHAS": "ridge",
    "RidgeProbeCV": "ridge",
    "LogMEResult": "logme",
    "fit_logme": "logme",
    "logme_score": "logme",
    "MultiLayerProbe": "multilayer",
    "multi_layer_name": "multilayer",
    "LinearSVM": "svm",
    "StreamedLinearClassifier": "streamed",
    "linear_svm_solver": "svm",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
