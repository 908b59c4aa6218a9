"""keras-hub vision transformers as backbones: blocks, token poolings, presets, keys, the [hub] extra.

Tiny models built from config (random weights, 32 px, 2-3 blocks). Tests that
need keras-hub skip where it is not installed (`pip install -e ".[hub]"`).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from layerprobe.core.errors import BackboneError, WeightsUnavailableError
from layerprobe.features.chunks import write_chunk
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays
from layerprobe.features.layers import LayerInfo
from layerprobe.features.registry import TokenLayout
from layerprobe.features.store import FeatureStore
from layerprobe.features.truncate import per_layer_pooling, pooled_shape

SIZE = 32
DINO = "keras_hub:DINOV2Backbone"
DINO_KWARGS = {"patch_size": 8, "num_layers": 3, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32,
               "num_register_tokens": 2, "position_embedding_shape": (SIZE, SIZE, 3)}
VIT = "keras_hub:ViTBackbone"
VIT_KWARGS = {"patch_size": 8, "num_layers": 2, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32}


@pytest.fixture
def keras_hub():
    return pytest.importorskip("keras_hub")


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8), np.arange(n) % 2


def _dino(**settings):
    return FeatureExtractor(DINO, weights=None, input_size=SIZE, model_kwargs=DINO_KWARGS, batch_size=4, seed=3,
                            **settings)


# --------------------------------------------------------------------------- token pooling rules (no keras-hub)


def _info(shape, name="block1"):
    return LayerInfo(name=name, index=1, output_shape=shape, is_cut=True, stage=1, stable_id=name, kind="X")


def test_token_poolings_give_one_vector_per_image():
    tokens, info = TokenLayout(prefix_tokens=3, class_token=True), _info((19, 16))
    shapes = {pooling: pooled_shape(info, per_layer_pooling([info], pooling, tokens)[info.name], tokens=tokens)
              for pooling in ("cls", "mean", "cls+mean", "avg", "max", "none", "flatten")}
    assert shapes == {"cls": (16,), "mean": (16,), "cls+mean": (32,), "avg": (16,), "max": (16,),
                      "none": (19, 16), "flatten": (304,)}
    assert per_layer_pooling([info], "avg", tokens) == {"block1": "mean"}  # the key says mean


def test_cls_without_a_class_token_and_token_poolings_on_feature_maps_are_refused():
    no_cls = TokenLayout(prefix_tokens=0, class_token=False)
    with pytest.raises(BackboneError, match=r"no class token.*Received: pooling='cls\+mean'"):
        per_layer_pooling([_info((16, 16))], "cls+mean", no_cls)
    assert per_layer_pooling([_info((16, 16))], "mean", no_cls) == {"block1": "mean"}
    with pytest.raises(BackboneError, match=r"for the \(tokens, width\) outputs.*Received: pooling='cls'"):
        per_layer_pooling([_info((4, 4, 8), name="block1_pool")], "cls")
    # Without a token layout a 2-D output is not tokens: pooled as before (left as it is).
    assert pooled_shape(_info((19, 16)), "max") == (19, 16)


def test_a_missing_keras_hub_gives_the_install_message():
    script = textwrap.dedent(f"""
        import sys
        sys.modules["keras_hub"] = None  # as if the [hub] extra were not installed
        from layerprobe.pipeline.cli import main
        sys.exit(main(["layers", "{VIT}"]))
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode != 0
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'layerprobe[hub]'" in lines[0] and "Traceback" not in process.stderr


# --------------------------------------------------------------------------- blocks and features


def _reference_dinov2(keras_hub, seed):
    """The keras-hub model itself, built as layerprobe builds it, and its per-block (pyramid) outputs."""
    import keras
    from layerprobe.features.seeding import keras_seed

    with keras_seed(seed):
        backbone = keras_hub.models.DINOV2Backbone(image_shape=(SIZE, SIZE, 3), **DINO_KWARGS)
    return backbone, keras.Model(backbone.inputs, backbone.pyramid_outputs)


