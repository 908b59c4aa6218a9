"""Export a row's classifier as one Keras model: raw pixels in, class scores out.

A classifier saved by a run is a scikit-learn estimator on features that
layerprobe extracts and caches. `export_model` turns it into one `keras.Model`
that needs neither layerprobe nor the feature store, as the Keras
transfer-learning guide ends with one model to save, serve and convert:

1. input: images at the row's input size, pixels 0-255 (uint8 or float);
2. the backbone's preprocessing, in the graph: the registry's `preprocess_input`
   applied to the float32 pixels, as the extraction's device loop does
   (`layerprobe.features.device`), written with `keras.ops`;
3. the backbone cut at the row's layer(s) with their pooling
   (`layerprobe.features.truncate.build_extractor`, built under the row's compute
   dtype), flattened and concatenated for a multi-layer row (its selected layers);
   a vision transformer's token poolings (cls, mean, cls+mean, max) as Keras's
   own layers (`layerprobe.features.token_pooling.token_pooling`);
4. the probe as one `Dense` layer: every affine step of the estimator
   (`StandardScaler`, `PCA`, the multi-layer probe's per-layer scaling, the
   linear classifier, read from its `coef_` and `intercept_`) folded into its weights in float64 (`linear_head`), with a
   `UnitNormalization` where the pipeline has `Normalizer(norm="l2")` (and a
   `Rescaling` for a standardization just before it); a softmax after it for
   logistic regression.

The output has one column per class, and its argmax is the prediction:
probabilities for logistic regression, decision values otherwise (for two
classes, 0 for the first class and the decision value for the second; see
`layerprobe.pipeline.predict.class_scores`). Only built-in Keras layers and
operations are used, so `keras.saving.load_model` loads the file without
importing layerprobe (a keras-hub backbone's layers need keras_hub installed:
the metadata's "requires" lists it). Beside it, `model.layerprobe.json` records the class
names, the input size and what the output holds (`layerprobe predict` reads it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.versions import layerprobe_version
from ..features.model_files import metadata_path
from .persistence import classifier_files, load_classifier, read_features_record, read_sidecar
from .predict import class_scores, rebuild_extractor
from .saved_models import copy_saved_model, files_digest, read_saved_model

__all__ = ["LinearHead", "export_model", "linear_head", "required_packages", "source_digest"]

_EXPORTABLE = (
    "pipelines of StandardScaler, Normalizer(norm='l2'), PCA and a linear classifier (logreg, ridge, linear_svm, "
    "sgd), or the multi-layer probe"
)


@dataclass(frozen=True)
class LinearHead:
    """A fitted classifier as a chain of affine maps and L2 normalizations, with consecutive affine maps folded.

    Attributes:
        columns: Indices of the estimator's input columns the head reads (a
            multi-layer probe reads only its selected layers); None: all of them.
        steps: `("affine", W, b)`: `x @ W + b`, `W` of shape (d_in, d_out), `b` (d_out,);
            `("diagonal", s, b)`: `x * s + b` per feature (a standardization, kept
            as vectors: a diagonal matrix of 25,088 flattened features would
            not fit in memory); or `("l2",)`: divide each row by its L2 norm. All float64.
        kind: `"probabilities"` (a softmax follows the last step) or `"scores"`.
        layers: The layers a multi-layer probe selected, in column order; None
            for a one-layer classifier.
    """

    columns: np.ndarray | None
    steps: tuple
    kind: str
    layers: tuple[str, ...] | None = None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """The head on the estimator's input `X`, in float64 (what the Keras layers compute in float32)."""
        values = np.asarray(X, dtype=np.float64)
        if self.columns is not None:
            values = values[:, self.columns]
        for step in self.steps:
            if step[0] == "affine":
                values = values @ step[1] + step[2]
            elif step[0] == "diagonal":
                values = values * step[1] + step[2]
            else:
                norms = np.linalg.norm(values, axis=1, keepdims=True)
                values = values / np.where(norms > 0, norms, 1.0)
        if self.kind == "probabilities":
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        return values

    def keras_layers(self, x):
        """The head as built-in Keras layers (float32) applied to the feature tensor `x`; returns the class scores.

        Affine steps are `Dense` layers (the last one named "probe"), L2 steps
        `UnitNormalization`, diagonal steps `Rescaling` (only before an L2
        normalization: elsewhere they are folded), a softmax for probabilities.
        """
        import keras

        for number, step in enumerate(self.steps):
            if step[0] == "l2":
                x = keras.layers.UnitNormalization(name=f"l2_{number}", dtype="float32")(x)
            elif step[0] == "diagonal":
                x = keras.layers.Rescaling(step[1].astype(np.float32), step[2].astype(np.float32),
                                           name=f"standardize_{number}", dtype="float32")(x)
            else:
                name = "probe" if number == len(self.steps) - 1 else f"affine_{number}"
                dense = keras.layers.Dense(step[1].shape[1], name=name, dtype="float32")
                x = dense(x)  # builds it
                dense.set_weights([step[1].astype(np.float32), step[2].astype(np.float32)])
        if self.kind == "probabilities":
            x = keras.layers.Softmax(name="probabilities", dtype="float32")(x)
        return x


