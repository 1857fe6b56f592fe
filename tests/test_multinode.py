"""Multi-node for real on one machine: a head and worker nodes started with `ray start` on
127.0.0.1 (1 CPU each; `local_cluster.LocalCluster`), data and run folders on the S3 server on
127.0.0.1 (real clusters share no disk), the real `ray job submit`.

- DDP across two nodes: `--num-workers 2 --placement-strategy STRICT_SPREAD` puts the ranks on
  different nodes (metrics.json names both), their replicas agree after every optimizer step;
- a node lost mid-run: its raylet and workers are killed by process group; when a new node
  joins, the run resumes from its latest checkpoint and ends with the right iteration count,
  its attempts recording the restart (the recovery time is printed);
- Ray Data across nodes: preparation on the two-node cluster runs tasks on both nodes and
  writes the same shards (checksums) as on one node;
- which cluster a job joins: never a dead one (a stale address file after a killed head, or a
  RAY_ADDRESS nobody answers at).
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import s3_settings
from local_cluster import LocalCluster, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--img-size", "32", "--short-len", "9", "--out-len", "3",
        "--long-len", "9", "--memory-slots", "8", "--width", "0.0625", "--batch-size", "4",
        "--eval-windows", "2", "--test-windows", "4"]
# Clusters of their own and submitted jobs: minutes each. A Ray instance in the pytest process
# (the other modules' `ray_session`) keeps `ray start` nodes from joining, so CI runs this
# module in a pytest process of its own (`-m multinode`; the other lanes deselect it).
pytestmark = [pytest.mark.slow, pytest.mark.multinode]


@pytest.fixture
def cluster():
    c = LocalCluster()
    try:
        c.start_head(cpus=1)
        c.add_node(cpus=1)
        yield c
    finally:
        c.shutdown()


def submit(cluster, s3_server, args: list[str], wait: bool = True, working_dir: str = ROOT):
    """`ray job submit` of `python jobs/<args>` with the S3 settings; (returncode, log) when
    waiting, else the submission id."""
    runtime_env = {"env_vars": s3_settings(s3_server),
                   "excludes": [".git", "runs", "data", ".cache", "results", "docs"]}
    cmd = ["ray", "job", "submit", "--address", cluster.url, "--working-dir", working_dir,
           "--runtime-env-json", json.dumps(runtime_env)]
    if not wait:
        cmd += ["--no-wait"]
    out = subprocess.run(cmd + ["--", "python", *args], env=cluster.env, capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
    if wait:
        return out.returncode, out.stdout + out.stderr
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"raysubmit_[A-Za-z0-9]+", out.stdout).group(0)


def prepare_args(output: str) -> list[str]:
    return ["jobs/prepare_kth.py", "--input", "s3://lmc/mn-avi", "--output", output,
            "--short-len", "9", "--out-len", "3", "--img-size", "32", "--train-stride", "2"]


def read_json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket="lmc", Key=key)["Body"].read())


def prepare_on_one_node(output: str) -> str:
    """The videos prepared by the job on an embedded one-node Ray, outside any test cluster
    (a Ray instance in this test process would keep `ray start` nodes from joining: this module
    runs in a pytest process of its own, see .ci/run)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, *prepare_args(output)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return output


@pytest.fixture(scope="module")
def one_node_shards(videos_on_s3, tmp_path_factory):
    return prepare_on_one_node(str(tmp_path_factory.mktemp("one-node") / "shards"))