def test_token_poolings_equal_a_direct_computation_from_the_block_outputs(tmp_path, keras_hub):
    X, y = _images()
    store = FeatureStore(tmp_path)
    backbone, pyramid = _reference_dinov2(keras_hub, seed=3)
    x = X.astype("float32") / 127.5 - 1  # the "tf" preprocessing of a class without a converter
    blocks = {name: np.asarray(value) for name, value in pyramid.predict_on_batch({"images": x}).items()}
    top = np.asarray(backbone.predict_on_batch({"images": x}))
    prefix = 1 + DINO_KWARGS["num_register_tokens"]
    expected = {
        "cls": lambda t: t[:, 0],
        "mean": lambda t: t[:, prefix:].mean(axis=1),
        "cls+mean": lambda t: np.concatenate([t[:, 0], t[:, prefix:].mean(axis=1)], axis=1),
        "none": lambda t: t,
    }
    for pooling, direct in expected.items():
        extractor = _dino(layers=["stages", "top"], pooling=pooling)
        report = extractor.extract(from_arrays(X, y), store, progress=False)
        assert report.keys["block2"].pooling == pooling
        for k in (1, 2, 3):
            stored = store.load(report.keys[f"block{k}"])
            np.testing.assert_allclose(stored.X, direct(blocks[f"stage{k}"]), rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(stored.y, y)
        np.testing.assert_allclose(store.load(report.keys["final_norm"]).X, direct(top), rtol=1e-4, atol=1e-5)


def test_all_blocks_come_from_one_forward_pass_per_batch(tmp_path, forward_passes, keras_hub):
    X, y = _images(n=10)
    extractor = _dino(layers="stages", pooling="cls+mean")
    extractor.extract(from_arrays(X, y), FeatureStore(tmp_path), progress=False)
    assert forward_passes == [3, 3, 3]  # ceil(10 / 4) batches, each returning all three blocks


def test_stages_are_the_blocks_and_depth_counts_blocks(keras_hub):
    extractor = _dino(layers="stages")
    assert extractor.layer_names == ["block1", "block2", "block3"]
    plan = {layer.name: (layer.depth, layer.stage) for layer in extractor.plan().layers}
    assert plan == {"block1": (0.3333, 1), "block2": (0.6667, 2), "block3": (1.0, 3)}
    assert _dino(layers=["last:2"]).layer_names == ["block2", "block3"]
    assert _dino(layers=["stages:2"]).layer_names == ["block1", "block3"]  # every 2nd, down from the top
    assert _dino(layers=[0.5, "top"]).layer_names == ["block2", "final_norm"]  # nearest block; the final norm


def test_layers_command_lists_every_block(capsys, keras_hub):
    from layerprobe.pipeline.cli import main

    kwargs = {**DINO_KWARGS, "position_embedding_shape": [SIZE, SIZE, 3]}
    assert main(["layers", DINO, "--input-size", str(SIZE), "--model-kwargs", json.dumps(kwargs)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0].startswith("block")}
    assert list(rows) == ["block1", "block2", "block3"]
    assert [row[1] for row in rows.values()] == ["19x16"] * 3  # 1 class + 2 register + 16 patch tokens
    assert [row[2:4] for row in rows.values()] == [["stage1", "0.33"], ["stage2", "0.67"], ["stage3", "1.00"]]


def test_cls_is_refused_for_a_vit_without_class_token(keras_hub):
    kwargs = {**VIT_KWARGS, "use_class_token": False}
    with pytest.raises(BackboneError, match="no class token"):
        FeatureExtractor(VIT, weights=None, input_size=SIZE, model_kwargs=kwargs, layers="stages", pooling="cls")
    extractor = FeatureExtractor(VIT, weights=None, input_size=SIZE, model_kwargs=kwargs, layers="stages",
                                 pooling="mean")
    assert extractor.backbone.spec.tokens == TokenLayout(prefix_tokens=0, class_token=False)
    assert extractor.feature_shapes == {"block1": (16,), "block2": (16,)}


def test_keys_identify_class_config_and_weights(keras_hub):
    first, again = _dino(layers="top"), _dino(layers="top")
    assert first.backbone.architecture.startswith("DINOV2Backbone@")
    assert first.plan() == again.plan()  # same class, config and seed: same keys
    deeper = FeatureExtractor(DINO, weights=None, input_size=SIZE, model_kwargs={**DINO_KWARGS, "num_layers": 2},
                              layers="top", seed=3)
    reseeded = FeatureExtractor(DINO, weights=None, input_size=SIZE, model_kwargs=DINO_KWARGS, layers="top", seed=4)
    assert deeper.backbone.architecture != first.backbone.architecture
    assert reseeded.backbone.architecture == first.backbone.architecture
    assert reseeded.backbone.weights_digest != first.backbone.weights_digest


def test_store_round_trip_and_resume_are_bit_identical(tmp_path, keras_hub):
    X, y = _images(n=16)
    extractor = _dino(layers="stages", pooling="cls+mean")
    store = FeatureStore(tmp_path / "store")
    reference = extractor.extract(from_arrays(X, y), store, chunk_size=8, progress=False)
    stored = {name: store.load(key).X for name, key in reference.keys.items()}
    assert all(values.shape == (16, 32) for values in stored.values())

    # A run killed after the first chunk: the partial chunks are kept and the rest is computed.
    resumed_store = FeatureStore(tmp_path / "resumed")
    work = extractor.open_work(from_arrays(X, y), resumed_store, reference.keys, extractor.layer_names, chunk_size=8)
    write_chunk(extractor.layers, 0, extractor.features(X[:8]), np.arange(8), [], work.partials)
    report = extractor.extract(from_arrays(X, y), resumed_store, chunk_size=8, progress=False)
    assert report.n_forward == 8
    for name, key in report.keys.items():
        np.testing.assert_array_equal(resumed_store.load(key).X, stored[name])
    again = _dino(layers="stages", pooling="cls+mean").extract(from_arrays(X, y), store, progress=False)
    assert again.n_forward == 0 and sorted(again.cached) == sorted(extractor.layer_names)


# --------------------------------------------------------------------------- presets


def _save_preset(keras_hub, folder, *, converter=True):
    backbone = keras_hub.models.DINOV2Backbone(image_shape=(SIZE, SIZE, 3), **DINO_KWARGS)
    backbone.save_to_preset(str(folder))
    if converter:
        keras_hub.layers.DINOV2ImageConverter(
            image_size=(SIZE, SIZE), scale=[1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)],
            offset=[-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
        ).save_to_preset(str(folder))
    return backbone


def test_a_local_preset_loads_with_its_weights_and_its_converter(tmp_path, keras_hub):
    saved = _save_preset(keras_hub, tmp_path / "tiny_dino")
    X, _ = _images(n=4)
    for model in (str(tmp_path / "tiny_dino"), f"keras_hub:preset:{tmp_path / 'tiny_dino'}"):
        extractor = FeatureExtractor(model, layers="top", pooling="none", batch_size=4)
        assert extractor.backbone.input_size == SIZE and extractor.backbone.weights == "preset"
        assert extractor.backbone.spec.preprocessing.startswith("x * [0.0171247")  # the converter's scale
        features = extractor.features(X)[0]  # raw pixels: the converter's scaling runs in the compiled pass
        x = (X / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        np.testing.assert_allclose(features, np.asarray(saved.predict_on_batch({"images": x.astype("float32")})),
                                   atol=1e-4)
    named = FeatureExtractor(str(tmp_path / "tiny_dino"), layers="top", preprocessing="torch")
    assert named.backbone.spec.rescaling is None and named.backbone.spec.preprocess_mode == "torch"


def test_a_preset_without_converter_needs_a_preprocessing(tmp_path, keras_hub):
    _save_preset(keras_hub, tmp_path / "bare", converter=False)
    with pytest.raises(BackboneError, match=r"no image converter.*preprocessing="):
        FeatureExtractor(str(tmp_path / "bare"), layers="top")
    assert FeatureExtractor(str(tmp_path / "bare"), layers="top", preprocessing="tf").backbone.spec.preprocess_mode == "tf"


def test_an_offline_preset_says_what_to_download_and_where(monkeypatch, keras_hub):
    import kagglehub
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        FeatureExtractor("keras_hub:preset:dinov2_small", layers="top")
    message = str(caught.value)
    assert "\n" not in message and "kagglehub.model_download('keras/dinov2/keras/dinov2_small/1')" in message
    assert 'model = "path/to/folder"' in message and message.endswith("Received: model='keras_hub:preset:dinov2_small'")


def test_unknown_classes_presets_and_bad_arguments_are_one_line_errors(keras_hub):
    with pytest.raises(BackboneError, match="keras-hub's ResNetBackbone is not one of the vision transformers"):
        FeatureExtractor("keras_hub:ResNetBackbone", weights=None)
    with pytest.raises(BackboneError, match="Unknown keras-hub preset 'dinov2_smal'.*dinov2_small"):
        FeatureExtractor("keras_hub:preset:dinov2_smal")
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights.*keras_hub:preset:"):
        FeatureExtractor(DINO, model_kwargs=DINO_KWARGS)  # weights default to "imagenet"
    with pytest.raises(BackboneError, match="could not build ViTBackbone.*divisible"):
        FeatureExtractor(VIT, weights=None, input_size=30, model_kwargs=VIT_KWARGS)
    with pytest.raises(BackboneError, match="must not set image_shape"):
        FeatureExtractor(VIT, weights=None, model_kwargs={**VIT_KWARGS, "image_shape": (32, 32, 3)})


def test_weights_files_of_the_rebuilt_or_the_keras_hub_model_load(tmp_path, keras_hub):
    source = _dino(layers="top").backbone
    source.model.save_weights(tmp_path / "rebuilt.weights.h5")
    backbone, _ = _reference_dinov2(keras_hub, seed=3)
    backbone.save_weights(tmp_path / "hub.weights.h5")
    for name in ("rebuilt", "hub"):
        loaded = FeatureExtractor(DINO, weights=str(tmp_path / f"{name}.weights.h5"), input_size=SIZE,
                                  model_kwargs=DINO_KWARGS, layers="top", seed=9).backbone
        assert loaded.weights_digest == source.weights_digest  # seed 9's random values all replaced
    deeper = {**DINO_KWARGS, "num_layers": 4}  # the 3-block files lack a block
    for name in ("rebuilt", "hub"):
        with pytest.raises(WeightsUnavailableError, match="Could not load weights.*Received: weights="):
            FeatureExtractor(DINO, weights=str(tmp_path / f"{name}.weights.h5"), input_size=SIZE,
                             model_kwargs=deeper, layers="top")


def test_the_readme_dinov2_config_and_a_relative_preset_folder_parse(tmp_path):
    from layerprobe.pipeline.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Vision transformers (keras-hub)"):]
    block = section[section.index("```toml") + len("```toml"):section.index("```", section.index("```toml") + 7)]
    (tmp_path / "images").mkdir()
    (tmp_path / "presets" / "tiny").mkdir(parents=True)
    (tmp_path / "presets" / "tiny" / "config.json").write_text("{}")
    (tmp_path / "dino.toml").write_text(block.replace('"path/to/images"', '"images"'))
    config = load_config(tmp_path / "dino.toml")
    backbone = config.backbones[0]
    assert (backbone.model, backbone.layers, config.features.pooling) == (
        "keras_hub:preset:dinov2_small", ("last:4",), ("cls+mean",))
    assert config.classifiers.multi_layer is True
    (tmp_path / "folder.toml").write_text(
        '[data]\npath = "images"\n[[backbones]]\nmodel = "presets/tiny"\npreprocessing = "tf"\n[finetune]\n')
    folder = load_config(tmp_path / "folder.toml").backbones[0]
    assert folder.model == str((tmp_path / "presets" / "tiny").resolve()) and folder.preprocessing == "tf"


def test_a_changed_preset_folder_changes_the_plan_signature(tmp_path):
    from layerprobe.features.plans import plan_signature

    folder = tmp_path / "preset"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.weights.h5").write_bytes(b"1234")
    settings = {"model": str(folder), "weights": "imagenet", "layers": ["last:4"], "pooling": "cls+mean"}
    before = plan_signature(settings)
    assert before is not None and before == plan_signature(dict(settings))
    (folder / "model.weights.h5").write_bytes(b"12345")  # new weights
    assert plan_signature(settings) != before
