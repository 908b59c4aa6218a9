"""Extraction: values against a direct Keras call, one forward pass, caching, resume."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from layerprobe.core.errors import BackboneError
from layerprobe.features.device import DeviceForward
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.inputs import from_arrays, from_directory
from layerprobe.features.keys import FeatureKey
from layerprobe.features.layers import UnknownLayerError
from layerprobe.features.store import FeatureStore, IncompleteEntryError
from layerprobe.features.truncate import build_extractor
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _images(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    return X, y


def _direct_features(extractor, layer_name, X):
    """What a user would compute by hand: truncate, preprocess a copy, call, pool."""
    backbone = extractor.backbone
    truncated = keras.Model(backbone.model.input, backbone.model.get_layer(layer_name).output)
    x = backbone.spec.preprocess_input(X.astype("float32").copy())
    out = keras.ops.convert_to_numpy(truncated(x, training=False))
    return out.mean(axis=(1, 2))


@pytest.mark.parametrize(
    "model, model_kwargs, layers",
    [
        ("VGG16", None, ["block2_pool", "block5_pool"]),
        ("MobileNetV2", {"alpha": 0.35}, ["stage2", "top"]),
        ("ResNet50", None, ["conv3_block4_out", "conv5_block3_out"]),
        ("EfficientNetB0", None, ["stage3"]),
    ],
)
def test_stored_features_equal_a_direct_keras_call(tmp_path, model, model_kwargs, layers):
    X, y = _images()
    extractor = FeatureExtractor(
        model, weights=None, layers=layers, input_size=32, batch_size=8, model_kwargs=model_kwargs
    )
    store = FeatureStore(tmp_path / "store")
    report = extractor.extract(from_arrays(X, y), store, progress=False)
    assert sorted(report.computed) == sorted(extractor.layer_names)
    for name in extractor.layer_names:
        stored = store.load(report.keys[name])
        np.testing.assert_allclose(stored.X, _direct_features(extractor, name, X), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(stored.y, y)


def test_all_layers_come_from_one_forward_pass_per_batch(tmp_path, forward_passes):
    X, y = _images(n=20)
    extractor = FeatureExtractor("VGG16", weights=None, layers="stages", input_size=32, batch_size=8)
    extractor.extract(from_arrays(X, y), FeatureStore(tmp_path), progress=False)
    assert forward_passes == [5, 5, 5]  # ceil(20 / 8) batches, each returning all five block pools


def test_cached_features_cost_no_forward_pass(tmp_path, monkeypatch):
    X, y = _images()
    store = FeatureStore(tmp_path)
    extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32)
    extractor.extract(from_arrays(X, y), store, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was called for cached features")

    monkeypatch.setattr(FeatureExtractor, "iter_features", forbidden)
    report = extractor.extract(from_arrays(X, y), store, progress=False)
    assert report.cached == ["block1_pool", "block3_pool"] and report.computed == []
    assert report.n_forward == 0


def test_only_missing_layers_are_computed(tmp_path):
    X, y = _images()
    store = FeatureStore(tmp_path)
    FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32).extract(
        from_arrays(X, y), store, progress=False
    )
    report = FeatureExtractor("VGG16", weights=None, layers=["block1_pool", "block2_pool"], input_size=32).extract(
        from_arrays(X, y), store, progress=False
    )
    assert report.cached == ["block1_pool"] and report.computed == ["block2_pool"]


def _count_builds_and_traces(monkeypatch) -> tuple[list, list]:
    """Record every multi-output model built and every compiled forward pass made."""
    import layerprobe.features.extract as extract_module

    builds, traces = [], []
    build = extract_module.build_extractor

    def counting_build(model, layers, pooling, **kwargs):
        builds.append(tuple(info.name for info in layers))
        return build(model, layers, pooling, **kwargs)

    make = DeviceForward.__init__

    def counting_make(self, model, preprocess):
        traces.append(model.name)
        return make(self, model, preprocess)

    monkeypatch.setattr(extract_module, "build_extractor", counting_build)
    monkeypatch.setattr(DeviceForward, "__init__", counting_make)
    return builds, traces


def _fresh_features(settings, dataset, root):
    """Features of `dataset` from a newly built extractor, as the reference."""
    store = FeatureStore(root)
    report = FeatureExtractor("VGG16", **settings).extract(dataset, store, progress=False)
    return {name: store.load(key).X for name, key in report.keys.items()}


def test_a_second_extract_on_new_data_reuses_the_built_model(tmp_path, monkeypatch):
    settings = dict(weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=8)
    extractor = FeatureExtractor("VGG16", **settings)
    builds, traces = _count_builds_and_traces(monkeypatch)
    store = FeatureStore(tmp_path / "store")
    extractor.extract(from_arrays(*_images(n=16, seed=0)), store, progress=False)
    second = from_arrays(*_images(n=20, seed=1))
    report = extractor.extract(second, store, progress=False)
    assert report.computed == ["block1_pool", "block3_pool"] and report.n_forward == 20
    assert builds == [("block1_pool", "block3_pool")] and len(traces) == 1
    expected = _fresh_features(settings, second, tmp_path / "fresh")
    for name in extractor.layer_names:
        np.testing.assert_array_equal(store.load(report.keys[name]).X, expected[name])


def test_kept_models_are_per_layer_set(tmp_path, monkeypatch):
    settings = dict(weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=8)
    extractor = FeatureExtractor("VGG16", **settings)
    store = FeatureStore(tmp_path / "store")
    extractor.extract(from_arrays(*_images(n=16, seed=0)), store, progress=False)
    second = from_arrays(*_images(n=16, seed=1))
    FeatureExtractor("VGG16", **{**settings, "layers": ["block1_pool"]}).extract(second, store, progress=False)
    builds, _ = _count_builds_and_traces(monkeypatch)
    report = extractor.extract(second, store, progress=False)
    assert report.computed == ["block3_pool"] and builds == [("block3_pool",)]
    expected = _fresh_features(settings, second, tmp_path / "fresh")
    np.testing.assert_array_equal(store.load(report.keys["block3_pool"]).X, expected["block3_pool"])


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(FeatureKey)])
def test_every_key_field_changes_the_digest(field):
    key = FeatureKey("VGG16", "sha256:a", "block1_pool", "avg", 32, "p", "float32", "float32", "sha256:d")
    value = getattr(key, field)
    changed = dataclasses.replace(key, **{field: value + 1 if isinstance(value, int) else value + "x"})
    assert changed.digest != key.digest and changed.entry_name != key.entry_name


@pytest.mark.parametrize(
    "change",
    [
        {"weights": "seed"},
        {"layers": ["block2_pool"]},
        {"pooling": "max"},
        {"input_size": 40},
        {"dtype": "float16"},
        {"labels": True},
    ],
)
def test_changing_a_setting_is_a_cache_miss(tmp_path, change):
    X, y = _images(n=8)
    settings = dict(weights=None, layers=["block1_pool"], input_size=32, pooling="avg", dtype="float32")
    store = FeatureStore(tmp_path)
    first = FeatureExtractor("VGG16", **settings).extract(from_arrays(X, y), store, progress=False)
    seed = 0
    if change.get("weights") == "seed":
        seed = 1
    else:
        settings.update({k: v for k, v in change.items() if k != "labels"})
    if change.get("labels"):
        y = y[::-1].copy()
    second = FeatureExtractor("VGG16", seed=seed, **settings).extract(from_arrays(X, y), store, progress=False)
    assert second.computed and not second.cached
    assert set(first.keys.values()).isdisjoint(second.keys.values())


def test_float16_storage(tmp_path):
    X, y = _images(n=8)
    store = FeatureStore(tmp_path)
    report = FeatureExtractor("VGG16", weights=None, layers=["block2_pool"], input_size=32, dtype="float16").extract(
        from_arrays(X, y), store, progress=False
    )
    assert store.load(report.keys["block2_pool"]).X.dtype == np.float16


def test_unknown_layer_lists_closest_names():
    with pytest.raises(UnknownLayerError, match="block3_pool"):
        FeatureExtractor("VGG16", weights=None, layers=["block3_pol"], input_size=32)


def test_input_size_below_minimum_is_refused():
    with pytest.raises(ValueError, match="minimum of 75"):
        FeatureExtractor("InceptionV3", weights=None, input_size=32)


def test_flatten_of_a_huge_layer_is_refused():
    with pytest.raises(ValueError, match="max_flatten_dim"):
        FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], pooling="flatten", input_size=224)


def test_none_pooling_keeps_spatial_maps(tmp_path):
    X, y = _images(n=8)
    store = FeatureStore(tmp_path)
    report = FeatureExtractor("VGG16", weights=None, layers=["block4_pool"], pooling="none", input_size=32).extract(
        from_arrays(X, y), store, progress=False
    )
    assert store.load(report.keys["block4_pool"]).X.shape == (8, 2, 2, 512)


def test_unreadable_images_are_skipped_and_recorded(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    (root / "cats" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("not an image")
    store = FeatureStore(tmp_path / "store")
    report = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32).extract(
        from_directory(root), store, progress=False
    )
    skipped = dict(report.skipped)
    assert set(map(os.path.basename, skipped)) == {"empty.png", "notes.jpg"}
    assert all(reason for reason in skipped.values())
    stored = store.load(report.keys["block1_pool"])
    assert len(stored.X) == 8 and not any(s.endswith(("empty.png", "notes.jpg")) for s in stored.sample_ids)
    assert stored.metadata["n_skipped"] == 2


_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from layerprobe.features import store as store_module
    from layerprobe.features.extract import FeatureExtractor
    from layerprobe.features.inputs import from_arrays
    from layerprobe.features.store import FeatureStore

    original = store_module.PartialEntry.write_chunk
    writes = []
    def write_then_die(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        writes.append(index)
        if len(writes) == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
    store_module.PartialEntry.write_chunk = write_then_die

    data = np.load({data!r})
    extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4)
    extractor.extract(from_arrays(data["X"], data["y"]), FeatureStore({store!r}), chunk_size=8, progress=False)
    """
)


