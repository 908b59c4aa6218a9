"""Registry, weights loading and digests, layer selection."""

import urllib.error

import keras
import numpy as np
import pytest

from layerprobe.features.registry import BACKBONES, BackboneSpec, get_backbone_spec, resolve_preprocessing
from layerprobe.core.digests import file_digest
from layerprobe.features.layers import UnknownLayerError, describe_layers, resolve_layers
from layerprobe.features.backbone import WeightsUnavailableError, load_backbone, parse_weights


def test_registry_covers_every_keras_application():
    applications = {name for name in dir(keras.applications) if name[0].isupper()}
    assert applications <= set(BACKBONES)
    assert get_backbone_spec("resnet50").name == "ResNet50"
    with pytest.raises(ValueError, match="ResNet50"):
        get_backbone_spec("ResNet51")


def test_family_preprocessing():
    x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    np.testing.assert_allclose(get_backbone_spec("MobileNetV2").preprocess_input(x.copy()), 1.0)
    assert get_backbone_spec("EfficientNetB0").preprocess_input(x.copy()).max() == 255.0
    vgg = get_backbone_spec("VGG16").preprocess_input(x.copy())
    np.testing.assert_allclose(vgg[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-5)


def test_preprocessing_choices_are_modes_or_family_names():
    x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    assert resolve_preprocessing("None") == (None, "none")
    assert resolve_preprocessing("vgg16") == ("keras.applications.vgg16", None)
    for mode, family in [("caffe", "VGG16"), ("tf", "MobileNetV2"), ("torch", "DenseNet121")]:
        spec = BackboneSpec("file", constructor=None, preprocess_module=None, preprocess_mode=mode)
        np.testing.assert_allclose(spec.preprocess_input(x.copy()), get_backbone_spec(family).preprocess_input(x.copy()))
        assert mode in spec.preprocessing
    with pytest.raises(ValueError, match=r"Unknown preprocessing 'imagenet'.*'caffe'.*VGG16.*Received: preprocessing='imagenet'"):
        resolve_preprocessing("imagenet")
    with pytest.raises(ValueError, match="preprocess_mode must be one of"):
        BackboneSpec("file", constructor=None, preprocess_module=None, preprocess_mode="caffee")
    with pytest.raises(ValueError, match=r"preprocessing is chosen for model files"):
        load_backbone("VGG16", weights=None, input_size=32, preprocessing="tf")
    with pytest.raises(ValueError, match=r"weights='saved' means the weights inside a model file"):
        load_backbone("VGG16", weights="saved", input_size=32)


def test_random_init_is_seeded_and_scoped():
    state = np.random.get_state()[1].copy()
    a = load_backbone("VGG16", weights=None, input_size=32, seed=0)
    b = load_backbone("VGG16", weights=None, input_size=32, seed=0)
    c = load_backbone("VGG16", weights=None, input_size=32, seed=1)
    assert a.weights_digest == b.weights_digest != c.weights_digest
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_weights_file_round_trip_keras3_and_legacy_h5(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    source = load_backbone("VGG16", weights=None, input_size=32, seed=3)
    keras3_path = tmp_path / "vgg.weights.h5"
    source.model.save_weights(keras3_path)
    legacy_path = tmp_path / "vgg_notop.h5"
    with h5py.File(legacy_path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source.model)
    for path in (keras3_path, legacy_path):
        loaded = load_backbone("VGG16", weights=str(path), input_size=32)
        assert loaded.weights_digest == file_digest(path)
        for expected, actual in zip(source.model.get_weights(), loaded.model.get_weights()):
            np.testing.assert_array_equal(expected, actual)


def test_missing_or_mismatched_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_backbone("VGG16", weights=tmp_path / "nope.weights.h5", input_size=32)
    other = load_backbone("MobileNetV2", weights=None, input_size=32, model_kwargs={"alpha": 0.35})
    path = tmp_path / "mobilenet.weights.h5"
    other.model.save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="Could not load weights"):
        load_backbone("VGG16", weights=path, input_size=32)


@pytest.mark.parametrize(
    "text, expected",
    [("imagenet", "imagenet"), ("ImageNet", "imagenet"), ("none", None), ("Random", None), (None, None),
     ("Saved", "saved"), ("w/net.weights.h5", "w/net.weights.h5")],
)
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=""), r"weights is empty\. Pass 'imagenet', 'none' .* Received: weights=''"),
        (dict(input_size=32.7), r"whole number of pixels, e\.g\. 224 .* Received: input_size=32\.7"),
        (dict(input_size="abc"), r"whole number of pixels.* Received: input_size='abc'"),
        (dict(model_kwargs={"input_shape": (8, 8, 3)}), r"must not set \['input_shape'\]"),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_backbone("VGG16", **{"weights": None, "input_size": 32, **kwargs})


def test_unknown_model_kwargs_are_a_value_error():
    with pytest.raises(ValueError, match=r"MobileNetV2 does not accept these model_kwargs: .*'alpah'.*"
                                         r"Received: model_kwargs=\{'alpah': 0\.35\}"):
        load_backbone("MobileNetV2", weights=None, input_size=32, model_kwargs={"alpah": 0.35})


def test_imagenet_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsUnavailableError, match=r"weights='/path/to/file\.weights\.h5'") as info:
        load_backbone("VGG16", weights="imagenet", input_size=32)
    assert "URL fetch failure" in str(info.value) and "Received: weights='imagenet'" in str(info.value)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("VGG16", ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"]),
        ("ResNet50", ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]),
    ],
)
def test_stage_aliases(model, expected):
    backbone = load_backbone(model, weights=None, input_size=64)
    stages = resolve_layers(backbone.model, backbone.spec, ["stages"])
    assert [info.name for info in stages] == expected
    assert resolve_layers(backbone.model, backbone.spec, ["stage2"])[0].name == expected[1]
    assert resolve_layers(backbone.model, backbone.spec, ["top"])[0].name == expected[-1]
    assert resolve_layers(backbone.model, backbone.spec, [1.0])[0].name == expected[-1]


def test_depth_selects_cut_layers_shallow_to_deep():
    backbone = load_backbone("ResNet50", weights=None, input_size=64)
    picked = resolve_layers(backbone.model, backbone.spec, ["0.75", 0.25, 0.5])
    assert [info.index for info in picked] == sorted(info.index for info in picked)
    assert all(info.is_cut for info in picked)
    assert len(picked) == 3


def test_auto_named_layers_get_positional_ids_and_named_ones_keep_names():
    def build(include_top, weights, input_shape):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, name="named_conv")(x)
        return keras.Model(inputs, x)

    spec = BackboneSpec("Tiny", build, None)
    model = build(False, None, (32, 32, 3))
    infos = describe_layers(model, spec)
    assert [info.stable_id for info in infos] == ["layer#1", "named_conv"]
    assert [info.stage for info in infos] == [1, 2]


def test_unknown_layer_suggests_names_and_aliases():
    backbone = load_backbone("VGG16", weights=None, input_size=32)
    with pytest.raises(UnknownLayerError, match="block4_pool") as info:
        resolve_layers(backbone.model, backbone.spec, ["block4_pooling"])
    assert "layerprobe layers VGG16" in str(info.value)
    with pytest.raises(UnknownLayerError, match="stage"):
        resolve_layers(backbone.model, backbone.spec, ["stage9"])
    with pytest.raises(UnknownLayerError):
        resolve_layers(backbone.model, backbone.spec, [1.5])
