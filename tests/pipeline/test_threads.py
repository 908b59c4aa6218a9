"""Native thread pools sized to the cores and the problem (layerprobe.pipeline.threads)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import make_classification
from threadpoolctl import threadpool_info

import layerprobe
from layerprobe.pipeline import threads
from layerprobe.pipeline.classifiers import fit_classifier
from layerprobe.pipeline.threads import (
    THREAD_VARIABLES,
    cgroup_cpu_quota,
    native_threads,
    threads_for,
    usable_cores,
    user_thread_variables,
    with_native_threads,
)


def _pools():
    """Thread counts of the loaded BLAS and OpenMP pools."""
    return sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] in ("blas", "openmp")})


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- cgroups and affinity


def test_cgroup_v2_quota_at_the_namespace_root(tmp_path):
    _write(tmp_path / "proc", "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") == 1.5


def test_cgroup_v2_smallest_quota_of_the_process_cgroup_and_its_parents(tmp_path):
    _write(tmp_path / "proc", "0::/system.slice/job.scope\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    _write(tmp_path / "cg" / "system.slice" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "cg" / "system.slice" / "job.scope" / "cpu.max", "400000 100000\n")
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") == 3.0


def test_cgroup_v2_without_a_limit(tmp_path):
    _write(tmp_path / "proc", "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") is None


def test_cgroup_v1_quota_under_cpu_cpuacct(tmp_path):
    _write(tmp_path / "proc", "12:memory:/slurm/job1\n4:cpu,cpuacct:/slurm/job1\n")
    _write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cg" / "cpu,cpuacct" / "slurm" / "job1" / "cpu.cfs_quota_us", "200000\n")
    _write(tmp_path / "cg" / "cpu,cpuacct" / "slurm" / "job1" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") == 2.0


def test_cgroup_v1_path_of_the_host_not_visible_in_a_container(tmp_path):
    """/proc/self/cgroup names the host's path; the container's own limit sits at the mount's root."""
    _write(tmp_path / "proc", "3:cpu:/docker/0123abcd\n")
    _write(tmp_path / "cg" / "cpu" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cg" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") == 0.5


@pytest.mark.parametrize("cpu_max", ["", "garbage\n", "200000\n", "-5 100000\n", "100000 0\n"])
def test_cgroup_unreadable_or_malformed_means_no_quota(tmp_path, cpu_max):
    _write(tmp_path / "proc", "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "proc", root=tmp_path / "cg") is None
    assert cgroup_cpu_quota(proc_cgroup=tmp_path / "missing", root=tmp_path / "cg") is None


@pytest.mark.parametrize(("affinity", "quota", "expected"), [
    ({0, 1, 2, 3}, None, 4),
    ({0, 1, 2, 3}, 2.0, 2),
    ({0, 1, 2, 3}, 2.5, 2),  # rounded down
    ({0, 1, 2, 3}, 0.5, 1),  # at least one
    ({5}, 8.0, 1),
])
def test_usable_cores_is_the_affinity_mask_lowered_to_the_quota(monkeypatch, affinity, quota, expected):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: affinity, raising=False)
    monkeypatch.setattr("layerprobe.core.cores.cgroup_cpu_quota", lambda: quota)
    assert usable_cores() == expected


# --------------------------------------------------------------------------- the rule


def test_threads_for_small_problems_get_one_thread_large_ones_the_cores_per_job(monkeypatch):
    monkeypatch.setattr(threads, "ONE_THREAD_BELOW", 1_000_000)
    assert threads_for(1000, 512, cores=8) == 1
    assert threads_for(10_000, 512, cores=8) == 8
    assert threads_for(10_000, 512, cores=8, n_jobs=1) == 8
    assert threads_for(10_000, 512, cores=8, n_jobs=2) == 4
    assert threads_for(10_000, 512, cores=8, n_jobs=3) == 2
    assert threads_for(10_000, 512, cores=8, n_jobs=16) == 1
    assert threads_for(10_000, 512, cores=8, n_jobs=-1) == 1  # one job per core
    assert threads_for(10_000, 512, cores=8, n_jobs=-5) == 2  # 4 jobs


def test_user_thread_variables_are_the_non_empty_ones():
    environ = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": " ", "PATH": "/bin"}
    assert user_thread_variables(environ) == {"OMP_NUM_THREADS": "3"}


