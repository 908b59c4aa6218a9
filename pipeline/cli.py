"""The `layerprobe` command line. The only place that turns exceptions into messages.

    layerprobe [--verbose] [--version] COMMAND ...
    layerprobe init DATA [--config layerprobe.toml] [--model NAME|PATH.keras] [--full] [--force]
    layerprobe layers MODEL|PATH.keras [--input-size N]
    layerprobe extract --model VGG16 --weights PATH|imagenet|none --layers a,b --data DIR|CSV --store STORE
                       [--scheduler tcp://HOST:8786 | --workers N [--threads-per-worker N] [--memory-limit 4GB]]
    layerprobe store ls|info|rm STORE [ENTRY...]
    layerprobe run [CONFIG.toml] [--out DIR] [--store DIR] [--json] [--scheduler ADDRESS | --workers N | --gpus 0,1]
    layerprobe finetune CONFIG.toml [--out DIR] [--store DIR]
    layerprobe predict CLASSIFIER.skops|MODEL.keras --data DIR|CSV|IMAGE [--out predictions.csv] [--trust]
    layerprobe export CLASSIFIER.skops|MODEL.keras --out MODEL.keras [--trust]

Errors a user can fix (`LayerprobeError`, and a path given on the command line
or in the config that is missing or not writable) are printed as
`layerprobe COMMAND: error: ...` with exit status 2. Any other exception is a
bug and keeps its traceback.

TensorFlow's C++ start-up notices are muted (Keras is imported through
`layerprobe.features.backend.import_keras_quietly`, and TF_CPP_MIN_LOG_LEVEL
is 2 unless set); `--verbose` shows them. The library logs through `logging`
(logger "layerprobe", silent unless configured); the CLI prints its INFO
lines on stdout (stderr with `run --json`, whose stdout is the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Callable, Sequence

__all__ = ["build_parser", "comma_list", "main", "positive_int"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
_MAX_SKIPPED_PRINTED = 20


def _command(name: str):
    def register(function):
        _COMMANDS[name] = function
        return function

    return register


def comma_list(text: str) -> list[str]:
    """An argparse type: "a, b,c" -> ["a", "b", "c"] (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    from ..core.checks import is_positive_int

    try:
        value = int(text)
    except ValueError:
        value = None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}")
    return value


def _batch_size(text: str) -> int | str:
    """An argparse type: "auto" or an integer >= 1."""
    return text if text == "auto" else positive_int(text)


