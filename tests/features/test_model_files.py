"""Saved Keras models as backbones: features, graph-derived stages, flexible inputs, cache identity, errors."""

import shutil

import keras
import numpy as np
import pytest

from layerprobe.core.errors import BackboneError
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays
from layerprobe.features.layers import describe_layers
from layerprobe.features.model_files import is_model_file, metadata_path, read_model_metadata
from layerprobe.features.plans import plan_signature
from layerprobe.features.store import FeatureStore
from layerprobe.features.backbone import load_backbone

STAGES = ["act1", "act2", "act3", "pool3"]  # the last layer before each downsampling, then the deepest


def _small_cnn(input_shape=(32, 32, 3), *, seed=0, rescale=False, name="small_cnn"):
    """Conv/ReLU/pool x3 (32 -> 16 -> 8 -> 4 px), a residual add, global pooling and a dense head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs) if rescale else inputs
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.ReLU(name="act1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    shortcut = x
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.Add(name="add2")([x, shortcut])
    x = keras.layers.ReLU(name="act2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv3")(x)
    x = keras.layers.ReLU(name="act3")(x)
    x = keras.layers.MaxPooling2D(name="pool3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _save(model, path):
    model.save(path)
    return path


def _images(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


def _direct(model, layer_name, X, mode):
    """What a user computes by hand: preprocess a copy, call the truncated model, average over space."""
    x = X.astype("float32").copy()
    if mode != "none":
        x = keras.applications.imagenet_utils.preprocess_input(x, mode=mode)
    out = keras.ops.convert_to_numpy(keras.Model(model.inputs[0], model.get_layer(layer_name).output)(x, training=False))
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


def test_model_file_arguments_are_recognised():
    assert is_model_file("runs/model.keras") and is_model_file("legacy.h5") and is_model_file("dir/name")
    assert not is_model_file("VGG16") and not is_model_file(None)


def test_features_equal_a_direct_keras_call_on_every_selected_layer(tmp_path):
    model = _small_cnn()
    path = _save(model, tmp_path / "cnn.keras")
    X, y = _images()
    extractor = FeatureExtractor(
        str(path), layers=["stages", "conv2", 0.5, "top"], preprocessing="caffe", batch_size=4
    )
    assert extractor.layer_names == ["act1", "conv2", "act2", "act3", "pool3", "logits"]
    assert extractor.backbone.input_size == 32 and extractor.backbone.weights == "saved"
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_arrays(X, y), store, progress=False)
    for name in extractor.layer_names:
        np.testing.assert_allclose(
            store.load(report.keys[name]).X, _direct(model, name, X, "caffe"), rtol=1e-4, atol=1e-4
        )
    key = report.keys["act1"]
    assert key.preprocessing == "keras.applications.imagenet_utils.preprocess_input(mode='caffe')"
    assert key.backbone.startswith("small_cnn@")


def test_stages_come_from_the_graph(tmp_path):
    backbone = load_backbone(_save(_small_cnn(), tmp_path / "cnn.keras"), preprocessing="none")
    infos = describe_layers(backbone.model, backbone.spec)
    assert [info.name for info in infos if info.stage is not None] == STAGES
    assert not next(info for info in infos if info.name == "conv2").is_cut  # the residual jumps over it


def test_flexible_input_model_gets_the_stages_and_features_of_the_fixed_one(tmp_path):
    fixed = _small_cnn()
    flexible = _small_cnn((None, None, 3))
    flexible.set_weights(fixed.get_weights())
    fixed_path, flexible_path = _save(fixed, tmp_path / "fixed.keras"), _save(flexible, tmp_path / "flexible.keras")
    X, y = _images()
    reports = {}
    for path in (fixed_path, flexible_path):
        extractor = FeatureExtractor(path, layers="stages", preprocessing="none", input_size=32, batch_size=4)
        assert extractor.layer_names == STAGES
        assert [info.output_shape for info in extractor.layers] == [(32, 32, 8), (16, 16, 8), (8, 8, 16), (4, 4, 16)]
        reports[path] = extractor.extract(from_arrays(X, y), FeatureStore(tmp_path / path.stem), progress=False)
    for name in STAGES:
        np.testing.assert_allclose(
            FeatureStore(tmp_path / "fixed").load(reports[fixed_path].keys[name]).X,
            FeatureStore(tmp_path / "flexible").load(reports[flexible_path].keys[name]).X,
            rtol=1e-5, atol=1e-5,
        )
    # Another size rebuilds the flexible model there: stages keep their names, shapes follow.
    at_64 = FeatureExtractor(flexible_path, layers="stages", preprocessing="none", input_size=64)
    assert at_64.layer_names == STAGES and at_64.layers[-1].output_shape == (8, 8, 16)


def test_a_copy_of_the_file_is_a_cache_hit_and_a_changed_weight_a_miss(tmp_path):
    model = _small_cnn()
    (tmp_path / "a").mkdir()
    original = _save(model, tmp_path / "a" / "cnn.keras")
    X, y = _images()
    store = FeatureStore(tmp_path / "store")
    dataset = from_arrays(X, y)
    first = FeatureExtractor(original, layers="stages", preprocessing="none").extract(dataset, store, progress=False)
    assert sorted(first.computed) == sorted(STAGES)

    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(original, tmp_path / "elsewhere" / "renamed.keras")
    again = FeatureExtractor(copy, layers="stages", preprocessing="none").extract(dataset, store, progress=False)
    assert again.keys == first.keys
    assert again.computed == [] and again.n_forward == 0

    kernel, bias = model.get_layer("conv3").get_weights()
    model.get_layer("conv3").set_weights([kernel, bias + 1e-3])
    retrained = _save(model, tmp_path / "retrained.keras")
    changed = FeatureExtractor(retrained, layers="stages", preprocessing="none").extract(dataset, store, progress=False)
    assert changed.keys["act3"] != first.keys["act3"] and "act3" in changed.computed
    assert changed.keys["act3"].backbone == first.keys["act3"].backbone  # same architecture, other weights


def test_preprocessing_is_part_of_the_key_and_a_random_init_is_seeded(tmp_path):
    path = _save(_small_cnn(seed=5), tmp_path / "cnn.keras")
    caffe = FeatureExtractor(path, layers="top", preprocessing="caffe").plan()
    vgg = FeatureExtractor(path, layers="top", preprocessing="VGG16").plan()
    none = FeatureExtractor(path, layers="top", preprocessing="none").plan()
    assert len({caffe.preprocessing, vgg.preprocessing, none.preprocessing}) == 3
    assert vgg.preprocessing == "keras.applications.vgg16.preprocess_input"
    random = [FeatureExtractor(path, weights=None, seed=s, layers="top", preprocessing="none").plan() for s in (0, 0, 1)]
    assert random[0].weights_digest == random[1].weights_digest != random[2].weights_digest
    assert random[0].weights_digest != none.weights_digest


def test_missing_preprocessing_is_a_clear_error_and_a_rescaling_input_means_none(tmp_path):
    path = _save(_small_cnn(), tmp_path / "cnn.keras")
    with pytest.raises(BackboneError, match=r"Cannot tell which preprocessing.*'caffe', 'tf', 'torch'.*preprocessing=None"):
        FeatureExtractor(path, layers="top")
    with pytest.raises(BackboneError, match=r"Unknown preprocessing 'cafe'"):
        FeatureExtractor(path, layers="top", preprocessing="cafe")
    rescaled = load_backbone(_save(_small_cnn(rescale=True), tmp_path / "rescaled.keras"))
    assert rescaled.spec.preprocessing == "none"


def test_subclassed_model_gets_a_clear_error(tmp_path):
    @keras.saving.register_keras_serializable(package="layerprobe_tests")
    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3)
            self.pool = keras.layers.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.conv(x))

    model = Subclassed()
    model(np.zeros((1, 32, 32, 3), "float32"))
    path = _save(model, tmp_path / "subclassed.keras")
    with pytest.raises(BackboneError, match=r"subclassed keras\.Model \(Subclassed\).*functional"):
        load_backbone(path, preprocessing="none")


def test_sequential_model_and_errors_for_missing_files(tmp_path):
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, padding="same", name="c1"),
         keras.layers.MaxPooling2D(name="p1"), keras.layers.Conv2D(8, 3, padding="same", name="c2")],
        name="seq",
    )
    path = _save(sequential, tmp_path / "seq.keras")
    X, y = _images(n=4)
    extractor = FeatureExtractor(path, layers=["stages"], preprocessing="tf")
    assert extractor.layer_names == ["c1", "c2"]
    report = extractor.extract(from_arrays(X, y), FeatureStore(tmp_path / "store"), progress=False)
    np.testing.assert_allclose(
        FeatureStore(tmp_path / "store").load(report.keys["c2"]).X, _direct(sequential, "c2", X, "tf"), rtol=1e-4, atol=1e-4
    )
    at_48 = FeatureExtractor(path, layers=["stages"], preprocessing="tf", input_size=48)
    assert [info.output_shape for info in at_48.layers] == [(48, 48, 4), (24, 24, 8)]
    with pytest.raises(BackboneError, match="Model file not found"):
        load_backbone(tmp_path / "missing.keras", preprocessing="none")
    with pytest.raises(BackboneError, match="model_kwargs"):
        load_backbone(path, preprocessing="none", model_kwargs={"alpha": 1.0})


def test_plan_signature_follows_the_model_file(tmp_path):
    path = _save(_small_cnn(), tmp_path / "cnn.keras")
    settings = {"model": str(path), "weights": "saved", "layers": ["stages"], "preprocessing": "none"}
    before = plan_signature(settings)
    assert before is not None and plan_signature(settings) == before
    _save(_small_cnn(seed=1), path)  # retrained in place: size or mtime changes
    assert plan_signature(settings) != before
    assert plan_signature({**settings, "model": str(tmp_path / "missing.keras")}) is None


def test_a_finetuned_classifier_file_is_probed_inside_its_backbone(tmp_path):
    from layerprobe.pipeline.finetune import build_classifier_model
    from layerprobe.pipeline.finetune.checkpoints import backbone_metadata, save_model

    vgg = load_backbone("VGG16", weights=None, input_size=32)
    classifier = build_classifier_model(vgg, 3, augmentation={"flip": "horizontal"})
    path = tmp_path / "run" / "model.keras"
    path.parent.mkdir()
    save_model(classifier, path, metadata=backbone_metadata(vgg, mode="finetune", class_names="abc"))  # as finetune
    assert read_model_metadata(path)["backbone_layer"] == "vgg16"

    X, y = _images()
    extractor = FeatureExtractor(path, layers="stages", batch_size=4)
    assert extractor.layer_names == [f"block{k}_pool" for k in range(1, 6)]
    assert extractor.backbone.spec.preprocessing == vgg.spec.preprocessing
    assert extractor.backbone.spec.name.startswith("vgg16_classifier/vgg16@")
    report = extractor.extract(from_arrays(X, y), FeatureStore(tmp_path / "store"), progress=False)
    direct = keras.Model(vgg.model.input, vgg.model.get_layer("block4_pool").output)
    expected = keras.ops.convert_to_numpy(direct(vgg.spec.preprocess_input(X.astype("float32").copy()))).mean(axis=(1, 2))
    np.testing.assert_allclose(
        FeatureStore(tmp_path / "store").load(report.keys["block4_pool"]).X, expected, rtol=1e-4, atol=1e-4
    )
    # Without the metadata, the preprocessing is named (the classifier's is Keras operations, not a layer), and
    # the stages come from the generic rule (the last layer at each resolution) instead of VGG's pools.
    metadata_path(path).unlink()
    bare = FeatureExtractor(path, layers=["block4_pool", "stages"], preprocessing="VGG16")
    assert bare.plan().keys("d")["block4_pool"] == extractor.plan().keys("d")["block4_pool"]
    assert bare.layer_names == [
        "block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block4_pool", "block5_conv3", "block5_pool"
    ]


def test_a_whole_classifier_file_is_finetuned_on_its_last_feature_map(tmp_path):
    from layerprobe.pipeline.finetune import FinetuneConfig, evaluate_model, finetune

    path = _save(_small_cnn(rescale=True), tmp_path / "classifier.keras")
    X, y = _images(24)
    data = from_arrays(X, y, class_names=["a", "b", "c"])
    config = FinetuneConfig(head_epochs=1, finetune_epochs=1, unfreeze_blocks=1, val_fraction=0.0,
                            early_stopping_patience=None, batch_size=8, augmentation=None)
    result = finetune(str(path), data, output_dir=tmp_path / "run", weights="saved", config=config)
    backbone = result.model.get_layer("small_cnn")
    assert backbone.layers[-1].name == "pool3" and len(backbone.output.shape) == 4  # its gap and logits dropped
    assert evaluate_model(result, data).n_test == 24
    assert FeatureExtractor(str(result.model_path), layers="stages").layer_names == STAGES


def test_finetuning_a_model_without_a_feature_map_is_a_clear_error(tmp_path):
    from layerprobe.pipeline.finetune import FinetuneConfig, finetune

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten(name="flat")(keras.layers.Rescaling(1 / 255, name="rescale")(inputs))
    path = _save(keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="mlp"), tmp_path / "mlp.keras")
    X, y = _images(12)
    with pytest.raises(BackboneError, match="'mlp' has no spatial feature map"):
        finetune(str(path), from_arrays(X, y), output_dir=tmp_path / "run", weights="saved",
                 config=FinetuneConfig(head_epochs=1, finetune_epochs=0, val_fraction=0.0))
