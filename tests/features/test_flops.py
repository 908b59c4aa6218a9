"""Forward FLOPs per image up to a layer, counted from the Keras graph."""

import json

import keras
import pytest

from layerprobe.features.flops import forward_flops, gflops
from layerprobe.features.plans import ExtractionPlan, load_plan, save_plan


def _tiny():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # 8*8 positions x 3*3*3*4 weights
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(conv)  # 8*8 x 3*3*4
    side = keras.layers.Conv2D(4, 1, name="side")(inputs)  # a branch the dense layer does not read
    dense = keras.layers.Dense(5, name="dense")(keras.layers.Flatten(name="flat")(depthwise))  # 256 x 5
    return keras.Model(inputs, [dense, side])


def test_flops_are_twice_the_multiply_adds_of_the_layers_a_cut_depends_on():
    flops = forward_flops(_tiny(), ["conv", "depthwise", "flat", "dense", "side"])
    conv, depthwise, dense, side = 8 * 8 * 3 * 3 * 3 * 4, 8 * 8 * 3 * 3 * 4, 256 * 5, 8 * 8 * 3 * 4
    assert flops == {"conv": 2 * conv, "depthwise": 2 * (conv + depthwise), "flat": 2 * (conv + depthwise),
                     "dense": 2 * (conv + depthwise + dense), "side": 2 * side}


def test_vgg16_to_its_last_pool_is_the_published_15_4_billion_multiply_adds():
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    flops = forward_flops(model, ["block1_pool", "block5_pool"])
    assert flops["block5_pool"] == pytest.approx(2 * 15.35e9, rel=0.01)
    assert flops["block1_pool"] < flops["block5_pool"] and gflops(flops["block5_pool"]) == pytest.approx(30.69, 0.01)
    assert gflops(None) != gflops(None)  # unknown is NaN


def test_a_plan_saved_before_flops_were_counted_is_not_reused(tmp_path):
    plan = {"architecture": "VGG16", "weights_digest": "sha256:x", "input_size": 32, "preprocessing": "vgg16",
            "dtype": "float16", "compute_dtype": "float32", "max_pixels": 1,
            "layers": [{"name": "block1_pool", "stable_id": "block1_pool", "pooling": "avg", "depth": 0.2,
                        "stage": 1}]}
    assert ExtractionPlan.from_dict(json.loads(json.dumps(plan))).layers[0].forward_flops is None
    save_plan(tmp_path, "old", ExtractionPlan.from_dict(plan))
    assert load_plan(tmp_path, "old") is None  # rebuilt once, so that the rows report their FLOPs
    plan["layers"][0]["forward_flops"] = 1000
    save_plan(tmp_path, "new", ExtractionPlan.from_dict(plan))
    assert load_plan(tmp_path, "new").layers[0].forward_flops == 1000