def _weights(text: str) -> str | None:
    from ..features.backbone import parse_weights

    try:
        return parse_weights(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _model_kwargs(text: str) -> dict:
    """An argparse type: a JSON object of constructor arguments, e.g. '{"num_layers": 4}'."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object, e.g. \'{{"alpha": 0.35}}\'. Received: {text!r}')
    return value


def _print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    from .tables import format_table

    print(format_table(rows, columns) if rows else "(none)")


@_command("init")
def _init(args: argparse.Namespace) -> int:
    from .config import write_starter_config

    path, layout = write_starter_config(args.data, args.config, model=args.model, full=args.full, force=args.force,
                                        encoding=args.encoding)
    if layout is not None:
        print(f"{layout.path}: {layout.describe()}")
    print(f"wrote {path}{': every key with its default and a comment' if args.full else ''}. "
          f"Next: layerprobe run {path}")
    return 0


@_command("layers")
def _layers(args: argparse.Namespace) -> int:
    from ..features.backbone import load_backbone
    from ..features.layers import describe_layers
    from ..features.registry import BACKBONES

    if args.list or not args.model:
        for name, spec in BACKBONES.items():
            print(f"{name:20s} input {spec.default_input_size:>3d} (min {spec.min_input_size:>2d})  {spec.preprocessing}")
        return 0
    from ..features.model_files import is_model_file

    if is_model_file(args.model):
        model, spec, input_size, note = _model_file_layers(args)
    else:
        backbone = load_backbone(args.model, weights=None, input_size=args.input_size,
                                 model_kwargs=args.model_kwargs, preprocessing=args.preprocessing)
        model, spec, input_size, note = backbone.model, backbone.spec, backbone.input_size, ""
    infos = describe_layers(model, spec)
    if not args.all:
        infos = [info for info in infos if info.is_candidate or info.stage is not None or info is infos[-1]]
    rows = [
        {
            "layer": info.name,
            "output_shape": "x".join(map(str, info.output_shape)),
            "alias": " ".join(info.aliases + (("top",) if info is infos[-1] else ())),
            "depth": f"{info.depth:.2f}",
            "key_id": info.stable_id if info.stable_id != info.name else "",
        }
        for info in infos
    ]
    print(f"{spec.name} at {input_size}x{input_size}: "
          f"{'all layers' if args.all else 'cut layers (pass --all for every layer)'}{note}")
    _print_table(rows, ["layer", "output_shape", "alias", "depth", "key_id"])
    print("Select with --layers NAME[,NAME...], aliases 'stages', 'stages:K' (every K-th), 'stageK', 'last:N', "
          "'top', or depths like 0.5.")
    return 0


def _model_file_layers(args: argparse.Namespace):
    """(backbone part, spec, input size, note on its source and preprocessing) of a saved model file."""
    from ..features.model_files import open_model_file
    from ..features.registry import resolve_preprocessing

    opened = open_model_file(args.model, input_size=args.input_size)
    if args.preprocessing is not None:
        preprocessing, source = resolve_preprocessing(args.preprocessing), "--preprocessing"
    else:
        preprocessing, source = opened.preprocessing, opened.preprocessing_source
    spec = opened.spec(preprocessing or (None, "none"))
    told = (f"preprocessing {spec.preprocessing} ({source})" if preprocessing is not None else
            f"preprocessing unknown ({source}): pass --preprocessing none|caffe|tf|torch|FAMILY to extract")
    return opened.model, spec, opened.input_size, f"\n{opened.path}: {opened.label}; {told}"


@_command("extract")
def _extract(args: argparse.Namespace) -> int:
    from ..features.backend import import_keras_quietly
    from ..features.extract import FeatureExtractor
    from ..features.inputs import open_dataset
    from ..features.store import FeatureStore
    from .cluster import extract_features, open_client

    dataset = open_dataset(args.data, encoding=args.encoding)
    store = FeatureStore(args.store)
    import_keras_quietly()
    extractor = FeatureExtractor(
        args.model,
        weights=args.weights,
        layers=args.layers,
        pooling=args.pooling,
        input_size=args.input_size,
        batch_size=args.batch_size,
        dtype=args.dtype,
        mixed_precision=args.mixed_precision,
        model_kwargs=args.model_kwargs,
        preprocessing=args.preprocessing,
        dataset_digest=args.dataset_digest,
        max_flatten_dim=args.max_flatten_dim,
        decoder=args.decoder,
    )
    print(f"{len(dataset)} images, {len(dataset.class_names)} classes, splits {list(dataset.split_names)}; "
          f"{extractor.backbone.architecture} at {extractor.backbone.input_size}px, layers {extractor.layer_names}")
    with open_client(_cluster_settings(args), log=print) as client:
        report = extract_features(
            extractor, dataset, store, client, chunk_size=args.chunk_size, n_workers=args.decode_threads,
            progress=not args.no_progress, log=print,
        )
    for sample_id, reason in report.skipped[:_MAX_SKIPPED_PRINTED]:
        print(f"skipped  {sample_id}: {reason}")
    if len(report.skipped) > _MAX_SKIPPED_PRINTED:
        print(f"skipped  ... and {len(report.skipped) - _MAX_SKIPPED_PRINTED} more (`layerprobe store info` lists them all)")
    print(report.summary())
    print(f"store: {store.root}")
    return 0


@_command("store")
def _store(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..features.store import FeatureStore

    if args.store is None:
        from .config import DEFAULT_STORE

        if args.action != "ls":
            raise InputError(
                f"`layerprobe store {args.action}` needs the store and an entry: layerprobe store {args.action} STORE "
                f"ENTRY (`layerprobe store ls STORE` lists the entries). Received: no STORE"
            )
        args.store = DEFAULT_STORE  # the store `layerprobe run` uses by default, in this folder
    if not os.path.isdir(args.store):
        raise InputError(
            f"No feature store at {args.store}: {'it is a file' if os.path.exists(args.store) else 'the folder does not exist'}. "
            f"Give the folder passed as --store to `layerprobe extract` or [features] store of a run. "
            f"Received: STORE={args.store!r}"
        )
    store = FeatureStore(args.store)
    if args.action == "ls":
        entries = store.entries()
        ok = all(row["status"] == "ok" for row in entries)
        if args.wide:
            _print_table([_store_row(row) for row in entries], [
                "entry", "backbone", "weights", "layer", "pooling", "input_size", "dataset", "n_samples", "n_skipped",
                "size_mb", "status"])
        else:
            _print_table(_short_store_rows(entries), ["id", "backbone", "layer", "pooling", "px", "dataset", "images",
                                                       "MB", *([] if ok else ["status"])])
        return 0 if ok else 1
    if not args.entries:
        raise InputError(
            f"`layerprobe store {args.action}` needs an entry name; `layerprobe store ls {args.store}` lists them. "
            f"Received: no ENTRY"
        )
    for name in args.entries:
        if args.action == "info":
            info = store.info(name)
            # Where the numbers were computed (not part of the key), and what differs in this process.
            info["environment"] = info["metadata"].pop("environment", "not recorded (older layerprobe)")
            if isinstance(info["environment"], dict):
                from ..features.environment import (
                    environment_differences,
                    numerics_environment,
                )

                info["environment_differences_from_now"] = {
                    field: {"then": then, "now": now}
                    for field, (then, now) in environment_differences(info["environment"], numerics_environment()).items()
                }
            if args.verify:
                info["verified"] = store.verify(name)
            print(json.dumps(info, indent=2, default=str))
        else:
            print(f"removed {store.remove(name)}")
    return 0


@_command("run")
@_command("finetune")
def _run(args: argparse.Namespace) -> int:
    result = _run_default(args) if args.config is None else _run_config(args)
    if getattr(args, "json", False):  # `run --json`; the log went to stderr
        print(result.json_path.read_text(encoding="utf-8"), end="")
    return 0


def _run_default(args: argparse.Namespace):
    from .config import DEFAULT_OUTPUT_DIR, DEFAULT_STORE
    from .results import output_errors

    if _cluster_settings(args) is not None:
        from ..core.errors import InputError

        raise InputError(
            "The cluster options (--scheduler, --workers, --gpus...) need an experiment config; the "
            "embedded default experiment runs in-process. Received: no CONFIG"
        )
    from .default_experiment import run_default

    with output_errors(args.out or DEFAULT_OUTPUT_DIR):
        return run_default(args.out or DEFAULT_OUTPUT_DIR, store=args.store or DEFAULT_STORE,
                           progress=not args.no_progress)


def _run_config(args: argparse.Namespace):
    from .config import load_config
    from .results import output_errors
    from .run import run_experiment

    config = load_config(args.config).with_paths(output_dir=args.out, store=args.store)
    config = dataclasses.replace(config, cluster=_cluster_settings(args, config.cluster))
    with output_errors(config.output.dir):
        return run_experiment(config, progress=not args.no_progress, finetune_only=args.command == "finetune")


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_images

    predict_images(args.classifier, args.data, out=args.out, store=args.store, progress=not args.no_progress,
                   trust=args.trust)
    return 0


@_command("export")
def _export(args: argparse.Namespace) -> int:
    from .export import export_model

    export_model(args.classifier, args.out, trust=args.trust)
    return 0


def _short_digest(digest: str | None) -> str:
    return "" if not digest else str(digest).removeprefix("sha256:")[:8]


def _store_row(row: dict) -> dict:
    """An entry of `FeatureStore.entries` as `store ls` shows it: what tells entries apart, briefly."""
    if row.get("status") != "ok":
        return row
    source = _weights_name(row).replace("none", "random init")
    root = row.get("dataset_root")
    return {
        **row,
        "weights": f"{source} {_short_digest(row.get('weights'))}",
        "dataset": f"{os.path.basename(str(root).rstrip('/')) if root else 'arrays'} {_short_digest(row.get('dataset'))}",
    }


def _short_store_rows(entries: list[dict]) -> list[dict]:
    """`store ls` rows that fit 120 columns: the digest to name an entry by, backbone and weights named once."""
    from .tables import backbone_labels

    shown = [_store_row(row) for row in entries]
    labels = backbone_labels([{"backbone": row.get("backbone"), "weights": row.get("weights_source")} for row in
                              [{**entry, "weights_source": _weights_name(entry)} for entry in entries]])
    return [
        {"id": row["entry"].rsplit(".", 1)[-1][:10], "status": row.get("status"),
         **({} if row.get("status") != "ok" else {
             "backbone": label, "layer": row.get("layer"), "pooling": row.get("pooling"), "px": row.get("input_size"),
             "dataset": row["dataset"].split(" ")[0], "images": row.get("n_samples"), "MB": row.get("size_mb")})}
        for row, label in zip(shown, labels)
    ]


def _weights_name(row: dict) -> str:
    """The weights as the tables name them: "imagenet", "none", or the file's name."""
    source = str(row.get("weights_source") or "?")
    if source == "random init":
        return "none"
    return source if source in ("imagenet", "saved") else os.path.basename(source)


class _FinetuneHelp(argparse.Action):
    """`layerprobe finetune --help`: the usual help, then every [finetune] key with its default.

    The keys come from `FinetuneConfig`, whose package imports Keras: they are
    read only when this help is asked for.
    """

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .config.template import finetune_keys_help

        parser.epilog = finetune_keys_help()
        parser.print_help()
        parser.exit()


def _add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="backbone name (see `layerprobe layers --list`), PATH to a saved .keras model, "
        "or a keras-hub model (keras_hub:CLASS with --model-kwargs, keras_hub:preset:NAME, a preset folder)"
    )
    parser.add_argument(
        "--weights", default="imagenet", type=_weights,
        help="imagenet | none | PATH to .weights.h5/.h5 (default: imagenet; for a .keras model: its own)",
    )
    parser.add_argument("--input-size", type=positive_int, default=None, metavar="N", help=_INPUT_SIZE_HELP)
    _add_model_kwargs_argument(parser)
    _add_preprocessing_argument(parser)