def _affine(W: np.ndarray, b: np.ndarray) -> tuple:
    return ("affine", np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1))


def _diagonal(scale: np.ndarray, offset: np.ndarray) -> tuple:
    return ("diagonal", np.asarray(scale, dtype=np.float64), np.asarray(offset, dtype=np.float64))


def _not_exportable(what: str, estimator: Any, why: str) -> InputError:
    return InputError(
        f"{what} cannot be exported as a Keras model: {why}. layerprobe exports {_EXPORTABLE}. "
        f"Received: {type(estimator).__name__}"
    )


def _steps(estimator: Any, what: str) -> tuple[list[tuple], str, np.ndarray | None, tuple[str, ...] | None]:
    """(steps, output kind, input columns read, selected layers) of `estimator`; see `LinearHead`."""
    from sklearn.base import ClassifierMixin
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from .probes.multilayer import MultiLayerProbe

    if isinstance(estimator, Pipeline):
        steps, kind, columns, layers = [], None, None, None
        for position, (name, step) in enumerate(estimator.steps):
            if step is None or step == "passthrough":
                continue
            last = position == len(estimator.steps) - 1
            part, part_kind, part_columns, part_layers = _steps(step, f"{what} (step {name!r})")
            if (part_kind is not None) != last or part_columns is not None:
                raise _not_exportable(what, step, f"its step {name!r} ({type(step).__name__}) is not a "
                                                  f"{'classifier' if last else 'transformer'} layerprobe can fold")
            steps += part
            kind, columns, layers = part_kind, part_columns, part_layers
        return steps, kind, columns, layers
    if isinstance(estimator, StandardScaler):
        n = estimator.n_features_in_
        mean = estimator.mean_ if estimator.with_mean else np.zeros(n)
        scale = estimator.scale_ if estimator.with_std else np.ones(n)
        return [_diagonal(1.0 / scale, -mean / scale)], None, None, None
    if isinstance(estimator, PCA):
        W = estimator.components_.T.astype(np.float64)
        b = -estimator.mean_ @ W
        if estimator.whiten:
            scale = np.sqrt(estimator.explained_variance_)
            scale = np.maximum(scale, np.finfo(scale.dtype).eps)  # as PCA.transform
            W, b = W / scale, b / scale
        return [_affine(W, b)], None, None, None
    if isinstance(estimator, Normalizer):
        if estimator.norm != "l2":
            raise _not_exportable(what, estimator, f"Normalizer(norm={estimator.norm!r}) is not an L2 normalization")
        return [("l2",)], None, None, None
    if isinstance(estimator, MultiLayerProbe):
        names = list(estimator.selected_layers_)
        columns = np.concatenate([np.arange(estimator.n_features_in_)[estimator.columns_[name]] for name in names])
        scale = np.concatenate([estimator.weight_[name] / estimator.scale_[name] for name in names])
        mean = np.concatenate([estimator.mean_[name] for name in names])
        inner, kind, inner_columns, _ = _steps(estimator.estimator_, what)
        if kind is None or inner_columns is not None:
            raise _not_exportable(what, estimator.estimator_, "the multi-layer probe's final estimator is not a "
                                                              "classifier layerprobe can fold")
        return [_diagonal(scale, -mean * scale), *inner], kind, columns, tuple(names)
    if isinstance(estimator, ClassifierMixin) and hasattr(estimator, "coef_") and hasattr(estimator, "intercept_"):
        # A linear classifier (logreg, linear_svm, sgd, ridge...); one whose decision function is not x @ coef.T +
        # intercept (SVC(kernel="linear"): one-vs-one) fails the check of `linear_head`.
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        intercept = np.broadcast_to(np.asarray(estimator.intercept_, dtype=np.float64), (coef.shape[0],))
        if coef.shape[0] == 1:  # two classes, one decision value: the scores [0, d], softmax([0, d]) = [1 - p, p]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        kind = "probabilities" if isinstance(estimator, LogisticRegression) else "scores"
        return [_affine(coef.T, intercept)], kind, None, None
    raise _not_exportable(what, estimator, f"{type(estimator).__name__} is not a linear model")


