"""Spot-ready training on a real multi-node cluster on this machine (``local_cluster``): a head of
1 CPU (job server, driver, Ray Data's reads) and worker nodes of 2 CPUs, each holding exactly
one Ray Train worker of 2 CPUs, so a lost node is a lost rank; data and run folder on the S3
server on 127.0.0.1; the real `ray job submit`.

- elastic (``--num-workers 1-2``): the fake metadata server gives node B a spot notice, the spot
  watcher (``python -m pipeline.spot``) drains B with the notice's deadline, the run takes a
  just-in-time checkpoint at the step it learns of it, B is killed at the deadline, the run goes
  on with 1 worker on A from that checkpoint without waiting for a replacement, and when node C
  joins it grows back to 2 at the next resize check: attempts 2 -> 1 -> 2 with their causes;
- fixed (``--num-workers 2``): the same drain (by `ray drain-node` directly); the run waits for
  a replacement node and resumes from the just-in-time checkpoint.

Both runs are long (their iteration budget is never reached) and end with `ray job stop`: the
stop request checkpoints at the next step, and the attempts are read from that checkpoint.
The numbers the README reports are printed (`-s`).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from fake_imds import FakeIMDS
from local_cluster import LocalCluster
from test_multinode import ROOT, TINY, prepare_on_one_node, submit

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

NOTICE_S = 25          # the spot notice's deadline (AWS gives 120 s)
RESIZE_S = 10          # --resize-check-s (default 60)


@pytest.fixture(scope="module")
def shards(s3, videos_on_s3):
    return prepare_on_one_node("s3://lmc/el-shards")


@pytest.fixture
def cluster():
    c = LocalCluster()
    c.env["RAY_JOB_STOP_WAIT_TIME_S"] = "120"       # `ray job stop`: time for the stop checkpoint
    c.env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "1"
    # GCS marks a killed node dead after 3 missed 1 s health checks (default: 5 of 3 s). Until
    # then Ray Train's elastic count still sees its CPUs and would resize onto it; with the
    # default 60 s resize check that window has passed before the first check, with this
    # test's 10 s it might not have.
    c.env.update({"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                  "RAY_health_check_failure_threshold": "3"})
    try:
        c.start_head(cpus=1)
        yield c
    finally:
        c.shutdown()


class Job:
    """A submitted training job: its logs, the run folder's checkpoints on S3."""

    def __init__(self, cluster, s3, s3_server, name: str, args: list[str]):
        from ray.job_submission import JobSubmissionClient
        self.s3, self.prefix = s3, f"el-runs/{name}/"
        self.client = JobSubmissionClient(cluster.url)
        self.id = submit(cluster, s3_server, [
            "jobs/train_kth.py", "--data", "s3://lmc/el-shards", "--storage", "s3://lmc/el-runs",
            "--name", name, "--iterations", "100000", "--cpus-per-worker", "2",
            "--threads-per-worker", "1", "--max-failures", "0", *TINY, *args], wait=False)

    def logs(self) -> str:
        return self.client.get_job_logs(self.id)

    def wait_for(self, text: str, timeout_s: float = 300) -> str:
        from ray.job_submission import JobStatus
        deadline = time.time() + timeout_s
        while text not in (log := self.logs()):
            assert self.client.get_job_status(self.id) not in (
                JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED), log[-3000:]
            assert time.time() < deadline, (f"no {text!r} within {timeout_s} s; the attempts: "
                                            f"{self.attempt_lines(log)}\n{log[-3000:]}")
            time.sleep(0.5)
        return log

    @staticmethod
    def attempt_lines(log: str) -> list[str]:
        """The console's attempt and notice lines (what happened, for a failure message)."""
        return [line for line in log.splitlines()
                if line.startswith(("attempt ", "preemption notice"))
                or "would include nodes" in line or "resiz" in line]

    def checkpoints(self) -> list[int]:
        """Iterations of the committed checkpoints (checkpoint.json, written last, is there)."""
        found = self.s3.list_objects_v2(Bucket="lmc", Prefix=self.prefix).get("Contents", [])
        return sorted(int(k["Key"].split("checkpoint_")[1][:9]) for k in found
                      if "/checkpoint_" in k["Key"] and k["Key"].endswith("/checkpoint.json"))

    def stop(self) -> list[dict]:
        """`ray job stop` (SIGTERM: checkpoint at the next step, end); every attempt, from the
        run's attempt log, checked against the newest checkpoint's lineage."""
        from ray.job_submission import JobStatus
        from lmc.checkpoint import load_train_state
        self.client.stop_job(self.id)
        deadline = time.time() + 180
        while self.client.get_job_status(self.id) not in (JobStatus.STOPPED, JobStatus.FAILED,
                                                           JobStatus.SUCCEEDED):
            assert time.time() < deadline, self.logs()[-3000:]
            time.sleep(1)
        log = self.logs()
        assert "stopped: run" in log or "stopped by SIGTERM" in log, log[-3000:]
        attempts = json.loads(self.s3.get_object(
            Bucket="lmc", Key=f"{self.prefix}attempts.json")["Body"].read())["attempts"]
        newest = f"{self.prefix}checkpoint_{self.checkpoints()[-1]:09d}/train_state.pt"
        with tempfile.TemporaryDirectory() as d:
            self.s3.download_file("lmc", newest, os.path.join(d, "train_state.pt"))
            lineage = load_train_state(d)["attempts"]
        # the stop checkpoint holds the whole history too (its attempt logged every earlier one)
        assert [x["started_at"] for x in lineage] == [x["started_at"] for x in attempts]
        return attempts


