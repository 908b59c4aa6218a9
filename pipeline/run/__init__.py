"""Config-driven batch runs: every backbone x layer x pooling x classifier, nothing lost.

For each backbone (and pooling), one `FeatureExtractor` extracts all its
layers in one forward pass per batch; features already in the store cost
nothing. Then every classifier is fitted on each layer's training split
(hyperparameters by cross-validation inside it), scored once on the test
split, and saved with its predictions. With screening (depth sweeps, see
`screening`) the ridge probe screens every layer and the other classifiers
are fitted on the best few, and a multi-layer row joins them. The results
table is rewritten (atomically) after every row.

A finished row is recognised on rerun by its saved classifier's sidecar,
which records everything that determines the fit (store key, classifier,
grid, preprocessing, PCA, folds, seed, split definition): a matching row is
reused without loading features or fitting. So a killed run keeps its rows,
rerunning a config does no forward pass and no fit, and changing only the
classifiers reuses every feature.

Output directory layout::

    OUT/results.csv  summary.md  depth.png
    OUT/models/<store entry>/<classifier>.joblib|.json|.predictions.csv
    OUT/models/<backbone>.multi.<pooling>.<digest>/ridge.joblib|...   (the multi-layer row)
    OUT/finetune/<mode>-<backbone>-<digest>/   (the [finetune] stage)

Modules, one job each: `splits` (train/test splits, class checks),
`extractions` (extraction plans; builds the extractors), `rows` (fit or reuse
a classifier row), `cluster_rows` (the rows as tasks on a dask cluster),
`screening` (which rows: screening and final rows, the multi-layer row),
`end_to_end` (the `[finetune]` stage's rows), `summary`
(the texts of summary.md and the log) and `experiment` (`run_experiment`,
the steps in order).
"""

from .experiment import RunResult, run_experiment
from .splits import split_dataset

__all__ = ["RunResult", "run_experiment", "split_dataset"]
