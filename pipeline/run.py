"""Config-driven batch runs: every backbone x layer x pooling x classifier, nothing lost.

For each backbone (and pooling), one `FeatureExtractor` extracts all its
layers in one forward pass per batch; features already in the store cost
nothing. Then every classifier is fitted on each layer's training split
(hyperparameters by cross-validation inside it), scored once on the test
split, and saved with its predictions. The results table is rewritten
(atomically) after every row.

A finished row is recognised on rerun by its saved classifier's sidecar,
which records everything that determines the fit (store key, classifier,
grid, preprocessing, PCA, folds, seed, split definition): a matching row is
reused without loading features or fitting. So a killed run keeps its rows,
rerunning a config does no forward pass and no fit, and changing only the
classifiers reuses every feature.

Output directory layout::

    OUT/results.csv  summary.md  depth.png
    OUT/models/<store entry>/<classifier>.joblib|.json|.predictions.csv
    OUT/finetune/<mode>-<backbone>-<digest>/   (the [finetune] stage)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from layerprobe.features.backend import import_keras_quietly
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import ImageDataset, open_dataset
from layerprobe.features.keys import FeatureKey
from layerprobe.features.plans import ExtractionPlan, PlannedLayer, load_plan, plan_signature, save_plan
from layerprobe.features.store import FeatureSet, FeatureStore
from layerprobe.features.weights import WeightsUnavailableError
from layerprobe.pipeline.advice import Advice, recommend
from layerprobe.pipeline.classifiers import check_features, fit_classifier
from layerprobe.pipeline.config import BackboneConfig, ConfigError, DataConfig, ExperimentConfig
from layerprobe.pipeline.evaluate import evaluate
from layerprobe.pipeline.persistence import write_atomically, load_classifier, save_classifier, write_predictions
from layerprobe.pipeline.plots import plot_depth
from layerprobe.pipeline.predict import extractor_record, flat_features
from layerprobe.pipeline.results import markdown_table, results_frame, write_results, write_summary

__all__ = ["RunResult", "run_experiment", "split_dataset"]

_MAX_SKIPPED_LISTED = 20
# Columns of the table printed at the end of a run (summary.md and results.csv have more).
_CONSOLE_COLUMNS = ("mode", "backbone", "weights", "layer", "depth", "classifier", "cv_score", "test_accuracy")


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
        skipped: (sample id, reason) of every unreadable image.
        n_forward: Images that went through a backbone in this run (0 when all cached).
        n_fitted: Classifier rows fitted in this run.
        n_reused: Classifier rows reused from an earlier run.
    """

    results: pd.DataFrame
    advice: Advice
    output_dir: Path
    results_path: Path
    summary_path: Path
    plot_path: Path
    skipped: tuple[tuple[str, str], ...]
    n_forward: int
    n_fitted: int
    n_reused: int


def split_dataset(dataset: ImageDataset, data: DataConfig, *, source: str = "<config>") -> tuple[ImageDataset, dict]:
    """Check the train and test splits, or make them from a single-split dataset.

    Returns:
        The dataset (with new split names when they were made) and the split
        definition recorded with every fitted classifier.

    Raises:
        ConfigError: If the dataset has several splits and not both named ones,
            or a single split that cannot be split stratified (a class with one image).
    """
    names = dataset.split_names
    definition = {"train_split": data.train_split, "test_split": data.test_split}
    if data.train_split in names and data.test_split in names:
        return dataset, {**definition, "made": False}
    if len(names) != 1:
        raise ConfigError(
            [
                f"[data] train_split/test_split: the data at {data.path} has the splits {list(names)}, not "
                f"both {data.train_split!r} and {data.test_split!r}. Name two of its splits, or use data "
                f"with a single split to have a stratified one made (test_size, seed). Received: "
                f"train_split={data.train_split!r}, test_split={data.test_split!r}"
            ],
            source,
        )
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    few = {name: int(count) for name, count in zip(dataset.class_names, counts) if count < 2}
    problem = f"class(es) {sorted(few)} have fewer than 2 images, one for each split. Received: {few}" if few else None
    if problem is None:
        try:
            train, test = train_test_split(
                np.arange(len(dataset)), test_size=data.test_size, stratify=dataset.labels, random_state=data.seed
            )
        except ValueError as error:
            problem = f"{error} Received: test_size={data.test_size}"
    if problem is not None:
        raise ConfigError(
            [
                f"[data] test_size: the data at {data.path} has a single split, and no stratified train/test "
                f"split of it can be made. Add images, change test_size, or split the data yourself "
                f"(train/ and test/ folders): {problem}"
            ],
            source,
        )
    splits = np.empty(len(dataset), dtype=object)
    splits[train], splits[test] = data.train_split, data.test_split
    made = {**definition, "made": True, "test_size": data.test_size, "seed": data.seed}
    return dataclasses.replace(dataset, splits=list(splits)), made


