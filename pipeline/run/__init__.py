"""Config-driven batch runs: every backbone x layer x pooling x classifier, nothing lost.

For each backbone (and pooling), one `FeatureExtractor` extracts all its
layers in one forward pass per batch; features already in the store cost
nothing. Then every classifier is fitted on each layer's training split
(hyperparameters by cross-validation inside it), scored once on the test
split, and saved with its predictions. With screening (depth sweeps, see
`screening`) the ridge probe screens every layer and the other classifiers
are fitted on the best few, and a multi-layer row joins them. The results
table is rewritten (atomically) after every row.

Every row (single-layer, multi-layer, `[finetune]`) is computed or reused by
one mechanism (`records.fit_or_reuse`): its record holds everything that
determines it (store keys, classifier, grid, preprocessing, PCA, folds, seed,
split definition), and a matching record is reused without loading features or
fitting. So a killed run keeps its rows, rerunning a config does no forward pass
and no fit, and changing only the classifiers reuses every feature.

Output directory layout (every name made safe as store entry names are)::

    OUT/results.csv  summary.md  depth.png
    OUT/models/<store entry>/<classifier>.skops|.json|.predictions.csv|.row.json
    OUT/models/<backbone>.multi.<pooling>.<digest>/ridge.skops|...   (the multi-layer row)
    OUT/finetune/<mode>-<backbone>-<digest>/   (the [finetune] stage; row.json)

Modules, one job each: `splits` (train/test splits, class checks),
`extractions` (extraction plans; builds the extractors), `records` (a row
fitted or reused by its settings; the fitted/reused tally), `rows` (a
classifier row on one layer), `cluster_rows` (those rows as tasks on a dask
cluster), `parallel_rows` (those rows side by side on free cores), `screening` (which rows: screening and final rows), `multi_layer`
(the multi-layer row), `finetune_rows` (the `[finetune]` stage's rows),
`summary` (the texts of summary.md and the log) and `experiment`
(`run_experiment`, the steps in order).
"""

from .experiment import RunResult, run_experiment
from .splits import split_dataset

__all__ = ["RunResult", "run_experiment", "split_dataset"]
