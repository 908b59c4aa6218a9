"""Fast probes on cached features: closed-form ridge with exact leave-one-out, LogME, multi-layer selection.

- :mod:`.ridge`: :class:`RidgeProbeCV`, every penalty's LOO accuracy from one eigendecomposition.
- :mod:`.logme`: :func:`logme_score`, the LogME transferability score (You et al., ICML 2021).
- :mod:`.multilayer`: :class:`MultiLayerProbe`, greedy layer (group) selection on concatenated layers.
- :mod:`.screening`: :func:`screen_layers`, rank every layer and keep the top-k per backbone.
- :mod:`.grids`: :func:`logreg_path_search` (warm-started C path), :func:`recommended_linear_svm`,
  :func:`recommended_sgd_svm`.
- :mod:`.svm`: :class:`LinearSVM`, LinearSVC's model by Newton steps on the Gram matrix.

Names are loaded on first use, so importing this package imports nothing heavy.
"""

from __future__ import annotations

from ...features.core.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_ALPHAS": "ridge",
    "RidgeProbeCV": "ridge",
    "loo_standard_error": "ridge",
    "LogMEResult": "logme",
    "fit_logme": "logme",
    "logme_score": "logme",
    "MultiLayerProbe": "multilayer",
    "multi_layer_name": "multilayer",
    "COLUMNS": "screening",
    "LayerProbe": "screening",
    "fit_layer_probes": "screening",
    "screen_layers": "screening",
    "selected_layers": "screening",
    "DEFAULT_CS": "grids",
    "PathSearchResult": "grids",
    "logreg_path_search": "grids",
    "recommended_linear_svm": "grids",
    "recommended_logreg": "grids",
    "recommended_sgd_svm": "grids",
    "LinearSVM": "svm",
    "linear_svm_solver": "svm",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