def test_ddp_across_two_nodes_and_data_preparation_on_both(one_node_shards, cluster, s3,
                                                           s3_server, tmp_path):
    from ray.util.state import list_tasks

    # Ray Data on two nodes, then the same preparation on the session's one-node cluster
    rc, log = submit(cluster, s3_server, prepare_args("s3://lmc/mn-shards"))
    assert rc == 0, log[-3000:]
    tasks = list_tasks(address=cluster.url, filters=[("type", "=", "NORMAL_TASK")], limit=10_000,
                       detail=True, raise_on_missing_output=False)
    ran_on = {t.node_id for t in tasks if t.state == "FINISHED" and "Write" in t.name}
    assert ran_on == set(cluster.procs), [(t.name, t.node_id) for t in tasks]
    from pipeline import read_manifest
    two = read_manifest("s3://lmc/mn-shards")
    one = read_manifest(one_node_shards)
    assert sorted(s["sha256"] for s in two["shards"]) == sorted(s["sha256"] for s in one["shards"])
    assert two["rows"] == one["rows"] and two["rows"]["train"] > 0

    # DDP with one rank per node
    trace = tmp_path / "trace"          # both nodes are on this machine: one folder serves both
    rc, log = submit(cluster, s3_server, [
        "jobs/train_kth.py", "--data", "s3://lmc/mn-shards", "--storage", "s3://lmc/mn-runs",
        "--name", "spread", "--iterations", "4", "--checkpoint-every", "2", "--num-workers", "2",
        "--placement-strategy", "STRICT_SPREAD", "--trace-parameters", str(trace), *TINY])
    assert rc == 0, log[-3000:]
    m = read_json(s3, "mn-runs/spread/metrics.json")
    assert m["iterations"] == 4 and m["world_size"] == 2
    assert [w["rank"] for w in m["workers"]] == [0, 1]
    assert {w["node_id"] for w in m["workers"]} == set(cluster.procs)     # one rank per node
    r0 = json.loads((trace / "rank0-start0.json").read_text())
    r1 = json.loads((trace / "rank1-start0.json").read_text())
    assert len(r0) == 3 * 4 and r0 == r1     # every optimizer step: the same weights on both

    # a placement the cluster can never hold fails at once, naming the flag and what it has
    rc, log = submit(cluster, s3_server, [
        "jobs/train_kth.py", "--data", "s3://lmc/mn-shards", "--storage", "s3://lmc/mn-runs",
        "--name", "three", "--num-workers", "3", "--placement-strategy", "STRICT_SPREAD",
        "--iterations", "2", *TINY, "--batch-size", "6"])
    assert rc != 0
    assert "--placement-strategy STRICT_SPREAD puts each of the 3 workers on its own node, but " \
           "2 node(s) can hold one" in log, log[-2000:]


def test_a_lost_node_is_replaced_and_the_run_resumes(cluster, s3, s3_server, videos_on_s3):
    data = "s3://lmc/mn-shards-loss"
    rc, log = submit(cluster, s3_server, prepare_args(data))
    assert rc == 0, log[-3000:]
    every, total = 4, 24
    job = submit(cluster, s3_server, [
        "jobs/train_kth.py", "--data", data, "--storage", "s3://lmc/mn-runs", "--name", "loss",
        "--iterations", str(total), "--checkpoint-every", str(every), "--num-workers", "2",
        "--placement-strategy", "STRICT_SPREAD", "--max-failures", "3", *TINY], wait=False)
    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(cluster.url)

    def committed() -> int:
        """The newest checkpoint committed to the run folder (its checkpoint.json, written
        last, is there): what a restart resumes from, with every file verified."""
        found = s3.list_objects_v2(Bucket="lmc", Prefix="mn-runs/loss/").get("Contents", [])
        return max([int(k["Key"].split("checkpoint_")[1][:9]) for k in found
                    if "/checkpoint_" in k["Key"] and k["Key"].endswith("/checkpoint.json")],
                   default=0)

    deadline = time.time() + 600
    while committed() < every:
        assert client.get_job_status(job) not in (JobStatus.FAILED, JobStatus.STOPPED), \
            client.get_job_logs(job)[-3000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
    worker_node = next(n for n in cluster.procs if n != next(iter(cluster.procs)))
    killed_at = cluster.kill(worker_node)           # the second node dies mid-run
    # what a restart resumes from: the newest committed checkpoint, or one more if rank 0
    # survived and finished committing the next one after the kill
    before = committed()
    upper = before + every
    replacement = cluster.add_node(cpus=1)           # ... and a new machine joins
    joined_at = time.time()
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                             JobStatus.STOPPED):
        assert time.time() < deadline + 600, "the run did not finish"
        time.sleep(2)
    log = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, log[-3000:]

    m = read_json(s3, "mn-runs/loss/metrics.json")
    assert m["iterations"] == total
    restart = m["attempts"][-1]
    assert restart["cause"] == "restart after a failure"
    # it resumes from the newest verified checkpoint, and says so
    assert before <= restart["iteration"] <= upper, (before, upper)
    assert restart["resumed_from"] == f"checkpoint_{restart['iteration']:09d}"
    nodes = {w["node_id"] for w in restart["workers"]}
    assert replacement in nodes and worker_node not in nodes
    assert [h["iteration"] for h in m["loss_history"]][-1] == total
    recovery = restart["first_step_at"] - killed_at
    print(f"\nnode lost at checkpoint {before}: resumed from {restart['iteration']}, first step "
          f"{recovery:.1f} s after the kill ({restart['first_step_at'] - joined_at:.1f} s after "
          f"the replacement joined, {joined_at - killed_at:.1f} s after the kill)")
    assert recovery > 0


