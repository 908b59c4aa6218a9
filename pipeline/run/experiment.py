"""`run_experiment`: one config's run from images to recommendation, the steps in order.

Plan (`splits`, `extractions`), extract, the rows' specs (`screening`, `rows`,
`multi_layer`, `finetune_rows`), fit them (`fitting.fit_rows`, each fitted or
reused through `records`), report (the recommended model, `recommended`; the
texts and files, `summary`, `results_json`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ...core.errors import ConfigError
from ...features.inputs import ImageDataset
from ...features.store import FeatureStore
from ..advice import Advice, recommend
from ..cluster import extract_features, open_client
from ..config import DataConfig, ExperimentConfig
from ..plots import plot_depth
from ..results import ResultsTable, check_output_folder
from .extractions import Extraction, plan_extractions
from .finetune_rows import finetune_specs
from .fitting import InlineExecutor, fit_rows, row_executor
from .multi_layer import multi_layer_spec
from .paired import paired_scores
from .recommended import write_recommended
from .records import RunRows, recorded_rows
from .results_json import results_document, write_results_json
from .rows import LayerRowSpec, LayerToFit
from .screening import adds_multi_layer, check_grid_values, fill_layer_logme, final_specs, first_specs
from .splits import open_splits
from .summary import (
    data_text,
    log_report,
    stored_skipped,
    untested_text,
    write_run_summary,
)

__all__ = ["RunResult", "run_experiment"]


@dataclass(frozen=True)
class RunResult:
    """What a run produced.

    Attributes:
        results: The results table (see `layerprobe.pipeline.results`).
        advice: The mode recommendation.
        output_dir: Where everything was written.
        results_path: `results.csv`.
        summary_path: `summary.md`.
        plot_path: `depth.png`.
        json_path: `results.json`: the rows, the recommendation and its evidence.
        skipped: (sample id, reason) of every unreadable image.
        n_forward: Images that went through a backbone in this run (0 when all cached).
        n_fitted: Rows fitted (or trained) in this run.
        n_reused: Rows reused from an earlier run (or kept from its table by `finetune_only`).
    """

    results: pd.DataFrame
    advice: Advice
    output_dir: Path
    results_path: Path
    summary_path: Path
    plot_path: Path
    json_path: Path
    skipped: tuple[tuple[str, str], ...]
    n_forward: int
    n_fitted: int
    n_reused: int


def run_experiment(
    config: ExperimentConfig,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    finetune_only: bool = False,
    client: Any = None,
) -> RunResult:
    """Run a whole experiment: extract, fit, score, save, summarise, recommend.

    Args:
        config: From `layerprobe.pipeline.config.load_config` or `config_from_dict`.
        log: Called with one line per event (cached/computed features,
            fitted/reused rows, the final table and advice). Default: the
            logger "layerprobe.run" at INFO, silent unless logging is
            configured (the CLI prints it).
        progress: Show progress bars while extracting and within training epochs.
        finetune_only: Run only the `[finetune]` stage (`layerprobe finetune`):
            its rows replace those of the same modes in the existing results
            table, whose other rows are kept; no extraction, no classifier fit.
        client: A `dask.distributed.Client`: extract and fit the classifier rows
            on its workers (see `layerprobe.features.cluster_extraction`). Default: the
            config's `[cluster]`, opened for this run (`layerprobe.pipeline.cluster`),
            or in-process without one. The finetune stage runs in-process.

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: Before any work, if `finetune_only` is set and the config
            has no `[finetune]` section, if the data lack the named splits, have
            a single class or a class with fewer than 2 training images, or a
            backbone cannot be built as configured (unknown layer, weights file
            that does not fit, unknown model_kwargs).
        InputError: (a `ValueError`) If the images cannot be opened as a
            dataset; or before fitting a layer's classifiers, if its features
            hold NaN or inf, or unreadable images left a class with fewer than 2
            training rows.
    """
    started = time.perf_counter()
    log = log or logging.getLogger("layerprobe.run").info
    if finetune_only and config.finetune is None:
        raise ConfigError(
            ["[finetune]: `layerprobe finetune` runs this section, which the config lacks. Add one, e.g. "
             "`[finetune]` with `modes = [\"finetune\"]` and `unfreeze_blocks = 1`"],
            config.source,
        )
    dataset, split, untested = open_splits(config)
    if not finetune_only:
        check_grid_values(config)
    check_output_folder(config.output.dir)
    extractions = [] if finetune_only else plan_extractions(config)
    store = FeatureStore(config.features.store)
    out = config.output.dir
    out.mkdir(parents=True, exist_ok=True)
    log(
        f"{len(dataset)} images, {len(dataset.class_names)} classes; train split {split['train_split']!r}, "
        f"test split {split['test_split']!r}{' (made: stratified)' if split['made'] else ''}; store {store.root}"
    )
    if untested:
        log(f"warning: {untested_text(untested, split)}")
    table = ResultsTable(out / "results.csv", rebuild=lambda: recorded_rows(out), log=log)
    rows = RunRows(table, log)
    skipped: dict[str, str] = {}
    n_forward = 0
    if finetune_only:
        rows.count_kept(table.keep_earlier_rows(except_modes=config.finetune.modes))
        skipped.update(stored_skipped(store, table.rows))
    # One digest per run, passed down: a file touched after this line cannot give extract other keys.
    dataset_digest = dataset.digest(config.data.digest)
    classifiers, models = config.classifiers, out / "models"
    with contextlib.ExitStack() as stack:
        if client is None and config.cluster is not None and not finetune_only:
            client = stack.enter_context(open_client(config.cluster, log=log))
        executor = stack.enter_context(row_executor(client, n_jobs=classifiers.n_jobs))
        backbones: list[list[LayerToFit]] = []  # each extraction's layers
        on_cluster: list[LayerRowSpec] = []
        for number, extraction in enumerate(extractions, start=1):
            layers, forward = _extract(extraction, number, len(extractions), dataset, dataset_digest, store,
                                       skipped, log, progress=progress, client=client)
            n_forward += forward
            backbones.append(layers)
            specs = first_specs(layers, classifiers, split, models)  # the screening rows, or every row
            if client is None:
                fit_rows(specs, rows, executor)
            else:  # fitted on the cluster once every backbone is extracted
                on_cluster += specs
        fit_rows(on_cluster, rows, executor)
        # Then, in one order in-process and on a cluster: the rows on the screened layers, the multi-layer rows.
        fit_rows([spec for layers in backbones for spec in final_specs(layers, classifiers, split, models, table, log)],
                 rows, executor)
    fit_rows([multi_layer_spec(layers, classifiers, split, models) for layers in backbones
              if adds_multi_layer(classifiers, len(layers))], rows, InlineExecutor())
    fill_layer_logme(table)
    if config.finetune is not None:
        log(f"[finetune] modes {list(config.finetune.modes)}")
        fit_rows(finetune_specs(config, dataset, split, dataset_digest, log, progress=progress), rows, InlineExecutor())
    table.commit()  # every row is in: the earlier run's rows this run did not replace go
    return _report(rows, source=config.source, data=config.data, dataset=dataset, store=store, split=split,
                   untested=untested, skipped=skipped, n_forward=n_forward, started=started)


def _extract(
    extraction: Extraction, number: int, total: int, dataset: ImageDataset, dataset_digest: str,
    store: FeatureStore, skipped: dict[str, str], log: Callable[[str], None], *, progress: bool, client: Any,
) -> tuple[list[LayerToFit], int]:
    """Extract one backbone x pooling (nothing when the store has it); returns its layers and the images
    that went through the backbone. The unreadable images found go into `skipped`."""
    plan = extraction.plan
    log(
        f"[{number}/{total}] {plan.architecture}, weights {extraction.backbone.weights_label}, "
        f"{plan.layers[0].pooling} pooling: layers {[layer.name for layer in plan.layers]}"
    )
    keys = plan.keys(dataset_digest)
    n_forward = 0
    if all(store.has(key) for key in keys.values()):
        for name, key in keys.items():
            log(f"  cached   {name} ({key.entry_name})")
        skipped.update(store.info(next(iter(keys.values())).entry_name, root=dataset.root)["skipped"])
    else:
        report = extract_features(
            extraction.build(), dataset, store, client, progress=progress, log=lambda line: log(f"  {line}"),
            dataset_digest=dataset_digest,
        )
        n_forward = report.n_forward
        skipped.update(report.skipped)
    return [LayerToFit(extraction, info, keys[info.name], store) for info in plan.layers], n_forward


def _report(
    rows: RunRows, *, source: str, data: DataConfig, dataset: ImageDataset, store: FeatureStore, split: dict,
    untested: list[str], skipped: dict[str, str], n_forward: int, started: float,
) -> RunResult:
    """The closing steps: the advice, depth.png, summary.md, results.json and the log's report."""
    table, log = rows.table, rows.log
    out = table.path.parent
    pickled = sum(str(row.get("model_path", "")).endswith(".joblib") for row in table.rows)
    if pickled:
        log(f"note: {pickled} reused row(s) keep the pickled model (.joblib) an older layerprobe saved; "
            f"`layerprobe predict` loads those only with --trust. Delete their folders under {out / 'models'} "
            f"and rerun to save them as .skops.")
    rows.log_convergence()
    frame = table.frame
    read = ~np.isin(dataset.sample_ids, list(skipped))
    counts, test_counts = (np.bincount(dataset.labels[(np.asarray(dataset.splits) == split[name]) & read],
                                       minlength=len(dataset.class_names)) for name in ("train_split", "test_split"))
    majority = float(test_counts.max() / test_counts.sum()) if test_counts.sum() else None  # always the commonest
    facts = dict(n_train=int(counts.sum()), n_classes=len(counts), smallest_class=int(counts.min()),
                 largest_class=int(counts.max()), test_majority_rate=majority)
    advice = recommend(frame, **facts)
    # Trained rows against the frozen choice on the same held-out training images (issue 31.4).
    paired = paired_scores(frame, advice.frozen_choice, store, split["train_split"], dataset.class_names)
    if paired:
        advice = recommend(frame, **facts, paired=paired)
    next_steps = write_recommended(out, advice.row, log=log)
    plot_path = plot_depth(frame, out / "depth.png", recommended=advice.row, chance=majority)
    skipped_list = sorted(skipped.items())
    summary_path = write_run_summary(
        out, frame, source=source, advice=advice, data=data_text(data, dataset, split, untested),
        skipped=skipped_list, results_path=table.path, plot_path=plot_path, next_steps=next_steps,
    )
    files = {"results": table.path, "summary": summary_path, "plot": plot_path, "json": out / "results.json"}
    facts = {"path": str(data.path), "n_images": len(dataset), "class_names": list(dataset.class_names),
             "train_split": split["train_split"], "test_split": split["test_split"], "n_skipped": len(skipped_list)}
    json_path = write_results_json(files["json"], results_document(frame, advice, source=source, data=facts,
                                                                   files=files))
    log_report(
        log, frame, advice, n_skipped=len(skipped_list),
        counts=(f"{len(frame)} rows: {rows.fitted} fitted, {rows.reused} reused; {n_forward} images through a "
                f"backbone; {time.perf_counter() - started:.0f} s."),
        paths=files, next_steps=next_steps,
    )
    return RunResult(
        results=frame,
        advice=advice,
        output_dir=out,
        results_path=table.path,
        summary_path=summary_path,
        plot_path=plot_path,
        json_path=json_path,
        skipped=tuple(skipped_list),
        n_forward=n_forward,
        n_fitted=rows.fitted,
        n_reused=rows.reused,
    )