def _fold(first: tuple, second: tuple) -> tuple:
    """One affine or diagonal step computing `second(first(x))`."""
    (kind1, A, a), (kind2, B, b) = first, second
    if kind1 == kind2 == "diagonal":
        return _diagonal(A * B, a * B + b)
    if kind1 == "diagonal":
        return _affine(A[:, None] * B, a @ B + b)
    if kind2 == "diagonal":
        return _affine(A * B[None, :], a * B + b)
    return _affine(A @ B, a @ B + b)


def _folded(steps: Sequence[tuple]) -> tuple:
    """Consecutive affine and diagonal steps multiplied into one (in float64)."""
    folded: list[tuple] = []
    for step in steps:
        if step[0] != "l2" and folded and folded[-1][0] != "l2":
            step = _fold(folded.pop(), step)
        folded.append(step)
    return tuple(folded)


def linear_head(estimator: Any, *, what: str = "The classifier") -> LinearHead:
    """`estimator` (a fitted pipeline or probe saved by a run) as a `LinearHead`, checked against it.

    The head is evaluated on random inputs and compared with the estimator's own
    class scores (`class_scores`), so a classifier whose scores are not what the
    folded layers compute (e.g. a one-vs-rest logistic regression) is refused
    rather than exported wrong.

    Raises:
        InputError: If a step is neither an affine map, an L2 normalization nor
            a linear classifier, or the folded head does not reproduce the
            estimator's scores.
    """
    steps, kind, columns, layers = _steps(estimator, what)
    if kind is None:
        raise _not_exportable(what, estimator, "it has no classifier step")
    head = LinearHead(columns, _folded(steps), kind, layers)
    X = np.random.default_rng(0).standard_normal((16, estimator.n_features_in_))
    reference = class_scores(estimator, X)[1]
    got = head(X)
    # A loose tolerance: estimators may compute in float32; a wrong structure differs by far more.
    if got.shape != reference.shape or not np.allclose(got, reference, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(reference).max())):
        difference = np.abs(got - reference).max() if got.shape == reference.shape else f"shape {got.shape}"
        raise _not_exportable(
            what, estimator, f"its scores are not those of linear layers (largest difference {difference} on random "
                             f"features), e.g. a one-vs-rest logistic regression"
        )
    return head


def _check_out(out: Path) -> None:
    if out.suffix != ".keras":
        raise InputError(
            f"The exported model is saved in Keras's format, whose files end in .keras. Name it e.g. "
            f"{out.with_suffix('.keras').name}. Received: out={str(out)!r}"
        )
    if out.exists() and out.is_dir():
        raise InputError(f"The exported model's path is a folder; give a file name ending in .keras. Received: out={str(out)!r}")