_INPUT_SIZE_HELP = ("side in pixels of the square images fed to the model; images are resized to it "
                    "(default: the model's, e.g. 224 for VGG16)")


def _add_model_kwargs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-kwargs", default=None, type=_model_kwargs, metavar="JSON",
        help='constructor arguments as a JSON object, e.g. \'{"alpha": 0.35}\' or, for keras_hub:DINOV2Backbone, '
             '\'{"patch_size": 8, "num_layers": 4, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 128}\'',
    )


def _add_preprocessing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preprocessing", default=None,
        help="for a .keras model or keras-hub model: none | caffe | tf | torch | a family name (default: from "
             "layerprobe's metadata beside the file or the model's graph; a keras-hub preset's image converter)",
    )


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "dask cluster", "run on a dask cluster (default: in-process, or for `run` the config's [cluster]); the "
        "workers must see the feature store at the same path",
    )
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running dask scheduler, e.g. tcp://host:8786")
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="start a local dask cluster of N worker processes for this command")
    group.add_argument("--threads-per-worker", type=positive_int, default=None, metavar="N",
                       help="tasks each local worker runs at once (default: 1)")
    group.add_argument("--memory-limit", default=None, metavar="SIZE",
                       help='memory limit per local worker, e.g. 4GB (default: "auto")')
    group.add_argument("--gpus", type=comma_list, default=None, metavar="0,1",
                       help="start one local worker per GPU, each seeing only its own")


