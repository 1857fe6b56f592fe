"""Placement and cluster choice, without a cluster: a placement no node set can hold fails before
any Ray work naming the flag, the request and what the cluster has (with an autoscaler it only
says what the run waits for); the address a job joins and how a dead one fails."""
import os
import socket
import time

import pytest

import lmc
from lmc.train.placement import check_placement, worker_resources
from lmc.train.settings import RunSettings
from local_cluster import free_port
from pipeline.cluster import cluster_address, probe


def settings(**kw):
    return RunSettings(data="d", storage="s", name="n", **kw)


def nodes(*cpus, gpus=0):
    return [{"id": f"{i:02d}" * 20, "resources": {"CPU": c, "GPU": gpus}}
            for i, c in enumerate(cpus)]


@pytest.mark.parametrize("kw, per_worker, cluster, message", [
    (dict(num_workers=3, placement_strategy="STRICT_SPREAD"), {"CPU": 1}, nodes(1, 1),
     "--placement-strategy STRICT_SPREAD puts each of the 3 workers on its own node, but 2 "
     "node(s) can hold one. Requested: 3 worker(s) of CPU 1; the cluster has node 00000000: "
     "CPU 1; node 01010101: CPU 1"),
    (dict(num_workers=1, cpus_per_worker=4.0), {"CPU": 4}, nodes(2, 2),
     "no node can hold one worker (CPU 4; --cpus-per-worker / --gpus)"),
    (dict(num_workers=1, use_gpu=True), {"CPU": 1, "GPU": 1}, nodes(8),
     "no node can hold one worker (CPU 1, GPU 1; --cpus-per-worker / --gpus)"),
    (dict(num_workers=2, placement_strategy="STRICT_PACK"), {"CPU": 1}, nodes(1, 1),
     "--placement-strategy STRICT_PACK puts all 2 workers on one node"),
    (dict(num_workers=3), {"CPU": 1}, nodes(1, 1),
     "the cluster cannot hold 3 worker(s) of CPU 1 at once (--num-workers)"),
])
def test_a_placement_the_cluster_cannot_hold_fails_naming_flag_request_and_cluster(
        kw, per_worker, cluster, message):
    with pytest.raises(ValueError) as e:
        check_placement(settings(**kw), per_worker, cluster)
    assert message in str(e.value)


def test_placements_that_fit_pass_and_an_autoscaler_only_logs_what_it_waits_for():
    check_placement(settings(num_workers=2, placement_strategy="STRICT_SPREAD"), {"CPU": 1},
                    nodes(1, 1))
    check_placement(settings(num_workers=2, placement_strategy="STRICT_PACK"), {"CPU": 1},
                    nodes(2, 1))
    check_placement(settings(num_workers=4, placement_strategy="SPREAD"), {"CPU": 0.5},
                    nodes(1, 1))
    logged = []
    check_placement(settings(num_workers=2, placement_strategy="STRICT_SPREAD"), {"CPU": 1},
                    nodes(1), autoscaling=True, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("waiting for the autoscaler: ")
    assert "2 worker(s) of CPU 1" in logged[0]
    asked = []                       # a callable is asked only when the placement does not fit
    check_placement(settings(num_workers=1), {"CPU": 1}, nodes(1),
                    autoscaling=lambda: asked.append(1) or True)
    assert asked == []


def test_worker_resources_leave_ray_data_a_cpu_and_add_a_gpu_with_gpus():
    logged = []
    assert worker_resources(settings(num_workers=2), nodes(1, 1), log=logged.append) == \
        {"CPU": 0.5}                                    # two 1-CPU nodes: 1 CPU stays free
    assert "reserving 0.50 CPU per worker" in logged[0]
    assert worker_resources(settings(num_workers=2), nodes(4)) == {"CPU": 1.0}
    assert worker_resources(settings(num_workers=2, use_gpu=True), nodes(2, 2, gpus=1)) == \
        {"CPU": 1.0, "GPU": 1}


def test_placement_strategy_is_validated():
    with pytest.raises(lmc.ConfigError, match="'placement_strategy' = 'SPRAED'.*STRICT_SPREAD"):
        settings(placement_strategy="SPRAED")


def test_which_cluster_a_job_joins(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None                       # embedded Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(None) == "10.0.0.1:6379"           # as under `ray job submit`
    assert cluster_address("127.0.0.1:7000") == "127.0.0.1:7000"   # --address wins


def test_a_dead_address_fails_in_seconds_and_a_live_one_passes():
    port = free_port()                                         # nobody listens there now
    t0 = time.time()
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        probe(f"127.0.0.1:{port}")
    assert time.time() - t0 < 10
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe(f"127.0.0.1:{server.getsockname()[1]}")
    with pytest.raises(ValueError, match="expected host:port"):
        probe("somewhere")
    with pytest.raises(ValueError, match="expected host:port"):
        probe("127.0.0.1:99999")
    with pytest.raises(ValueError, match="is a URL .*ray job submit --address URL"):
        probe("http://127.0.0.1:8265")                     # the dashboard's, not the GCS


def test_a_checkout_ships_its_top_level_packages_and_an_installed_pipeline_none(tmp_path):
    """What `connect` hands a joined cluster as py_modules: every package folder beside
    `pipeline/` in a checkout (one holding pyproject.toml), named by nothing but the folders;
    beside other installed packages (site-packages), nothing."""
    import importlib.util
    import shutil

    import pipeline.cluster

    assert [os.path.basename(p) for p in pipeline.cluster.checkout_packages()] == \
        ["lmc", "pipeline"]
    for name in ("pipeline", "mine", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()                                # not a package
    shutil.copy(pipeline.cluster.__file__, tmp_path / "pipeline" / "cluster.py")
    spec = importlib.util.spec_from_file_location("moved_cluster",
                                                  tmp_path / "pipeline" / "cluster.py")
    moved = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(moved)
    assert moved.checkout_packages() == []                     # site-packages-like
    (tmp_path / "pyproject.toml").write_text("")
    assert moved.checkout_packages() == [str(tmp_path / n) for n in ("mine", "other", "pipeline")]