def _is_keras_file(model_path: str | os.PathLike) -> bool:
    return Path(model_path).suffix == ".keras"


def source_digest(model_path: str | os.PathLike) -> str:
    """Digest of the files an export of `model_path` is made from: the classifier and its sidecar, or the
    `.keras` model and its metadata. An export records it (`source_digest`), so a copy can tell it is current."""
    if _is_keras_file(model_path):
        return files_digest([model_path, metadata_path(model_path)])
    return files_digest(classifier_files(model_path))


def _source(model_path: str | os.PathLike) -> dict[str, str]:
    """What an export records of what it was made from (read by `layerprobe.pipeline.run.recommended`)."""
    return {"source": str(Path(model_path).resolve()), "source_digest": source_digest(model_path),
            "layerprobe_version": layerprobe_version()}


def export_model(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Save the classifier of a run's row as one Keras model from raw pixels to class scores.

    A finetuned model (a row's `model.keras`, already one Keras model) is
    checked (`layerprobe.pipeline.saved_models.read_saved_model`) and copied.

    Args:
        model_path: The row's classifier (its `.skops` file, or the `.joblib` an
            older layerprobe saved), with its `.json` sidecar beside it: the
            results table's `model_path`; or a `.keras` model layerprobe wrote
            (finetuned, or exported), with its `.layerprobe.json` beside it.
        out: The `.keras` file to write; `model.layerprobe.json` goes beside it.
        trust: Load a `.joblib` pickle of an older layerprobe (runs any code it
            holds: only for files from a source you trust).
        log: Called with one line per step. Default: the logger "layerprobe.export" at INFO.

    Returns:
        The path of the `.keras` file.

    Raises:
        FileNotFoundError: If the classifier or its sidecar is missing.
        InputError: (a ``ValueError``) If the classifier cannot be exported
            (not linear: see `linear_head`), `out` does not end in `.keras`, the
            sidecar was not written by a run, or the rebuilt backbone makes other
            features than the classifier was trained on.

    Example:
        >>> export_model("out/models/VGG16.block4_pool.avg.3f2a/logreg.skops", "ants_bees.keras")
        >>> model = keras.saving.load_model("ants_bees.keras")  # no layerprobe needed
        >>> model.predict(images)  # (n, 224, 224, 3) pixels 0-255 -> (n, n_classes) probabilities
    """
    log = log or logging.getLogger("layerprobe.export").info
    out = Path(out)
    _check_out(out)
    if _is_keras_file(model_path):
        saved = read_saved_model(model_path)
        kept = {key: value for key, value in saved.metadata.items() if not key.startswith("encoding-")}
        copy_saved_model(saved, out, {**kept, **_source(model_path)})
        log(f"exported {model_path} -> {out}: {saved.input_size}x{saved.input_size} pixels 0-255 in, "
            f"{len(saved.class_names)} class {saved.outputs} out")
        return out
    _, all_layers, _ = read_features_record(read_sidecar(model_path), model_path)  # before any unpickling
    estimator, sidecar = load_classifier(model_path, trust=trust)
    head = linear_head(estimator, what=str(model_path))
    layers = list(head.layers) if head.layers is not None else all_layers
    extractor = rebuild_extractor(model_path, sidecar, layers)
    widths = {name: int(np.prod(extractor.feature_shapes[name])) for name in layers}
    n_read = estimator.n_features_in_ if head.columns is None else len(head.columns)
    if sum(widths.values()) != n_read:
        raise InputError(
            f"{model_path} reads {n_read} features of {layers}, but the rebuilt backbone gives {sum(widths.values())}. "
            f"Rerun the experiment to fit it again. Received: widths {widths}"
        )
    model = _keras_model(extractor, layers, head, sidecar["class_names"])
    metadata = {
        "saved_by": "layerprobe export",
        "preprocessing": "none",  # the pixels are preprocessed inside the model
        "input_size": extractor.backbone.input_size,
        "class_names": list(sidecar["class_names"]),
        "outputs": head.kind,
        "classifier": sidecar.get("classifier"),
        "backbone": extractor.backbone.architecture,
        "backbone_preprocessing": extractor.backbone.spec.preprocessing,
        "weights": extractor.backbone.weights or "random init",
        "weights_digest": extractor.backbone.weights_digest,
        "layers": layers,
        "pooling": {name: extractor.pooling[name] for name in layers},
        "requires": ["keras", *required_packages(model)],  # to load it: keras_hub too for a keras-hub backbone
        **_source(model_path),
    }
    from .finetune.checkpoints import save_model

    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out, metadata=metadata)
    log(f"exported {model_path} -> {out}: {extractor.backbone.architecture} {'+'.join(layers)} "
        f"({extractor.backbone.input_size}x{extractor.backbone.input_size} pixels 0-255 in, "
        f"{len(sidecar['class_names'])} class {head.kind} out)")
    return out


def _keras_model(extractor: Any, layers: Sequence[str], head: LinearHead, class_names: Sequence[str]):
    """The Keras model of `export_model`: pixels, preprocessing, the cut backbone, the folded head."""
    import keras

    from ..features.extract import dtype_policy
    from ..features.registry import TOKEN_POOLINGS
    from ..features.token_pooling import token_pooling
    from ..features.truncate import build_extractor

    infos = {info.name: info for info in extractor.layers}
    tokens = extractor.backbone.spec.tokens
    # A transformer's token poolings are built below from Keras layers, not layerprobe's TokenPooling.
    token_pooled = {name: extractor.pooling[name] for name in layers
                    if tokens is not None and len(infos[name].output_shape) == 2
                    and extractor.pooling[name] in (*TOKEN_POOLINGS, "max")}
    pooling = {name: "none" if name in token_pooled else mode for name, mode in extractor.pooling.items()}
    with dtype_policy(extractor.compute_dtype):
        features = build_extractor(extractor.backbone.model, [infos[name] for name in layers], pooling, tokens=tokens)
    size = extractor.backbone.input_size
    pixels = keras.Input((size, size, 3), name="pixels")
    x = extractor.backbone.spec.preprocess_input(keras.ops.cast(pixels, "float32"))
    outputs = features(x)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    parts = []
    for name, output in zip(layers, outputs):
        if name in token_pooled:
            output = token_pooling(output, token_pooled[name], tokens.prefix_tokens, name=name)
        if extractor.dtype != "float32":  # the classifier was trained on features stored in this dtype
            output = keras.ops.cast(keras.ops.cast(output, extractor.dtype), "float32")
        if len(output.shape) > 2:
            output = keras.layers.Flatten(dtype="float32")(output)
        parts.append(output)
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="features", dtype="float32")(parts)
    model = keras.Model(pixels, head.keras_layers(x), name="layerprobe_export")
    if "layerprobe" in required_packages(model):
        raise InputError(
            f"The exported model would need layerprobe to load: its backbone has layerprobe's own layers. "
            f"Received: {sorted(type(layer).__name__ for layer in model._flatten_layers() if _package(layer) == 'layerprobe')}"
        )
    if int(model.output.shape[-1]) != len(class_names):
        raise InputError(
            f"The exported model gives {model.output.shape[-1]} scores, but the classifier has {len(class_names)} "
            f"class names. Rerun the experiment to fit it again. Received: class_names {list(class_names)}"
        )
    return model


def _package(layer: Any) -> str:
    return type(layer).__module__.split(".")[0]


def required_packages(model: Any) -> list[str]:
    """The packages besides Keras whose layers `model` holds (keras_hub for a keras-hub backbone), sorted."""
    return sorted({_package(layer) for layer in model._flatten_layers()} - {"keras"})