def iteration_in(log: str, marker: str) -> int:
    """The iteration a "preemption notice at iteration N" line names."""
    return int(log.split(marker, 1)[1].split(":", 1)[0].split()[0])


def start_watcher(cluster, imds, node: str):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.spot", "--metadata-url", imds.url, "--node-id", node,
         "--address", cluster.address, "--poll-s", "0.5"],
        env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_elastic_run_checkpoints_on_the_notice_shrinks_and_grows_back(cluster, s3, s3_server,
                                                                     shards):
    a, b = cluster.add_node(cpus=2), cluster.add_node(cpus=2)
    job = Job(cluster, s3, s3_server, "elastic", [
        "--num-workers", "1-2", "--resize-check-s", str(RESIZE_S), "--checkpoint-every", "100000"])
    job.wait_for("attempt 1 training on 2 worker(s) (new run")
    time.sleep(5)                                     # some iterations
    imds = FakeIMDS()
    watcher = start_watcher(cluster, imds, b)
    try:
        deadline = imds.give_notice(NOTICE_S)        # AWS's notice, through the watcher
        out, _ = watcher.communicate(timeout=60)
        assert watcher.returncode == 0 and "this node is draining" in out, out
    finally:
        watcher.kill()
        imds.close()
    log = job.wait_for("preemption notice at iteration", timeout_s=NOTICE_S)
    notice_at = iteration_in(log, "preemption notice at iteration ")
    while notice_at not in job.checkpoints():        # the just-in-time checkpoint, committed
        assert time.time() < deadline, f"no checkpoint before the deadline:\n{job.logs()[-3000:]}"
        time.sleep(0.2)
    time.sleep(max(0.0, deadline - time.time()))
    killed_at = cluster.kill(b)                       # reclaimed at the deadline
    job.wait_for("attempt 2 training on 1 worker(s)", timeout_s=240)
    time.sleep(RESIZE_S)
    c = cluster.add_node(cpus=2)                      # a replacement joins
    joined_at = time.time()
    job.wait_for("training on 2 worker(s) (scale-up", timeout_s=240)
    time.sleep(3)
    attempts = job.stop()

    assert [x["world_size"] for x in attempts[:3]] == [2, 1, 2]
    assert [x["cause"] for x in attempts[:3]] == ["new run", "restart after a preemption",
                                                 "scale-up"]
    first, shrunk, grown = attempts[:3]
    assert first["preemption"]["iteration"] == notice_at
    assert first["preemption"]["nodes"] == [b]
    assert abs(first["preemption"]["deadline"] - deadline) < 2
    # the restart restores the just-in-time checkpoint: no finished iteration before the
    # notice is lost
    assert shrunk["iteration"] == notice_at
    assert shrunk["resumed_from"] == f"checkpoint_{notice_at:09d}"
    assert {w["node_id"] for w in shrunk["workers"]} == {a}
    assert {w["node_id"] for w in grown["workers"]} == {a, c}
    # growing: the controller asked for a checkpoint first, so the 1-worker attempt's
    # iterations carry over (the checkpoint is the step at which the request arrived)
    assert grown["iteration"] > shrunk["iteration"]
    assert grown["resumed_from"] == f"checkpoint_{grown['iteration']:09d}"
    assert "resizing the workers after checkpoint_" in job.logs()
    recovery = shrunk["first_step_at"] - killed_at
    regrow = grown["first_step_at"] - joined_at
    print(f"\nelastic: notice at iteration {notice_at} ({NOTICE_S} s before the reclaim), "
          f"restored iteration {shrunk['iteration']} (lost 0); kill -> first step on 1 worker "
          f"{recovery:.1f} s; node joined -> first step on 2 workers {regrow:.1f} s (resize "
          f"check every {RESIZE_S} s), resumed from {grown['resumed_from']} (the 1-worker "
          f"attempt trained {grown['iteration'] - shrunk['iteration']} iterations, all kept)")
    assert recovery <= 30, recovery