def _cluster_settings(args: argparse.Namespace, configured=None):
    """The cluster of this command: the options over the config's [cluster]; None for in-process."""
    from .cluster import ClusterConfig, ClusterError

    options = {
        name: getattr(args, name, None) for name in ("scheduler", "workers", "threads_per_worker", "memory_limit", "gpus")
    }
    options = {name: value for name, value in options.items() if value is not None}
    if "gpus" in options:
        try:
            options["gpus"] = tuple(int(device) for device in options["gpus"])
        except ValueError:
            raise ClusterError(f"--gpus takes GPU numbers, e.g. 0,1. Received: {','.join(options['gpus'])}") from None
    if not options:
        return configured
    if any(name in options for name in ("scheduler", "workers", "gpus")):  # the options choose the cluster
        kept = {} if configured is None else {
            "threads_per_worker": configured.threads_per_worker, "memory_limit": configured.memory_limit
        }
        options = {**kept, **options}
    elif configured is not None:  # only --threads-per-worker / --memory-limit: they change the configured one
        options = {**dataclasses.asdict(configured), **options}
    else:
        given = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in options.items())
        raise ClusterError(
            f"--threads-per-worker and --memory-limit describe a local cluster: add --workers N (or --gpus). "
            f"Received: {given}"
        )
    try:
        return ClusterConfig(**options)
    except ValueError as error:  # scheduler with workers/gpus, or workers != number of gpus
        raise ClusterError(str(error).replace("[cluster] takes", "The cluster options take")) from None