def test_killed_extraction_resumes_to_identical_features(tmp_path):
    X, y = _images(n=40)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    killed_store = tmp_path / "killed"
    script = _KILLED_RUN.format(repo=str(REPO), kill_after=5, data=str(tmp_path / "data.npz"), store=str(killed_store))
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]

    store = FeatureStore(killed_store)
    extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool", "block3_pool"], input_size=32, batch_size=4)
    keys = extractor.keys(from_arrays(X, y))
    for key in keys.values():
        assert not store.has(key)
        with pytest.raises(IncompleteEntryError, match="resume"):
            store.load(key)

    resumed = extractor.extract(from_arrays(X, y), store, chunk_size=8, progress=False)
    # Five chunk writes = chunks 0-1 of both layers and chunk 2 of one: chunks 0-1 are not redone.
    assert resumed.n_forward == 40 - 16

    reference_store = FeatureStore(tmp_path / "reference")
    reference = extractor.extract(from_arrays(X, y), reference_store, chunk_size=8, progress=False)
    for name in extractor.layer_names:
        np.testing.assert_array_equal(store.load(resumed.keys[name]).X, reference_store.load(reference.keys[name]).X)
    assert not (killed_store / ".partial").exists() or not any((killed_store / ".partial").iterdir())


@pytest.mark.parametrize("model, exact", [("VGG16", True), ("MobileNetV2", False)])
def test_device_loop_features_equal_the_host_preprocessed_forward_pass(tmp_path, model, exact):
    """The loop (uint8 to the device, preprocessing compiled in, batches in flight) against what the
    extractor did before: `preprocess_input` on the host, `predict_on_batch` per padded batch.
    Caffe-mode preprocessing (VGG16) gives the same bits; 'tf' mode (MobileNetV2) a division that the
    compiler may turn into a multiplication: the same up to the last bit."""
    X, y = _images(n=20)
    extractor = FeatureExtractor(model, weights=None, layers="stages", input_size=32, batch_size=8)
    store = FeatureStore(tmp_path)
    report = extractor.extract(from_arrays(X, y), store, chunk_size=16, progress=False)
    host = build_extractor(extractor.backbone.model, extractor.layers, extractor.pooling)
    expected = [[] for _ in extractor.layers]
    for start in range(0, len(X), 8):
        batch = X[start : start + 8]
        padded = np.concatenate([batch, np.zeros((8 - len(batch), *batch.shape[1:]), batch.dtype)])
        outputs = host.predict_on_batch(extractor.backbone.spec.preprocess_input(padded.astype("float32")))
        for parts, output in zip(expected, outputs):
            parts.append(np.asarray(output)[: len(batch)])
    for name, parts in zip(extractor.layer_names, expected):
        stored = store.load(report.keys[name]).X
        if exact:
            np.testing.assert_array_equal(stored, np.concatenate(parts))
        else:
            np.testing.assert_allclose(stored, np.concatenate(parts), rtol=1e-6, atol=1e-7)