def _class_problems(
    class_names: Sequence[str], y_train: np.ndarray, y_test: np.ndarray, split: dict
) -> tuple[str | None, list[str]]:
    """Why classifiers cannot be fitted on these labels (None if they can), and the classes the test split lacks."""
    n_train = np.bincount(y_train, minlength=len(class_names))
    untested = [name for name, count in zip(class_names, np.bincount(y_test, minlength=len(class_names))) if not count]
    few = {name: int(count) for name, count in zip(class_names, n_train) if count < 2}
    if len(class_names) < 2:
        problem = (
            f"there is a single class {list(class_names)}; a classifier needs at least 2. Add a "
            f"class folder (or CSV label) per class"
        )
    elif few:
        problem = (
            f"class(es) {sorted(few)} have fewer than 2 images in the train split {split['train_split']!r}; "
            f"fitting and cross-validating a classifier needs at least 2 per class. Add training images of "
            f"them, or remove them from the data. Received: training images {few}"
        )
    else:
        problem = None
    return problem, untested


@dataclass
class _Extraction:
    """One backbone x pooling: the extractor's arguments, its plan, and the extractor once built."""

    backbone: BackboneConfig
    settings: dict
    plan: ExtractionPlan
    extractor: FeatureExtractor | None = None

    def build(self) -> FeatureExtractor:
        if self.extractor is None:
            self.extractor = FeatureExtractor(**self.settings)
        return self.extractor


def _extractor_settings(config: ExperimentConfig, backbone: BackboneConfig, pooling: str) -> dict:
    """The `FeatureExtractor` arguments of one backbone x pooling, JSON-ready."""
    return {
        "model": backbone.model,
        "weights": backbone.weights,
        "layers": list(backbone.layers),
        "pooling": pooling,
        "input_size": config.features.input_size,
        "batch_size": config.features.batch_size,
        "dtype": config.features.dtype,
        "model_kwargs": dict(backbone.model_kwargs),
        "seed": backbone.seed,
    }


def _plan_extractions(config: ExperimentConfig) -> list[_Extraction]:
    """Every backbone x pooling with its feature keys, known before any work.

    A plan saved in the store by an earlier run with the same settings gives the
    keys without building the backbone (no Keras import when everything is
    cached); otherwise the extractor is built, which checks the backbone config.

    Raises:
        ConfigError: Listing every backbone that cannot be built as configured.
    """
    extractions, built, problems = [], [], []
    for number, backbone in enumerate(config.backbones, start=1):
        for pooling in config.features.pooling:
            settings = _extractor_settings(config, backbone, pooling)
            signature = plan_signature(settings)
            plan, extractor = load_plan(config.features.store, signature), None
            if plan is None:
                try:
                    extractor = FeatureExtractor(**settings)
                except (ValueError, WeightsUnavailableError) as error:
                    problems.append(f"[[backbones]] #{number} ({backbone.model}): {error}")
                    break  # the other poolings would fail the same way
                plan = extractor.plan()
                built.append((signature, plan))
            extractions.append(_Extraction(backbone, settings, plan, extractor))
    if problems:
        raise ConfigError(problems, config.source)
    for signature, plan in built:
        save_plan(config.features.store, signature, plan)
    return extractions


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _fit_settings(config: ExperimentConfig, key: FeatureKey, classifier: str, split: dict) -> dict:
    """Everything that determines a fitted row; a saved row with equal settings is reused."""
    settings = config.classifiers
    return _jsonable(
        {
            "store_key": key.digest,
            "classifier": classifier,
            "param_grid": settings.param_grid(classifier),
            "preprocessing": list(settings.preprocessing),
            "pca_components": settings.pca_components,
            "cv": settings.cv,
            "seed": settings.seed,
            "split": split,
        }
    )