def test_fixed_run_waits_for_a_replacement_and_resumes_from_the_notice(cluster, s3, s3_server,
                                                                      shards):
    a, b = cluster.add_node(cpus=2), cluster.add_node(cpus=2)
    job = Job(cluster, s3, s3_server, "fixed", ["--num-workers", "2", "--checkpoint-every",
                                                "100000"])
    job.wait_for("attempt 1 training on 2 worker(s) (new run")
    time.sleep(5)
    drained = subprocess.run(
        ["ray", "drain-node", "--address", cluster.address, "--node-id", b, "--reason",
         "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "test: spot reclaim",
         "--deadline-remaining-seconds", str(NOTICE_S)], env=cluster.env, capture_output=True,
        text=True, timeout=60)
    deadline = time.time() + NOTICE_S
    assert drained.returncode == 0, drained.stderr
    log = job.wait_for("preemption notice at iteration", timeout_s=NOTICE_S)
    notice_at = iteration_in(log, "preemption notice at iteration ")
    while notice_at not in job.checkpoints():
        assert time.time() < deadline, job.logs()[-3000:]
        time.sleep(0.2)
    time.sleep(max(0.0, deadline - time.time()))
    killed_at = cluster.kill(b)
    time.sleep(15)                                   # no replacement yet: the run waits
    assert "attempt 2 training" not in job.logs()
    c = cluster.add_node(cpus=2)
    joined_at = time.time()
    job.wait_for("attempt 2 training on 2 worker(s)", timeout_s=240)
    attempts = job.stop()
    first, second = attempts[:2]
    assert second["cause"] == "restart after a preemption" and second["world_size"] == 2
    assert second["iteration"] == notice_at == first["preemption"]["iteration"]
    assert second["resumed_from"] == f"checkpoint_{notice_at:09d}"
    assert {w["node_id"] for w in second["workers"]} == {a, c}
    print(f"\nfixed 2 workers: notice at iteration {notice_at}, restored {second['iteration']}; "
          f"node joined -> first step {second['first_step_at'] - joined_at:.1f} s "
          f"({second['first_step_at'] - killed_at:.1f} s after the kill, 15 s of it waiting)")