def test_batch_size_auto_is_32_on_a_cpu_and_recorded(tmp_path):
    X, y = _images(n=12)
    extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32)
    assert extractor.get_config()["batch_size"] == "auto"
    store = FeatureStore(tmp_path)
    report = extractor.extract(from_arrays(X, y), store, progress=False)
    assert extractor.batch_size == 32
    assert store.load(report.keys["block1_pool"]).metadata["batch_size"] == 32


@pytest.mark.parametrize("value, policy", [(False, "float32"), (True, "mixed_float16"), ("float16", "mixed_float16"),
                                           ("bfloat16", "mixed_bfloat16")])
def test_mixed_precision_names_the_compute_policy_which_is_part_of_the_key(value, policy):
    X, y = _images(n=4)
    extractor = FeatureExtractor("VGG16", weights=None, layers=["block1_pool"], input_size=32, mixed_precision=value)
    assert extractor.compute_dtype == policy
    assert extractor.keys(from_arrays(X, y))["block1_pool"].compute_dtype == policy


def test_unknown_mixed_precision_is_refused():
    with pytest.raises(BackboneError, match="mixed_precision must be"):
        FeatureExtractor("VGG16", weights=None, input_size=32, mixed_precision="float8")


@pytest.mark.parametrize(
    ("batch_size", "image_side", "expected"),
    [(128, 32, 2048), (32, 64, 672), (64, 64, 640), (32, 224, 256), (8, 224, 256), (512, 32, 4096), (32, None, 256)],
)
def test_default_chunks_grow_for_small_images_only(batch_size, image_side, expected):
    from layerprobe.features.chunks import chunk_ranges, default_chunk_size

    assert default_chunk_size(batch_size, image_side) == expected
    assert expected % batch_size == 0 and expected >= max(256, 8 * batch_size)
    if image_side and expected > max(256, 8 * batch_size):  # grown: at most 8 MiB of pixels and 2,048 samples
        assert expected * image_side**2 * 3 <= 8 * 2**20 and expected <= 2048
    assert len(chunk_ranges(10_000, batch_size, image_side=image_side)[0]) == min(expected, 10_000)