def build_parser() -> argparse.ArgumentParser:
    """The `layerprobe` argument parser; pooling and dtype choices come from their registries."""
    from ..core.versions import layerprobe_version
    from ..features.keys import COMPUTE_PRECISIONS, DECODERS, STORAGE_DTYPES
    from ..features.truncate import DEFAULT_MAX_FLATTEN_DIM, POOLINGS

    verbose_help = "show TensorFlow's start-up notices (sets LAYERPROBE_VERBOSE=1)"
    parser = argparse.ArgumentParser(
        prog="layerprobe",
        description="Transfer learning from pretrained Keras applications: cached layer features, classifiers, finetuning.",
    )
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    parser.add_argument("--version", action="version", version=f"layerprobe {layerprobe_version()}")
    common = argparse.ArgumentParser(add_help=False)  # --verbose after the command too
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init", parents=[common],
        help="write a config for your images (layerprobe.toml): their classes and splits, a backbone, classifiers",
    )
    init.add_argument("data", nargs="?", help="your images: a folder with one subfolder per class (optionally inside "
                      "train/ and val/ or test/), or a CSV with path, label and optional split columns")
    init.add_argument("--config", default="layerprobe.toml", metavar="PATH",
                      help="the config file to write (default: layerprobe.toml)")
    init.add_argument("--model", default="MobileNetV2",
                      help="backbone name or PATH to a .keras model (weights: its own) (default: MobileNetV2)")
    init.add_argument("--full", action="store_true", help="write every key with its default and a comment")
    init.add_argument("--encoding", default="utf-8", help="text encoding of a CSV DATA file (default: utf-8)")
    init.add_argument("--force", action="store_true", help="overwrite an existing config file")

    layers = commands.add_parser("layers", parents=[common], help="list the selectable layers of a backbone")
    layers.add_argument("model", nargs="?", help="backbone name, PATH to a saved .keras model, or a keras-hub model "
                        "(keras_hub:CLASS, keras_hub:preset:NAME, a preset folder); omit (or --list) to list backbones")
    layers.add_argument("--input-size", type=positive_int, default=None, metavar="N", help=_INPUT_SIZE_HELP)
    _add_model_kwargs_argument(layers)
    _add_preprocessing_argument(layers)
    layers.add_argument("--all", action="store_true", help="show every layer, not only the cut layers")
    layers.add_argument("--list", action="store_true", help="list the registered backbones")

    extract = commands.add_parser("extract", parents=[common], help="extract layer features into a feature store")
    _add_extraction_arguments(extract)
    extract.add_argument("--layers", default=["top"], type=comma_list,
                         help="comma-separated names, aliases (stages, stages:K, stageK, last:N, top) or depths")
    extract.add_argument("--pooling", default=POOLINGS[0], choices=POOLINGS,
                         help="how a layer's output becomes one vector per image: avg or max over positions, "
                              "flatten (every value; large), none (the output as it is); for a vision transformer's "
                              "tokens also cls (the class token), mean (the patch tokens' mean), cls+mean (default: avg)")
    extract.add_argument("--data", required=True, help="image folder (class subfolders, optionally under train/val/test) or CSV")
    extract.add_argument("--encoding", default="utf-8",
                         help="text encoding of a CSV --data file, e.g. latin-1 or cp1252 (default: utf-8)")
    extract.add_argument("--store", required=True, help="feature store directory (created if missing)")
    extract.add_argument("--batch-size", type=_batch_size, default="auto", metavar="N|auto",
                         help='images per forward pass; lower it if the device runs out of memory, or "auto": 32 on '
                              'a CPU, the largest that fits on a GPU (default: auto)')
    extract.add_argument("--max-flatten-dim", type=positive_int, default=DEFAULT_MAX_FLATTEN_DIM, metavar="N",
                         help=f"with --pooling flatten: refuse layers giving more values per image than this "
                              f"(default: {DEFAULT_MAX_FLATTEN_DIM:,})")
    extract.add_argument("--chunk-size", type=positive_int, default=None,
                         help="samples per committed chunk (multiple of batch size)")
    extract.add_argument("--dtype", default=STORAGE_DTYPES[0], choices=STORAGE_DTYPES, help="storage dtype")
    extract.add_argument("--mixed-precision", nargs="?", const="float16", default=False, choices=COMPUTE_PRECISIONS,
                         help="compute precision of the forward pass on a GPU: bfloat16, or float16 (the default "
                              "when given without a value); part of the feature keys")
    extract.add_argument("--decoder", default="auto", choices=DECODERS,
                         help="JPEG decoder (the same pixels; simplejpeg is faster where installed)")
    extract.add_argument("--decode-threads", type=positive_int, default=None,
                         help="image decoding threads (per dask worker with a cluster; default: cores / workers)")
    _add_cluster_arguments(extract)
    extract.add_argument("--dataset-digest", default="stat", choices=["stat", "content"],
                         help="identify image files by size and mtime (stat, fast) or by their bytes (content, "
                              "hashed in parallel and cached per file; survives copies without -p, catches "
                              "files rewritten in place)")
    extract.add_argument("--no-progress", action="store_true")

    store = commands.add_parser("store", parents=[common], help="list, inspect or delete feature store entries")
    store.add_argument("action", choices=["ls", "info", "rm"])
    store.add_argument("store", nargs="?", help="feature store directory (default for ls: layerprobe-store, the "
                       "store `layerprobe run` uses)")
    store.add_argument("entries", nargs="*", help="entry names (or unique digest prefixes: the id column of ls)")
    store.add_argument("--wide", action="store_true", help="with ls: full entry names, weights and dataset digests, "
                       "skipped images")
    store.add_argument("--verify", action="store_true", help="with info: check everything the entry holds against the checksums recorded at commit")

    run = commands.add_parser(
        "run", parents=[common],
        help="run an experiment config (or, without one, the embedded digits demo): features, classifiers, report",
    )
    run.add_argument("config", nargs="?", help="TOML experiment config; omit to run the embedded default experiment")
    run.add_argument("--out", default=None, help="output directory (default: the config's [output] dir, or layerprobe-out)")
    run.add_argument("--store", default=None, help="feature store (default: the config's [features] store, or layerprobe-store)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--json", action="store_true",
                     help="print results.json (the rows, the recommendation and its evidence) on stdout, the log on "
                          "stderr; the file is written beside results.csv either way")
    _add_cluster_arguments(run)

    finetune = commands.add_parser(
        "finetune", parents=[common], add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run only the [finetune] stage of a config; its rows replace those of its modes in the run's results table",
        description="Run only the [finetune] stage of a config: train end to end (finetune and/or scratch), score\n"
                    "once on the test split; the rows replace those of the same modes in the run's results table.",
    )
    finetune.add_argument("-h", "--help", action=_FinetuneHelp, help="show this help, with every [finetune] key, and exit")
    finetune.add_argument("config", help="TOML experiment config with a [finetune] section")
    finetune.add_argument("--out", default=None, help="output directory (default: the config's [output] dir)")
    finetune.add_argument("--store", default=None, help="feature store of the kept rows (default: the config's)")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bars within training epochs")

    predict = commands.add_parser(
        "predict", parents=[common],
        help="predict new images with a classifier saved by `layerprobe run`, or a .keras model layerprobe wrote",
    )
    predict.add_argument("classifier", help="a .skops file from a run's models/ folder (or an older run's .joblib, "
                                            "with --trust), or a .keras model layerprobe wrote: a run's "
                                            "recommended.keras, a finetuned model.keras, or `layerprobe export`'s")
    predict.add_argument("--data", required=True,
                         help="image folder (class subfolders, or just images: predicted unlabelled), CSV, or one image; "
                              "with class folders, per-class precision and recall and a confusion matrix (PNG beside "
                              "the CSV) are given too")
    predict.add_argument("--out", default="predictions.csv", help="predictions CSV (default: predictions.csv)")
    predict.add_argument("--store", default=None,
                         help="feature store to cache the new images' features in (default: the one the classifier "
                              "was trained from)")
    predict.add_argument("--no-progress", action="store_true")
    predict.add_argument(
        "--trust", action="store_true",
        help="load a .joblib classifier saved by an older layerprobe: a pickle, which runs any code it holds, so "
             "only for files from a source you trust (.skops files load without it and run no code)",
    )

    export = commands.add_parser(
        "export", parents=[common],
        help="save a row's classifier as one Keras model: raw pixels in, class scores out (no layerprobe needed to use it)",
    )
    export.add_argument("classifier", help="the row's .skops file or finetuned model.keras (the model_path column of "
                                           "results.csv)")
    export.add_argument("--out", required=True, help="the .keras file to write (model.layerprobe.json goes beside it)")
    export.add_argument("--trust", action="store_true", help="load a .joblib classifier of an older layerprobe (see predict)")
    return parser