def test_a_dead_cluster_never_hangs_a_job(tmp_path):
    """A head killed uncleanly leaves its address file behind (Ray's `ray_current_cluster`,
    which a bare `ray.init()` would try to join); a job without --address or RAY_ADDRESS must
    start its embedded Ray instead. A RAY_ADDRESS nobody answers at fails in seconds, naming
    the address and the fix."""
    cluster = LocalCluster()
    cluster.env["RAY_TMPDIR"] = cluster.temp         # Ray's default temp dir, for this test only
    cluster.start_head(cpus=1, temp_dir=False)       # so its address file lands there
    address_file = os.path.join(cluster.temp, "ray", "ray_current_cluster")

    def prepare(output: str, **env):
        cmd = [sys.executable, os.path.join(ROOT, "jobs", "prepare_mmnist.py"), "--output",
               str(tmp_path / output), "--img-size", "32", "--out-len", "4",
               "--train-sequences", "2", "--test-sequences", "2"]
        t0 = time.time()
        out = subprocess.run(cmd, env={**cluster.env, **env}, capture_output=True, text=True,
                             timeout=300)
        return out, time.time() - t0

    try:
        deadline = time.time() + 60
        while not os.path.exists(address_file):        # `ray start` writes it once up
            assert time.time() < deadline, "ray start wrote no address file"
            time.sleep(0.5)
        cluster.kill(next(iter(cluster.procs)))        # stale now: nothing answers there
        out, seconds = prepare("mm")
        assert out.returncode == 0, out.stderr[-2000:]
        assert (tmp_path / "mm" / "manifest.json").exists()
        print(f"\njob beside a stale cluster file: done in {seconds:.0f} s")

        dead = f"127.0.0.1:{free_port()}"
        out, seconds = prepare("mm2", RAY_ADDRESS=dead)
        assert out.returncode == 1 and seconds < 30, (seconds, out.stderr[-2000:])
        assert f"error: no Ray cluster answers at {dead}" in out.stderr
        assert "unset RAY_ADDRESS" in out.stderr
        assert not (tmp_path / "mm2").exists()
    finally:
        cluster.shutdown()


def test_the_autoscaling_twin_adds_a_worker_node_for_training_and_removes_it(
        s3, s3_server, videos_on_s3, tmp_path):
    """cluster-local.yaml on Ray's fake multi-node provider: a head of 1 CPU, a 2-worker
    STRICT_SPREAD job; the autoscaler launches a `worker.gpu` node for the second rank and
    terminates it once idle."""
    import yaml
    from ray.util.state import list_nodes

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster-local.yaml")))
    cluster = LocalCluster()
    cluster.env["RAY_FAKE_CLUSTER"] = "1"
    # The provider starts its nodes without an IP address, so they would take the machine's
    # outward one; this makes every process of this cluster use 127.0.0.1 (Ray's switch for
    # single-machine clusters; the fake nodes are started by the head, not by `ray start`).
    cluster.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    config["provider"]["gcs_address"] = cluster.address
    path = tmp_path / "cluster-local.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster.start_head(cpus=1, extra=[f"--autoscaling-config={path}"])
    try:
        head = next(iter(cluster.procs))
        # Shards made outside this cluster, so that the node the autoscaler adds is the
        # training job's (a preparation here would have one launched, and ended idle, first).
        data = prepare_on_one_node("s3://lmc/mn-shards-autoscale")
        t0 = time.time()
        rc, log = submit(cluster, s3_server, [
            "jobs/train_kth.py", "--data", data, "--storage", "s3://lmc/mn-runs",
            "--name", "autoscaled", "--iterations", "4", "--checkpoint-every", "2",
            "--num-workers", "2", "--placement-strategy", "STRICT_SPREAD", *TINY],
            working_dir=f"local://{ROOT}")      # as cluster-local.yaml says: see there why
        assert rc == 0, log[-3000:]
        assert "waiting for the autoscaler" in log
        m = read_json(s3, "mn-runs/autoscaled/metrics.json")
        added = {w["node_id"] for w in m["workers"]} - {head}
        assert len(added) == 1                          # the second rank ran on a new node
        print(f"\nautoscaler: job with a launched worker node done in {time.time() - t0:.0f} s")
        deadline = time.time() + 300
        while any(n.node_id in added and n.state == "ALIVE"
                  for n in list_nodes(address=cluster.url, timeout=10)):
            assert time.time() < deadline, "the idle worker node was not removed"
            time.sleep(5)
        print(f"autoscaler: idle worker node removed {time.time() - t0:.0f} s after the submit")
    finally:
        cluster.shutdown()
