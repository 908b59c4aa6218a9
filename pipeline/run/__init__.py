"""Config-driven batch runs: every backbone x layer x pooling x classifier, nothing lost.

For each backbone (and pooling), one `FeatureExtractor` extracts all its
layers in one forward pass per batch; features already in the store cost
nothing. Then every classifier is fitted on each layer's training split
(hyperparameters by cross-validation inside it), scored once on the test
split, and saved with its predictions. With screening (depth sweeps, see
`screening`) the ridge probe screens every layer and the other classifiers
are fitted on the best few, and a multi-layer row joins them. The results
table is rewritten (atomically) after every row.

Every row is a spec (`records.RowSpec`: a classifier on one layer, a
backbone's multi-layer probe, a `[finetune]` training), a small frozen object
holding exactly the settings its fit depends on: their canonical JSON is its
key, and its record (`records.fit_or_reuse`) is reused while the key matches,
without loading features or fitting. One loop (`fitting.fit_rows`) fits or
reuses a list of specs in order, inline, in threads or on a dask cluster. So a
killed run keeps its rows, rerunning a config does no forward pass and no fit,
and changing only the classifiers reuses every feature.

Output directory layout (every name made safe as store entry names are)::

    OUT/results.csv  summary.md  depth.png
    OUT/models/<store entry>/<classifier>.skops|.json|.predictions.csv|.row.json
    OUT/models/<backbone>.multi.<pooling>.<digest>/ridge.skops|...   (the multi-layer row)
    OUT/finetune/<mode>-<backbone>-<digest>/   (a [finetune] training; row.json)

Modules, one job each, in the order of a run: `splits` (train/test splits,
class checks), `extractions` (extraction plans; builds the extractors),
`screening` (which classifier rows: screening and final rows), the specs of
each kind of row: `rows` (a classifier on one layer, and each layer's features
loaded once), `multi_layer` (the multi-layer row), `finetune_rows` (the
`[finetune]` trainings); `fitting` (the one loop and its executors), `records`
(a row fitted or reused by its key; the fitted/reused tally), `summary` and
`results_json` (the texts and files of the report), and `experiment`
(`run_experiment`: plan, extract, specs, fit, report).
"""

from .experiment import RunResult, run_experiment
from .splits import split_dataset

__all__ = ["RunResult", "run_experiment", "split_dataset"]