def _without_thread_variables(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_native_threads_limits_the_pools_and_restores_them(monkeypatch):
    _without_thread_variables(monkeypatch)
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    before = _pools()
    with native_threads(np.zeros((50, 4))) as limit:
        assert limit == 1
        assert _pools() == [1]
    assert _pools() == before


def test_nested_and_concurrent_entries_keep_the_outer_limit_and_restore_once(monkeypatch):
    """The probes inside a row, or joblib threads, enter again: the first entry decides, the last one restores."""
    _without_thread_variables(monkeypatch)
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    before = _pools()
    outer = native_threads(np.zeros((50, 4)))
    assert outer.__enter__() == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)  # an inner entry would choose otherwise
    inner = native_threads(np.zeros((50, 4)))
    assert inner.__enter__() == 1
    outer.__exit__(None, None, None)  # a concurrent entry leaves first: the pools stay limited
    assert _pools() == [1]
    inner.__exit__(None, None, None)
    assert _pools() == before


def test_native_threads_changes_nothing_for_data_without_a_2d_shape(monkeypatch):
    _without_thread_variables(monkeypatch)
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    for data in (np.zeros(5), "not an array", {}, {"a": np.zeros(3)}):
        with native_threads(data) as limit:
            assert limit is None


def test_native_threads_counts_a_mapping_of_layers_side_by_side(monkeypatch):
    _without_thread_variables(monkeypatch)
    seen = []
    monkeypatch.setattr(threads, "threads_for", lambda n, d, n_jobs=None: seen.append((n, d, n_jobs)) or 1)
    with native_threads({"a": np.zeros((7, 3)), "b": np.zeros((7, 2, 2))}, n_jobs=2):
        pass
    assert seen == [(7, 7, 2)]


def test_with_native_threads_reads_dotted_arguments_and_defaults(monkeypatch):
    _without_thread_variables(monkeypatch)
    seen = []
    monkeypatch.setattr(threads, "threads_for", lambda n, d, n_jobs=None: seen.append((n, d, n_jobs)) or 1)

    @with_native_threads("train.X", n_jobs="config.n_jobs")
    def score(train, config, *, extra=None):
        """Docstring kept."""
        return _pools()

    config = SimpleNamespace(n_jobs=3)
    assert score(SimpleNamespace(X=np.zeros((11, 5))), config) == [1]
    assert seen == [(11, 5, 3)]
    assert score.__doc__ == "Docstring kept."

    @with_native_threads("X", n_jobs="n_jobs")
    def fit(X, y=None, n_jobs=None):
        return X

    fit(np.zeros((4, 2)))
    assert seen[-1] == (4, 2, None)


def test_the_same_fits_with_one_and_two_threads_give_the_same_choices(monkeypatch):
    _without_thread_variables(monkeypatch)
    monkeypatch.setattr(threads, "ONE_THREAD_BELOW", 0)
    X, y = make_classification(n_samples=240, n_features=40, n_informative=12, n_classes=3, random_state=0)
    results = {}
    for cores in (1, 2):
        monkeypatch.setattr(threads, "usable_cores", lambda cores=cores: cores)
        with native_threads(X) as limit:
            assert limit == cores
            results[cores] = {
                name: fit_classifier(X, y, name, cv=3, random_state=0) for name in ("logreg", "linear_svm", "ridge")
            }
    for name in results[1]:
        one, two = results[1][name], results[2][name]
        assert one.best_params == two.best_params, name
        assert one.cv_score == pytest.approx(two.cv_score, abs=1e-9), name
        np.testing.assert_array_equal(one.estimator.predict(X), two.estimator.predict(X))


_CHILD = """
import json, numpy as np
from threadpoolctl import threadpool_info
from layerprobe.pipeline import threads
threads.ONE_THREAD_BELOW = 10**9  # every problem is small: the rule would take 1 thread
def pools():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] in ("blas", "openmp")})
before = pools()
with threads.native_threads(np.zeros((100, 10))) as limit:
    inside = pools()
print(json.dumps({"before": before, "inside": inside, "limit": limit}))
"""


def _child(extra_env):
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env.update(extra_env)
    # The folder holding the layerprobe under test, not all of sys.path (pytest adds the folder above the checkout).
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(layerprobe.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_users_omp_num_threads_is_respected():
    if usable_cores() < 2:
        pytest.skip("needs 2 usable cores to tell the user's 2 threads from the rule's 1")
    ruled = _child({})
    assert ruled["limit"] == 1 and ruled["inside"] == [1] and max(ruled["before"]) >= 2
    users = _child({"OMP_NUM_THREADS": "2"})
    assert users["limit"] is None
    assert users["inside"] == users["before"] == [2]