def _finished_row(stem: Path, settings: dict) -> dict | None:
    """The row saved with a classifier fitted under `settings`, or None."""
    try:
        _, sidecar = load_classifier(stem)
    except (FileNotFoundError, ValueError):
        return None
    if sidecar.get("fit_settings") != settings or "row" not in sidecar:
        return None
    return {**sidecar["row"], "model_path": str(stem.with_suffix(".joblib"))}


@dataclass(frozen=True)
class _Layer:
    """One layer's features to fit classifiers on."""

    extraction: _Extraction
    info: PlannedLayer
    key: FeatureKey
    store: FeatureStore


def _load_splits(layer: _Layer, split: dict) -> tuple[FeatureSet, FeatureSet]:
    """The layer's train and test features, checked before any classifier sees them.

    Raises:
        ValueError: If a class has fewer than 2 training rows once unreadable
            images are left out, or the features hold NaN or inf.
    """
    features = layer.store.load(layer.key)
    train, test = (features.split(split[name]) for name in ("train_split", "test_split"))
    where = f"layer {layer.info.name} (store entry {layer.key.entry_name})"
    problem, _ = _class_problems(features.class_names, train.y, test.y, split)
    if problem is not None:
        raise ValueError(
            f"Unreadable images were left out of {where} (`layerprobe store info {layer.store.root} "
            f"{layer.key.entry_name}` lists them), and now {problem}"
        )
    for name, part in zip(("train_split", "test_split"), (train, test)):
        check_features(flat_features(part), name=f"{where}, split {split[name]!r},", sample_ids=part.sample_ids)
    return train, test


def _fit_row(
    layer: _Layer,
    classifier: str,
    settings: dict,
    stem: Path,
    config: ExperimentConfig,
    train: FeatureSet,
    test: FeatureSet,
) -> dict:
    """Fit on the training split only, score once on the test split, save everything.

    The old sidecar goes first: the files of a fit killed half-way are never
    paired with the row of an earlier fit.
    """
    stem.with_suffix(".json").unlink(missing_ok=True)
    options = config.classifiers
    X_train, X_test = flat_features(train), flat_features(test)
    fit = fit_classifier(
        X_train,
        train.y,
        classifier,
        param_grid=settings["param_grid"],
        preprocessing=options.preprocessing,
        pca_components=options.pca_components,
        cv=options.cv,
        n_jobs=options.n_jobs,
        random_state=options.seed,
    )
    scores = evaluate(fit.estimator, X_test, test.y, test.class_names)
    row = {
        "mode": "frozen",
        "backbone": layer.extraction.plan.architecture,
        "weights": layer.extraction.backbone.weights_label,
        "layer": layer.info.name,
        "stage": layer.info.stage,
        "depth": layer.info.depth,
        "pooling": layer.key.pooling,
        "classifier": classifier,
        "feature_dim": X_train.shape[1],
        "n_train": len(X_train),
        "n_test": len(X_test),
        "cv_score": fit.cv_score,
        "test_accuracy": scores.accuracy,
        "test_balanced_accuracy": scores.balanced_accuracy,
        "test_macro_f1": scores.macro_f1,
        "fit_seconds": round(fit.fit_seconds, 3),
        "best_params": json.dumps(fit.best_params, sort_keys=True, default=str),
        "store_entry": layer.key.entry_name,
    }
    proba = fit.estimator.predict_proba(X_test) if hasattr(fit.estimator, "predict_proba") else None
    predictions_path = stem.with_name(f"{stem.name}.predictions.csv")
    write_predictions(predictions_path, test.sample_ids, test.y, scores.y_pred, test.class_names, proba=proba)
    sidecar = {
        "fit_settings": settings,
        "row": row,
        "store_key": layer.key.to_dict(),
        "store_entry": layer.key.entry_name,
        "store": str(layer.store.root),
        "extractor": extractor_record(layer.extraction.settings, layer.info.name, layer.extraction.plan.input_size),
        "classifier": classifier,
        "best_params": fit.best_params,
        "cv_score": fit.cv_score,
        "scores": scores.as_dict(),
        "class_names": list(test.class_names),
    }
    model_path = save_classifier(stem, fit.estimator, sidecar)
    return {**row, "model_path": str(model_path)}


