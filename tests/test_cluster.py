"""The worker pool: sizing from the cluster (and its autoscaler), clear refusals, and a cluster that
gains its workers after the run started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sys as _sys
import time

import pytest

from bluff_ray.run.cluster import PoolError, plan_pool
from conftest import SUPPORT


def test_gpu_workers_are_sized_from_what_the_autoscaler_can_provide():
    # the driver starts before any GPU node exists (min_workers 0): 16 GPU workers are planned
    p = plan_pool({"CPU": 0}, {"CPU": 64, "GPU": 16}, None, None, local=False)
    assert (p.use_gpu, p.size, p.ceiling, p.grow) == (True, 16, 16, False)
    assert plan_pool({"CPU": 0}, {"GPU": 16}, 4, None, local=False).size == 4
    with pytest.raises(PoolError, match="20 workers were requested, but the cluster can have at most 16 GPUs"):
        plan_pool({"CPU": 0}, {"GPU": 16}, 20, None, local=False)


def test_local_resources_are_all_there_will_be():
    p = plan_pool({"CPU": 2}, None, None, None, local=True)
    assert (p.use_gpu, p.size, p.ceiling, p.grow) == (False, 2, 2, False)
    with pytest.raises(PoolError, match="3 workers were requested, but this machine has 2 CPUs"):
        plan_pool({"CPU": 2}, None, 3, None, local=True)
    with pytest.raises(PoolError, match="no GPU"):
        plan_pool({"CPU": 2}, None, None, "cuda", local=True)
    assert plan_pool({"CPU": 2, "GPU": 2}, None, None, None, local=True).use_gpu
    assert not plan_pool({"CPU": 2, "GPU": 2}, None, None, "cpu", local=True).use_gpu
    assert plan_pool({"CPU": 8}, None, None, None, local=True, max_useful=3).size == 3


def test_a_fixed_cluster_without_autoscaler_information_grows_with_its_nodes():
    p = plan_pool({"CPU": 0}, None, None, None, local=False)
    assert (p.size, p.ceiling, p.grow) == (1, None, True)
    p = plan_pool({"CPU": 0}, None, 2, None, local=False)  # asked for 2: wait for them
    assert (p.size, p.grow) == (2, False)
    assert plan_pool({"CPU": 0}, {"GPU": sys.maxsize}, None, None, local=False).grow  # unlimited node type


@pytest.mark.ray
@pytest.mark.parametrize("extra", [[], ["--num-workers", "2"]])
def test_a_cluster_that_gains_workers_after_the_run_started_gets_one_actor_per_worker(tmp_path, extra):
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [_sys.executable, str(SUPPORT / "grow_cluster.py"), str(tmp_path / "out"), *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["waited"], got["stderr"]  # the driver said it was waiting before the node came
    assert got["rc"] == 0, got["stderr"]
    assert "pairs written: 6" in got["stdout"] and "with 2 worker(s)" in got["stdout"], got["stdout"]


def _cluster_config(groups, max_resources=None):
    from ray.core.generated.autoscaler_pb2 import ClusterConfig

    config = ClusterConfig()
    for name, resources, lo, hi in groups:
        g = config.node_group_configs.add()
        g.name, g.min_count, g.max_count = name, lo, hi
        g.resources.update(resources)
    config.max_resources.update(max_resources or {})
    return config


def test_autoscaler_limits_follow_the_node_groups_and_the_cluster_cap():
    from bluff_ray.run.cluster import limits_from_cluster_config

    head = ("head", {"CPU": 8}, 1, 1)
    gpus = ("gpu", {"CPU": 16, "GPU": 4}, 0, 4)
    assert limits_from_cluster_config(_cluster_config([head, gpus])) == {"CPU": 72, "GPU": 16}
    assert limits_from_cluster_config(_cluster_config([head, gpus], {"GPU": 10})) == {"CPU": 72, "GPU": 10}
    assert limits_from_cluster_config(_cluster_config([head, ("gpu", {"GPU": 1}, 0, -1)]))["GPU"] == sys.maxsize
    assert limits_from_cluster_config(_cluster_config([head, ("gpu", {"GPU": 4}, 2, 2)])) is None  # fixed
    assert limits_from_cluster_config(_cluster_config([])) is None


@pytest.mark.ray
def test_autoscaler_limits_read_what_the_autoscaler_published_in_the_gcs(ray_session):
    """The published cluster config (the GCS key-value entry the autoscaler writes) is read through
    the public GCS client, and agrees with Ray's own (private) reading of the same entry."""
    import ray
    from ray.experimental.internal_kv import internal_kv_get_gcs_client

    from bluff_ray.run.cluster import CLUSTER_CONFIG_KEY, CLUSTER_CONFIG_NAMESPACE, autoscaler_limits

    assert autoscaler_limits(ray) is None  # a local Ray: no autoscaler
    client = internal_kv_get_gcs_client()
    config = _cluster_config([("head", {"CPU": 2}, 1, 1), ("gpu", {"CPU": 8, "GPU": 2}, 0, 3)])
    client.internal_kv_put(CLUSTER_CONFIG_KEY, config.SerializeToString(), True, CLUSTER_CONFIG_NAMESPACE)
    try:
        assert autoscaler_limits(ray) == {"CPU": 26, "GPU": 6}
        from ray._private.state import state  # test only: the reference reading

        assert dict(state.get_max_resources_from_cluster_config()) == {"CPU": 26, "GPU": 6}
    finally:
        client.internal_kv_del(CLUSTER_CONFIG_KEY, False, CLUSTER_CONFIG_NAMESPACE)
    assert autoscaler_limits(ray) is None


@pytest.mark.ray
def test_nothing_is_written_after_the_pool_has_shut_down(ray_session, tmp_path):
    """``ray.kill`` alone returns before the actor's process stops writing; the pool first stops the
    actors' writes (their own concurrency group, so busy actors answer at once), then kills them."""
    from bluff_ray.run.cluster import PoolPlan, WorkerPool

    class _Churner:
        """A worker whose unit never ends: it writes one object every millisecond until stopped."""

        def __init__(self, out: str):
            from bluff_ray.results.store import Store

            self.store = Store(out)

        def pid(self) -> int:
            return os.getpid()

        def churn(self) -> None:
            i = 0
            while True:
                self.store.write_bytes(f"w/{os.getpid()}-{i}", b"x")
                i += 1
                time.sleep(0.001)

        def stop(self, timeout_s: float) -> bool:
            return self.store.seal(timeout_s)

    ray = ray_session
    cls = ray.remote(concurrency_groups={"control": 1}, max_concurrency=2)(_Churner).options(num_cpus=0)
    pool = WorkerPool(
        ray,
        lambda i: cls.remote(str(tmp_path)),
        PoolPlan(use_gpu=False, size=2, ceiling=2, grow=False),
        60,
        stop=lambda a, timeout_s: a.stop.options(concurrency_group="control").remote(timeout_s),
    )
    pool.start()
    for w in pool.workers:
        ray.get(w.ready_ref, timeout=60)
        w.ready = True
    busy = [w.handle.churn.remote() for w in pool.workers]
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path / "w") if (tmp_path / "w").exists() else []) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.shutdown()
    written = sorted(os.listdir(tmp_path / "w"))
    assert len({n.split("-")[0] for n in written}) == 2  # both were writing when the pool shut down
    time.sleep(1.0)
    assert sorted(os.listdir(tmp_path / "w")) == written
    for ref in busy:
        with pytest.raises(ray.exceptions.RayError):  # the unit ended with the worker (stopped or killed)
            ray.get(ref, timeout=30)