def _quiet_backend(*, verbose: bool) -> None:
    """Before any Keras import: show TensorFlow's notices with --verbose, mute its C++ logging otherwise."""
    if verbose:
        os.environ["LAYERPROBE_VERBOSE"] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _StdHandler(logging.StreamHandler):
    """Writes to the current `sys.stdout` (or `sys.stderr`), looked up at each record (pytest swaps them)."""

    def __init__(self, to_stderr: bool):
        super().__init__()
        self.to_stderr = to_stderr

    @property
    def stream(self):
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _showing_logs(*, to_stderr: bool):
    """Print the library's INFO lines (logger "layerprobe") during the command; restore the logger after."""
    logger = logging.getLogger("layerprobe")
    saved = logger.level, logger.propagate
    handler = _StdHandler(to_stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _check_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A misspelled command: argparse's error, with the closest command suggested."""
    from ..core.checks import did_you_mean

    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is not None and command not in _COMMANDS:
        parser.error(f"unknown command {command!r}.{did_you_mean(command, sorted(_COMMANDS))} "
                     f"Commands: {', '.join(sorted(_COMMANDS))}")


def _escape_unprintable() -> None:
    """File names that are not UTF-8 (surrogate escapes, `os.fsdecode`) print as escapes, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `layerprobe` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _check_command(parser, argv)
    args = parser.parse_args(argv)
    _quiet_backend(verbose=args.verbose)
    _escape_unprintable()
    from ..core.errors import LayerprobeError

    try:
        with _showing_logs(to_stderr=getattr(args, "json", False)):
            return _COMMANDS[args.command](args)
    # A path the user gave (config, data, store, output folder, classifier file) that is missing or not
    # writable: the OS's message names it, and the user can fix it. Everything else is a bug: traceback.
    except (LayerprobeError, FileNotFoundError, PermissionError) as error:
        print(f"layerprobe {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerprobe {args.command}: interrupted; committed work is kept and the next run resumes.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
