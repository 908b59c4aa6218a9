"""Extraction plans: feature keys that later runs read back without building the backbone."""

import os

import numpy as np

from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays
from layerprobe.features.plans import ExtractionPlan, PlannedLayer, load_plan, plan_signature, save_plan

SETTINGS = {
    "model": "VGG16", "weights": None, "layers": ["stages"], "pooling": "avg", "input_size": 32,
    "dtype": "float32", "mixed_precision": False, "model_kwargs": {}, "seed": 0, "max_pixels": 89_478_485,
}


def _plan(**changes):
    values = dict(
        architecture="VGG16", weights_digest="sha256:ab", input_size=32, preprocessing="caffe",
        dtype="float32", compute_dtype="float32", max_pixels=89_478_485,
        layers=(PlannedLayer("block1_pool", "block1_pool", "avg", 0.2, forward_flops=1_000),),
    )
    return ExtractionPlan(**{**values, **changes})


def test_plan_round_trips_through_the_store(tmp_path):
    signature = plan_signature(SETTINGS)
    assert load_plan(tmp_path, signature) is None
    save_plan(tmp_path, signature, _plan())
    assert load_plan(tmp_path, signature) == _plan()
    assert not [p for p in (tmp_path / ".plans").iterdir() if p.name.startswith(".tmp-")]


def test_every_setting_changes_the_signature():
    base = plan_signature(SETTINGS)
    for name, value in [("layers", ["top"]), ("pooling", "max"), ("input_size", 64), ("seed", 1),
                        ("dtype", "float16"), ("model_kwargs", {"x": 1}), ("max_pixels", 10)]:
        assert plan_signature({**SETTINGS, name: value}) != base, name


def test_a_touched_weights_file_changes_the_signature(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"1")
    first = plan_signature({**SETTINGS, "weights": str(weights)})
    os.utime(weights, ns=(1, 1))
    assert plan_signature({**SETTINGS, "weights": str(weights)}) != first
    assert plan_signature({**SETTINGS, "weights": str(tmp_path / "missing.h5")}) is None


def test_unreadable_plan_is_ignored(tmp_path):
    signature = plan_signature(SETTINGS)
    save_plan(tmp_path, signature, _plan())
    (tmp_path / ".plans" / f"{signature}.json").write_text("{not json")
    assert load_plan(tmp_path, signature) is None


def test_plan_keys_change_with_max_pixels_like_the_dataset():
    default, guarded = _plan().keys("d" * 64), _plan(max_pixels=100).keys("d" * 64)
    assert default["block1_pool"].dataset == "d" * 64
    assert guarded["block1_pool"].dataset != default["block1_pool"].dataset


def test_extractor_keys_are_its_plan_keys():
    extractor = FeatureExtractor("VGG16", weights=None, layers="stages", input_size=32)
    data = from_arrays(np.zeros((2, 8, 8, 3), "uint8"), [0, 1], class_names=["a", "b"])
    plan = ExtractionPlan.from_dict(extractor.plan().to_dict())
    assert plan.keys(data.digest()) == extractor.keys(data)
    assert [layer.name for layer in plan.layers] == extractor.layer_names
    assert all(0 < layer.depth <= 1 for layer in plan.layers) and plan.layers[-1].depth == 1
