"""Shared fixtures: one local Ray session for the whole test run (2 CPUs, loopback only), the
small shard datasets that several modules train or evaluate on (each prepared once per
session), and a loader for the `jobs/*.py` entry points.

Lanes: `python -m pytest -q` runs the fast tests (pyproject's addopts deselect `slow`);
`python -m pytest -q -m slow` runs the slow ones (an explicit -m replaces the default one).
"""
import importlib.util
import os
import sys

import pytest

from local_cluster import free_port

# Tests talk to 127.0.0.1 only and must not pick up a user's cluster.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster shared by every test that needs one."""
    import ray

    for attempt in range(3):
        if ray.is_initialized():
            break
        try:
            ray.init(
                num_cpus=2,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as e:
            # Ray gives the raylet a fixed 30 s to register; a loaded machine can miss that
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """One intra-op thread: on this shared 2-core machine two OpenMP threads run ~40x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- shard datasets shared by several modules (one preparation each per session) ---------------

@pytest.fixture(scope="session")
def kth_train_shards(ray_session, tmp_path_factory):
    """KTH-like walking/boxing videos (60 frames, 2 per action: person 1 train, 17 test) ->
    32x32 shards of 9 + 3 frames, train stride 2: test_train's SHORT, OUT, IMG (its CFG trains
    on them; test_train_jobs, test_ablation and test_train_s3 too)."""
    from pipeline import KTHSource, ShardConfig, prepare, write_kth_like

    root = tmp_path_factory.mktemp("kth-train-data")
    write_kth_like(str(root / "avi"), per_action=2, actions=("walking", "boxing"), num_frames=60)
    out = str(root / "shards")
    prepare(KTHSource(str(root / "avi")), out,
            ShardConfig(short_len=9, out_len=3, img_size=32, train_stride=2), verbose=False)
    return out


@pytest.fixture(scope="session")
def mmnist_shards(ray_session, tmp_path_factory):
    """Moving-MNIST 32x32: 16 train windows of 10 + 4 frames, 12 test windows of 10 + 6
    (test_evaluate scores them, test_tune sweeps on them)."""
    import pipeline

    out = tmp_path_factory.mktemp("mmnist-data") / "mm32"
    pipeline.prepare(pipeline.MovingMNISTSource(train_sequences=16, test_sequences=12, chunk=8),
                     str(out), pipeline.ShardConfig(img_size=32, short_len=10, out_len=4,
                                                    test_out_len=6), verbose=False)
    return str(out)


# -- the jobs ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def load_job():
    """``load_job("evaluate")`` -> the module of jobs/evaluate.py, imported as `python jobs/x.py`
    would run it (jobs/ on sys.path for its `import _job`), without running ``main``."""
    jobs = os.path.join(ROOT, "jobs")
    if jobs not in sys.path:
        sys.path.insert(0, jobs)

    def load(name: str):
        path = os.path.join(jobs, name + ".py")
        spec = importlib.util.spec_from_file_location(f"job_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# -- S3 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's) on 127.0.0.1; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id",
                  "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log", "AWS_REGION": "us-east-1"}


def s3_settings(endpoint: str) -> dict:
    """Fake env-only credentials and the endpoint override, as environment variables."""
    return {**S3_CREDENTIALS, "LMC_S3_ENDPOINT": endpoint}


def s3_client(endpoint: str):
    """A boto3 client of the server at ``endpoint``, with bucket "lmc"."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if "lmc" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket="lmc")
    return client


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """``s3_settings`` in this process's environment; a boto3 client with bucket "lmc"."""
    for k, v in s3_settings(s3_server).items():
        monkeypatch.setenv(k, v)
    return s3_client(s3_server)


# The multi-node modules' S3 bucket and videos (test_multinode.py, test_elastic.py)
@pytest.fixture(scope="module")
def s3(s3_server):
    """A boto3 client of the S3 server, whose settings this process's environment gets too
    (the test reads and writes the bucket as the jobs do)."""
    os.environ.update(s3_settings(s3_server))
    return s3_client(s3_server)


@pytest.fixture(scope="module")
def videos_on_s3(s3, tmp_path_factory):
    """KTH-like videos (walking and boxing, persons 1 and 17) in s3://lmc/mn-avi/."""
    from pipeline import write_kth_like

    local = tmp_path_factory.mktemp("mn-avi")
    write_kth_like(str(local), per_action=2, actions=("walking", "boxing"), num_frames=60)
    for name in os.listdir(local):
        s3.upload_file(str(local / name), "lmc", f"mn-avi/{name}")
    return "s3://lmc/mn-avi"