class _Table:
    """The results so far, rewritten to `path` (atomically) after every new row."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    @property
    def frame(self) -> pd.DataFrame:
        return results_frame(self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        write_results(self.frame, self.path)


def _fit_layer(layer: _Layer, config: ExperimentConfig, split: dict, table: _Table, log: Callable[[str], None]) -> int:
    """Add one row per classifier for `layer`: reused when finished before, else fitted.

    Features are loaded only if some classifier needs fitting. Returns the number fitted.
    """
    jobs = []
    for classifier in config.classifiers.names:
        stem = config.output.dir / "models" / layer.key.entry_name / classifier
        settings = _fit_settings(config, layer.key, classifier, split)
        jobs.append((classifier, stem, settings, _finished_row(stem, settings)))
    features = None
    if any(finished is None for *_, finished in jobs):
        features = _load_splits(layer, split)
    for classifier, stem, settings, finished in jobs:
        row = finished or _fit_row(layer, classifier, settings, stem, config, *features)
        log(
            f"  {'fitted' if finished is None else 'reused'} {layer.info.name} / {classifier}: "
            f"cv {row['cv_score']:.3f}, test {row['test_accuracy']:.3f}"
        )
        table.add(row)
    return sum(finished is None for *_, finished in jobs)


def _slug(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _finetune_rows(
    config: ExperimentConfig, dataset: ImageDataset, split: dict, log: Callable[[str], None]
) -> list[dict]:
    """The `[finetune]` stage: train end to end, score once on the test split.

    "finetune" runs once per backbone that has weights; "scratch" once per
    architecture. A finished run's row is saved beside it and reused when its
    settings match, like the classifier rows. An unfinished (killed) run
    resumes from its checkpoint if its settings match, and starts over if not.
    """
    import_keras_quietly()
    from layerprobe.pipeline.finetune import EpochLogger, FinetuneConfig, evaluate_model, finetune, train_from_scratch

    stage = config.finetune
    options = FinetuneConfig.from_dict(stage.options)
    train, test = dataset.subset(split["train_split"]), dataset.subset(split["test_split"])
    jobs: dict[str, tuple[str, BackboneConfig]] = {}
    for backbone in config.backbones:
        architecture = {"model": backbone.model, "model_kwargs": dict(backbone.model_kwargs)}
        if "finetune" in stage.modes and backbone.weights is not None:
            jobs.setdefault(_slug("finetune", architecture, backbone.weights), ("finetune", backbone))
        if "scratch" in stage.modes:
            jobs.setdefault(_slug("scratch", architecture), ("scratch", backbone))
    rows = []
    for digest, (mode, backbone) in jobs.items():
        run_dir = config.output.dir / "finetune" / f"{mode}-{backbone.model}-{digest}"
        settings = _jsonable(
            {
                "mode": mode,
                "model": backbone.model,
                "model_kwargs": dict(backbone.model_kwargs),
                "weights": backbone.weights if mode == "finetune" else None,
                "input_size": config.features.input_size,
                "options": options.to_dict(),
                "dataset": dataset.digest(),
                "split": split,
            }
        )
        row_path = run_dir / "row.json"
        saved = json.loads(row_path.read_text(encoding="utf-8")) if row_path.is_file() else {}
        if saved.get("settings") == settings:
            log(f"  reused   {mode} {backbone.model} ({run_dir})")
            rows.append(saved["row"])
            continue
        started = run_dir / "settings.json"
        resume = started.is_file() and json.loads(started.read_text(encoding="utf-8")) == settings
        log(f"  {'resuming' if resume else 'training'} {mode} {backbone.model} ({run_dir})")
        text = json.dumps(settings, indent=2)
        write_atomically(started, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        common = dict(
            output_dir=run_dir, input_size=config.features.input_size,
            model_kwargs=dict(backbone.model_kwargs), config=options, resume=resume,
            callbacks=[EpochLogger(lambda line: log(f"    {line}"))],
        )
        if mode == "finetune":
            result = finetune(backbone.model, train, weights=backbone.weights, **common)
        else:
            result = train_from_scratch(backbone.model, train, **common)
        scores = evaluate_model(result, test)
        row = {
            "mode": mode,
            "backbone": result.backbone,
            "weights": backbone.weights_label if mode == "finetune" else "none",
            "layer": "(end to end)",
            "pooling": "avg",
            "classifier": "softmax head",
            "n_train": len(train),
            "n_test": scores["n_test"],
            "test_accuracy": scores["accuracy"],
            "test_balanced_accuracy": scores["balanced_accuracy"],
            "test_macro_f1": scores["macro_f1"],
            "fit_seconds": round(result.fit_seconds, 3),
            "best_params": json.dumps({name: scores[name] for name in ("head_init", "unfreeze_blocks", "learning_rate", "block_lr_decay", "epochs")}),
            "model_path": str(result.model_path),
        }
        text = json.dumps({"settings": settings, "row": row}, indent=2)
        write_atomically(row_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log(f"  {mode} {result.backbone}: test {scores['accuracy']:.3f}")
        rows.append(row)
    return rows


def _untested_text(untested: list[str], split: dict) -> str:
    return (
        f"class(es) {untested} have no images in the test split {split['test_split']!r}: the test scores "
        f"measure the other classes only (the classifiers still learn and predict them)."
    )


def _data_text(data: DataConfig, dataset: ImageDataset, split: dict, untested: list[str]) -> str:
    made = f" (made: stratified, test_size {split['test_size']}, seed {split['seed']})" if split["made"] else ""
    text = (
        f"`{data.path}`: {len(dataset)} images, classes {list(dataset.class_names)}; "
        f"train split {split['train_split']!r}, test split {split['test_split']!r}{made}."
    )
    return f"{text} Note: {_untested_text(untested, split)}" if untested else text


def _skipped_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "None: every image decoded."
    lines = [f"{len(skipped)} image(s) could not be decoded and were left out:", ""]
    lines += [f"- `{sample_id}`: {reason}" for sample_id, reason in skipped[:_MAX_SKIPPED_LISTED]]
    if len(skipped) > _MAX_SKIPPED_LISTED:
        lines.append(f"- ... and {len(skipped) - _MAX_SKIPPED_LISTED} more (`layerprobe store info` lists them all)")
    return "\n".join(lines)


def _earlier_rows(path: Path, modes: Sequence[str]) -> list[dict]:
    """The rows of the results table at `path` whose mode is not in `modes` ([] if there is none)."""
    if not path.is_file():
        return []
    return [row for row in pd.read_csv(path).to_dict("records") if row["mode"] not in modes]


def _stored_skipped(store: FeatureStore, rows: list[dict]) -> dict[str, str]:
    """Unreadable images recorded in the store entries of `rows` that the store still holds."""
    entries = {row["store_entry"] for row in rows if isinstance(row.get("store_entry"), str)}
    held = entries & {entry["entry"] for entry in store.entries()}
    return {sample_id: reason for entry in held for sample_id, reason in store.info(entry)["skipped"]}


def run_experiment(
    config: ExperimentConfig,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    finetune_only: bool = False,
) -> RunResult:
    """Run a whole experiment: extract, fit, score, save, summarise, recommend.

    Args:
        config: From `layerprobe.pipeline.config.load_config` or `config_from_dict`.
        log: Called with one line per event (cached/computed features,
            fitted/reused rows, the final table and advice).
        progress: Show progress bars while extracting.
        finetune_only: Run only the `[finetune]` stage (`layerprobe finetune`):
            its rows replace those of the same modes in the existing results
            table, whose other rows are kept; no extraction, no classifier fit.

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: Before any work, if `finetune_only` is set and the config
            has no `[finetune]` section, if the data lack the named splits, have
            a single class or a class with fewer than 2 training images, or a
            backbone cannot be built as configured (unknown layer, weights file
            that does not fit, unknown model_kwargs).
        ValueError: Before fitting a layer's classifiers, if its features hold
            NaN or inf, or unreadable images left a class with fewer than 2
            training rows.
    """
    started = time.perf_counter()
    if finetune_only and config.finetune is None:
        raise ConfigError(
            ["[finetune]: `layerprobe finetune` runs this section, which the config lacks. Add one, e.g. "
             "`[finetune]` with `modes = [\"finetune\"]` and `unfreeze_blocks = 1`"],
            config.source,
        )
    dataset, split = split_dataset(open_dataset(config.data.path), config.data, source=config.source)
    splits = np.asarray(dataset.splits)
    problem, untested = _class_problems(
        dataset.class_names,
        dataset.labels[splits == split["train_split"]],
        dataset.labels[splits == split["test_split"]],
        split,
    )
    if problem is not None:
        raise ConfigError([f"[data] path: in {config.data.path}, {problem}"], config.source)
    extractions = [] if finetune_only else _plan_extractions(config)
    store = FeatureStore(config.features.store)
    out = config.output.dir
    out.mkdir(parents=True, exist_ok=True)
    log(
        f"{len(dataset)} images, {len(dataset.class_names)} classes; train split {split['train_split']!r}, "
        f"test split {split['test_split']!r}{' (made: stratified)' if split['made'] else ''}; store {store.root}"
    )
    if untested:
        log(f"warning: {_untested_text(untested, split)}")
    table = _Table(out / "results.csv")
    skipped: dict[str, str] = {}
    n_forward = n_fitted = n_reused = 0
    if finetune_only:
        table.rows = _earlier_rows(table.path, config.finetune.modes)
        skipped.update(_stored_skipped(store, table.rows))
        n_reused = len(table.rows)
    dataset_digest = dataset.digest()
    for number, extraction in enumerate(extractions, start=1):
        plan = extraction.plan
        log(
            f"[{number}/{len(extractions)}] {plan.architecture}, weights {extraction.backbone.weights_label}, "
            f"{plan.layers[0].pooling} pooling: layers {[layer.name for layer in plan.layers]}"
        )
        keys = plan.keys(dataset_digest)
        if all(store.has(key) for key in keys.values()):
            for name, key in keys.items():
                log(f"  cached   {name} ({key.entry_name})")
            skipped.update(store.info(next(iter(keys.values())).entry_name)["skipped"])
        else:
            report = extraction.build().extract(dataset, store, progress=progress, log=lambda line: log(f"  {line}"))
            n_forward += report.n_forward
            skipped.update(report.skipped)
        for info in plan.layers:
            fitted = _fit_layer(_Layer(extraction, info, keys[info.name], store), config, split, table, log)
            n_fitted += fitted
            n_reused += len(config.classifiers.names) - fitted
    if config.finetune is not None:
        log(f"[finetune] modes {list(config.finetune.modes)}")
        for row in _finetune_rows(config, dataset, split, log):
            table.add(row)
    frame, results_path = table.frame, table.path
    is_train = (np.asarray(dataset.splits) == split["train_split"]) & ~np.isin(dataset.sample_ids, list(skipped))
    counts = np.bincount(dataset.labels[is_train], minlength=len(dataset.class_names))
    advice = recommend(frame, n_train=int(counts.sum()), n_classes=len(counts), smallest_class=int(counts.min()))
    plot_path = plot_depth(frame, out / "depth.png")
    skipped_list = sorted(skipped.items())
    summary_path = write_summary(
        out / "summary.md",
        frame,
        title=f"layerprobe run: {config.source}",
        sections={
            "Recommendation": advice.text,
            "Data": _data_text(config.data, dataset, split, untested),
            "Unreadable images": _skipped_text(skipped_list),
            "Files": (
                f"- results: `{results_path}`\n- plot: `{plot_path}`\n- models and predictions: `{out / 'models'}`"
            ),
        },
    )
    log("")
    log(markdown_table(frame, _CONSOLE_COLUMNS))
    log("")
    log(advice.text)
    if skipped_list:
        log(f"{len(skipped_list)} unreadable image(s) left out (listed in summary.md).")
    log(
        f"\n{len(frame)} rows: {n_fitted} fitted, {n_reused} reused; {n_forward} images through a backbone; "
        f"{time.perf_counter() - started:.0f} s."
        f"\nresults: {results_path}\nsummary: {summary_path}\nplot:    {plot_path}"
    )
    return RunResult(
        results=frame,
        advice=advice,
        output_dir=out,
        results_path=results_path,
        summary_path=summary_path,
        plot_path=plot_path,
        skipped=tuple(skipped_list),
        n_forward=n_forward,
        n_fitted=n_fitted,
        n_reused=n_reused,
    )
