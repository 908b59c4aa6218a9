"""Finetuning a keras-hub vision transformer: the last n blocks unfrozen, per-block rates, the token head.

Tiny models built from config (random weights, 32 px, 3 blocks); skipped where keras-hub is absent.
"""

import numpy as np
import pytest

pytest.importorskip("keras_hub")

import keras
from layerprobe.features.backbone import load_backbone
from layerprobe.features.inputs import from_arrays
from layerprobe.pipeline.finetune import FinetuneConfig, finetune
from layerprobe.pipeline.finetune.classifier_model import build_classifier_model
from layerprobe.pipeline.finetune.freezing import block_lr_scales, unfreeze_top

SIZE = 32
VIT = "keras_hub:ViTBackbone"
VIT_KWARGS = {"patch_size": 8, "num_layers": 3, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32}


@pytest.fixture(scope="module")
def vit():
    return load_backbone(VIT, weights=None, input_size=SIZE, model_kwargs=VIT_KWARGS, seed=0)


def test_unfreeze_blocks_unfreezes_exactly_the_last_n_blocks_and_the_final_norm(vit):
    classifier = build_classifier_model(vit, 3)
    for n, expected in [(0, []), (1, ["block3", "final_norm"]), (2, ["block2", "block3", "final_norm"]),
                        (3, ["block1", "block2", "block3", "final_norm"])]:
        assert unfreeze_top(classifier, vit.spec, n) == expected
        trainable = {layer.name for layer in vit.model.layers if layer.trainable and layer.weights}
        assert trainable == set(expected)
    assert unfreeze_top(classifier, vit.spec, "all")[0] == "embeddings"
    assert classifier.get_layer("predictions").trainable


def test_block_lr_decay_scales_each_block_below_the_top_one(vit):
    classifier = build_classifier_model(vit, 3)
    unfreeze_top(classifier, vit.spec, 3)
    scales = block_lr_scales(classifier, vit.spec, 0.5)
    by_block = {}
    for path, value in scales.items():
        by_block.setdefault(path.split("/")[0], set()).add(value)
    assert by_block == {"block2": {0.5}, "block1": {0.25}}
    assert all(not path.startswith(("block3", "final_norm")) for path in scales)  # the top block trains at 1


def test_the_head_reads_the_class_token_of_the_preprocessed_images(vit):
    classifier = build_classifier_model(vit, 2)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    pooled = keras.Model(classifier.input, classifier.get_layer("standardize").input).predict_on_batch(x)
    tokens = vit.model.predict_on_batch(vit.spec.preprocess_input(x.copy()))
    np.testing.assert_allclose(pooled, tokens[:, 0], rtol=1e-5, atol=1e-5)


def test_finetune_trains_a_transformer_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 90, (24, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.arange(24) % 2
    X[y == 1, :, :, 0] += 140  # class 1 is red
    config = FinetuneConfig(head_epochs=1, finetune_epochs=1, unfreeze_blocks=2, block_lr_decay=0.5,
                            learning_rate=1e-4, batch_size=8, augmentation=None, val_fraction=0.0)
    model = "keras_hub:DINOV2Backbone"
    kwargs = {"patch_size": 8, "num_layers": 3, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32,
              "position_embedding_shape": (SIZE, SIZE, 3)}
    result = finetune(model, from_arrays(X, y), output_dir=tmp_path, weights=None, input_size=SIZE,
                      model_kwargs=kwargs, config=config)
    assert result.unfrozen_layers == ("block2", "block3", "final_norm")
    assert result.epochs_run == 2 and result.model_path.is_file()
    reloaded = keras.saving.load_model(result.model_path)
    np.testing.assert_allclose(reloaded.predict_on_batch(X[:4].astype("float32")),
                               result.model.predict_on_batch(X[:4].astype("float32")), rtol=1e-4, atol=1e-5)


def test_a_saved_vit_loads_again(tmp_path, vit):
    classifier = build_classifier_model(vit, 2)
    classifier.save(tmp_path / "vit.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    reloaded = keras.saving.load_model(tmp_path / "vit.keras")
    np.testing.assert_allclose(reloaded.predict_on_batch(x), classifier.predict_on_batch(x), rtol=1e-5, atol=1e-6)
