"""The [cluster] section, the cluster options of the command line, and the client lifecycle (no Keras here)."""

import os

import pytest

from layerprobe.pipeline.cli import _cluster_settings, build_parser
from layerprobe.pipeline.cluster import ClusterConfig, ClusterError, open_client
from layerprobe.pipeline.config import ConfigError, config_from_dict, example_config


def _raw(tmp_path, cluster):
    (tmp_path / "images").mkdir(exist_ok=True)
    raw = {"data": {"path": "images"}, "backbones": [{"model": "VGG16"}]}
    if cluster is not None:
        raw["cluster"] = cluster
    return raw


def test_cluster_section_is_optional_and_parsed(tmp_path):
    assert config_from_dict(_raw(tmp_path, None), tmp_path).cluster is None
    assert config_from_dict(_raw(tmp_path, {"threads_per_worker": 2}), tmp_path).cluster is None
    local = config_from_dict(_raw(tmp_path, {"workers": 3, "memory_limit": "2GB"}), tmp_path).cluster
    assert local == ClusterConfig(workers=3, memory_limit="2GB") and local.is_local and local.n_local_workers == 3
    remote = config_from_dict(_raw(tmp_path, {"scheduler": "tcp://node1:8786"}), tmp_path).cluster
    assert remote.scheduler == "tcp://node1:8786" and not remote.is_local
    gpus = config_from_dict(_raw(tmp_path, {"gpus": [0, 1]}), tmp_path).cluster
    assert gpus.gpus == (0, 1) and gpus.n_local_workers == 2


def test_cluster_section_problems_are_reported_with_the_others(tmp_path):
    raw = _raw(tmp_path, {"scheduler": "tcp://x:8786", "workers": 2, "gpus": [1, 1], "memory_limit": 0, "nodes": 3})
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, tmp_path)
    text = str(error.value)
    assert "[cluster] nodes: unknown key" in text
    assert "[cluster] gpus: expected a non-empty list of distinct GPU numbers" in text
    assert "[cluster] memory_limit" in text
    assert "either scheduler (a running cluster) or workers/gpus" in text


def test_example_config_documents_the_cluster_section(tmp_path):
    text = example_config()
    assert "# [cluster]" in text and '# scheduler = "tcp://' in text and "# workers = 2" in text
    (tmp_path / "images").mkdir()
    (tmp_path / "layerprobe.toml").write_text(text)


@pytest.mark.parametrize(
    "argv, configured, expected",
    [
        ([], None, None),
        ([], ClusterConfig(workers=2), ClusterConfig(workers=2)),
        (["--workers", "3"], None, ClusterConfig(workers=3)),
        (["--scheduler", "tcp://h:8786"], ClusterConfig(workers=2, threads_per_worker=2), ClusterConfig(
            scheduler="tcp://h:8786", threads_per_worker=2)),
        (["--threads-per-worker", "4"], ClusterConfig(workers=2), ClusterConfig(workers=2, threads_per_worker=4)),
        (["--gpus", "0,1", "--memory-limit", "8GB"], None, ClusterConfig(gpus=(0, 1), memory_limit="8GB")),
    ],
)
def test_command_line_cluster_options_override_the_config(argv, configured, expected):
    args = build_parser().parse_args(["run", "config.toml", *argv])
    assert _cluster_settings(args, configured) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads-per-worker", "2"], "add --workers N"),
        (["--scheduler", "tcp://h:8786", "--workers", "2"], "either scheduler"),
        (["--gpus", "a,b"], "--gpus takes GPU numbers"),
        (["--gpus", "0,1", "--workers", "3"], "one worker per GPU"),
    ],
)
def test_command_line_cluster_options_that_do_not_fit(argv, message):
    args = build_parser().parse_args(["extract", "--model", "VGG16", "--data", "d", "--store", "s", *argv])
    with pytest.raises(ClusterError, match=message):
        _cluster_settings(args)


def test_no_settings_means_no_client():
    with open_client(None) as client:
        assert client is None


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    pytest.importorskip("distributed")
    import layerprobe.pipeline.cluster as cluster_module

    monkeypatch.setattr(cluster_module, "_CONNECT_TIMEOUT", "2s")
    with pytest.raises(ClusterError, match="Cannot reach tcp://127.0.0.1:9"):
        with open_client(ClusterConfig(scheduler="tcp://127.0.0.1:9")):
            pass


def test_one_local_worker_per_gpu_sees_only_its_own():
    """Without GPUs too: each worker process starts with its own CUDA_VISIBLE_DEVICES and a GPU resource."""
    pytest.importorskip("distributed")
    from layerprobe.features.cluster_extraction import decoding_threads, gpu_resources

    lines = []
    with open_client(ClusterConfig(gpus=(0, 1)), log=lines.append) as client:
        devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(devices.values()) == ["0", "1"]
        assert gpu_resources(client) == {"GPU": 1}
        assert client.submit(lambda: 1, resources={"GPU": 1}).result() == 1
    assert "one per GPU [0, 1]" in lines[0] and "dashboard:" in lines[0]
    assert decoding_threads(2, cores=16) == 8 and decoding_threads(3, cores=2) == 1
