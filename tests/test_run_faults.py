"""A run's state under injected faults, with real Ray Train runs on the session's cluster:
a damaged latest checkpoint, a full disk (a real tmpfs), a SIGKILLed
driver, a second job on the same run, SIGINT, a resume that changes the learning rate. Each
asserts what is restored (iteration, weights hash) and that no verified checkpoint was lost.

The ranks' agreement (``lmc.train.control``) is tested without Ray on a real 2-process gloo
group (fast lane)."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray.cloudpickle
import torch

import lmc
from lmc.reference import CheckpointError
from lmc.train import RunFailedError, train
from lmc.train.checkpoints import RunCheckpoints
from lmc.train.hooks import Hook, TraceParameters, _digest
from lmc.train.lease import FENCE_S, LEASE_FILE
from lmc.train.run_folder import storage_location
from test_train import CFG, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the hooks below go to workers


@dataclasses.dataclass
class CountStarts(Hook):
    """Appends a line to ``path`` each time a worker group's rank 0 starts (to count retries)."""
    path: str

    def setup(self, trainer):
        if trainer.rank == 0:
            with open(self.path, "a") as f:
                f.write(f"{trainer.start}\n")


def starts(path) -> list[int]:
    return [int(x) for x in open(path).read().split()] if os.path.exists(path) else []


def verified(run_dir) -> list[str]:
    """Names of the run's checkpoints that verify, oldest first."""
    store = RunCheckpoints(storage_location(str(run_dir)))
    out = []
    for name in store.names():
        try:
            store.verify(name)
            out.append(name)
        except CheckpointError:
            pass
    return out


def weights_of(folder) -> str:
    return _digest(lmc.checkpoint.load_model(str(folder)).parameters())


@pytest.fixture
def shards(kth_train_shards):
    return kth_train_shards


# -- checkpoints that do not verify ------------------------------------------------------------

@pytest.mark.slow  # two single-worker runs: ~50 s
def test_a_truncated_latest_checkpoint_is_skipped(shards, tmp_path, capsys):
    s = settings(shards, tmp_path, "damaged", num_workers=1, num_to_keep=3)
    train(CFG, s, verbose=False)
    run = tmp_path / "damaged"
    assert verified(run) == ["checkpoint_000000002", "checkpoint_000000004"]
    good = weights_of(run / "checkpoint_000000002")
    state = run / "checkpoint_000000004" / "train_state.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    trace = tmp_path / "trace"
    m = train(dataclasses.replace(CFG, iterations=6), s,
              hooks=[TraceParameters(str(trace))], verbose=True)
    out = capsys.readouterr().out
    assert re.search(r"warning: skipping checkpoint_000000004: .*checkpoint_000000004/"
                     r"train_state\.pt is [\d,]+ bytes, its manifest says [\d,]+", out), out
    assert "resuming from checkpoint_000000002" in out
    assert m["starts"] == [0, 2] and m["attempts"][-1]["resumed_from"] == "checkpoint_000000002"
    restored = json.loads((trace / "rank0-start2.json").read_text())[0]
    assert restored["iteration"] == 2 and restored["all"] == good      # what was announced
    assert [h["iteration"] for h in m["loss_history"]][-3:] == [4, 5, 6]
    # checkpoint 4 was written again, whole; nothing verified was lost
    assert verified(run) == ["checkpoint_000000002", "checkpoint_000000004",
                             "checkpoint_000000006"]


# -- a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                       capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs on this machine (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow  # two single-worker runs: ~60 s
def test_a_full_disk_stops_the_run_at_once_and_the_run_resumes_once_there_is_room(
        shards, small_disk, tmp_path):
    counter = tmp_path / "starts"
    cfg = dataclasses.replace(CFG, iterations=8)
    s = settings(shards, small_disk, "full", num_workers=1, max_failures=3, num_to_keep=5,
                 artifacts=False)
    with pytest.raises(RunFailedError, match=r"No space left on device") as e:
        train(cfg, s, hooks=[CountStarts(str(counter))], verbose=False)
    assert starts(counter) == [0]                 # not retried (max_failures=3)
    assert "\n" not in str(e.value)               # one line
    kept = verified(small_disk / "full")
    assert kept and kept[-1] in str(e.value)      # the error names the newest checkpoint
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    m = train(cfg, s, hooks=[CountStarts(str(counter))], verbose=False)
    resumed = int(kept[-1].rsplit("_", 1)[1])
    assert m["starts"] == [0, resumed] and m["iterations"] == 8
    assert set(kept) <= set(verified(small_disk / "full"))    # none lost


# -- a resume that changes the learning rate -------------------------------------------------

@pytest.mark.slow  # two single-worker runs: ~50 s
def test_an_allowed_lr_change_is_applied_to_the_optimizer_and_recorded(shards, tmp_path):
    s = settings(shards, tmp_path, "lr", num_workers=1)
    train(dataclasses.replace(CFG, iterations=2), s, verbose=False)
    changed = dataclasses.replace(CFG, iterations=4, lr=0.05)
    with pytest.raises(lmc.ConfigError, match=r"lr: 0\.001 -> 0\.05"):
        train(changed, s, verbose=False)
    m = train(changed, s, allow_change=("lr",), verbose=False)
    assert m["attempts"][-1]["changes"] == {"lr": [0.001, 0.05]}
    assert m["config"]["lr"] == 0.05
    last = tmp_path / "lr" / "checkpoint_000000004"
    state = lmc.checkpoint.load_train_state(last)
    assert {g["lr"] for g in state["alignment"]["optimizer"]["param_groups"]} == {0.05}
    assert json.loads((last / "config.json").read_text())["lr"] == 0.05


# -- the driver as a process: killed, doubled, interrupted ------------------------------------

def job_args(shards, storage, name, iterations) -> list[str]:
    return ["--data", str(shards), "--storage", str(storage), "--name", name,
            "--preset", "tiny", "--iterations", str(iterations), "--checkpoint-every", "2",
            "--num-workers", "1", "--batch-size", "4", "--img-size", "32", "--short-len", "9",
            "--out-len", "3", "--long-len", "10", "--width", "0.0625", "--memory-slots", "8",
            "--eval-windows", "4", "--test-windows", "4", "--keep-checkpoints", "1000"]


class Driver:
    """``python jobs/train_kth.py`` joined to the session's cluster, its output collected."""

    def __init__(self, ray_session, args):
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
        self.proc = subprocess.Popen([sys.executable, "jobs/train_kth.py", *args], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                       daemon=True)
        self.reader.start()

    def wait(self, timeout=300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def commit_times(run_dir) -> dict[str, float]:
    return {p: os.path.getmtime(os.path.join(run_dir, p, "checkpoint.json"))
            for p in os.listdir(run_dir) if p.startswith("checkpoint_")
            and os.path.exists(os.path.join(run_dir, p, "checkpoint.json"))}


def wait_for_free_cpus(ray_session, timeout=120):
    wait_for(lambda: ray_session.available_resources().get("CPU", 0) >= 2, timeout,
             "the cluster's CPUs to be free again")


@pytest.mark.slow  # a killed driver and its resume: ~90 s
def test_a_sigkilled_driver_leaves_no_worker_writing_and_the_run_resumes(
        ray_session, shards, tmp_path):
    run = tmp_path / "runs" / "killed"
    first = Driver(ray_session, job_args(shards, tmp_path / "runs", "killed", 2000))
    wait_for(lambda: run.exists() and len(commit_times(run)) >= 2, 180,
             "two checkpoints: " + first.output[-2000:])
    first.proc.kill()                                  # SIGKILL, the driver only
    killed_at = time.time()
    first.wait()
    time.sleep(FENCE_S + 8)
    late = {n: t - killed_at for n, t in commit_times(run).items() if t > killed_at + FENCE_S}
    assert not late, f"checkpoints committed after the driver's heartbeat stopped: {late}"
    settled = commit_times(run)
    last = max(settled.values()) - killed_at
    print(f"\nlast checkpoint committed {last:+.1f} s after the driver's SIGKILL")
    time.sleep(4)
    assert commit_times(run) == settled                # the workers are gone, not writing
    newest = verified(run)[-1]
    at = int(newest.rsplit("_", 1)[1])
    wait_for_free_cpus(ray_session)
    again = Driver(ray_session, job_args(shards, tmp_path / "runs", "killed", at + 2))
    assert again.wait() == 0, again.output[-3000:]
    assert "took over the lease" in again.output and "its process is gone" in again.output
    assert f"resuming from {newest}" in again.output, again.output[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["attempts"][-1]["resumed_from"] == newest and m["starts"][-1] == at
    assert set(settled) <= set(verified(run)) | {n for n in settled if n not in verified(run)}
    assert not (run / LEASE_FILE).exists()             # released at the end


@pytest.mark.slow  # one run, a refused second job, a SIGINT and a resume: ~90 s
def test_a_second_job_is_refused_and_sigint_checkpoints_then_stops(ray_session, shards,
                                                                  tmp_path):
    run = tmp_path / "runs" / "shared"
    first = Driver(ray_session, job_args(shards, tmp_path / "runs", "shared", 2000))
    wait_for(lambda: (run / LEASE_FILE).exists() and commit_times(run), 180,
             "the first job's first checkpoint: " + first.output[-2000:])
    t0 = time.monotonic()
    second = Driver(ray_session, job_args(shards, tmp_path / "runs", "shared", 2000))
    assert second.wait(timeout=120) == 1
    refused_in = time.monotonic() - t0
    lines = [ln for ln in second.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"pid {first.proc.pid}" in lines[0], second.output[-2000:]
    assert "is in use by another job" in lines[0]
    assert "Traceback" not in second.output
    print(f"\nsecond job refused in {refused_in:.1f} s")
    first.proc.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 128 + signal.SIGINT, first.output[-3000:]
    stopped = re.search(r"stopped: run .* stopped by SIGINT at iteration (\d+); "
                        r"(checkpoint_\d+) is its newest checkpoint", first.output)
    assert stopped, first.output[-3000:]
    at, name = int(stopped.group(1)), stopped.group(2)
    assert name == f"checkpoint_{at:09d}" and verified(run)[-1] == name   # the stop's step
    assert not (run / LEASE_FILE).exists()
    wait_for_free_cpus(ray_session)
    again = Driver(ray_session, job_args(shards, tmp_path / "runs", "shared", at + 2))
    assert again.wait() == 0, again.output[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["starts"][-1] == at and m["attempts"][-1]["cause"] == "resubmitted"


# -- every rank agrees (no Ray: a real gloo group of 2 processes) ---------------------------

def _agree(rank, world, port, outbox):
    import torch.distributed as dist

    from lmc.train.control import Control
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)

    class Watch:          # rank 0's view of the lease, as LeaseWatch gives it
        stop, problem = None, None

        def close(self):
            pass
    watch = Watch() if rank == 0 else None
    control = Control(rank, world, watch)
    got = [control.agree()]
    got.append(control.agree("DataError: bad rows" if rank == 1 else None))
    if watch:
        watch.stop = "SIGTERM"
    got.append(control.agree())
    if watch:
        watch.stop, watch.problem = None, "its lease was taken over by another job"
    got.append(control.agree())
    # rank 0's clock says "ask Ray about preemptions now"; rank 0 holds a resize request

    class Requests:
        pending = 7 if rank == 0 else None

        def close(self):
            pass
    timed = Control(rank, world, None, poll_every_s=0.0, requests=Requests())
    got.append(timed.agree())
    outbox.put((rank, [dataclasses.asdict(v) for v in got]))
    dist.destroy_process_group()


def test_every_rank_gets_the_same_verdict():
    import multiprocessing as mp

    from local_cluster import free_port
    ctx = mp.get_context("spawn")
    outbox, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_agree, args=(r, 2, port, outbox)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(outbox.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results[0] == results[1]
    go, failed, stop, abort, timed = results[0]
    quiet = {"poll": False, "checkpoint": False}
    assert go == {"stop": None, "abort": None, "failure": None, **quiet}
    assert failed["failure"] == "rank 1: DataError: bad rows"
    assert stop == {"stop": "SIGTERM", "abort": None, "failure": None, **quiet}
    assert abort["abort"] == "its lease was taken over by another job"
    assert timed == {"stop": None, "abort": None, "failure": None, "poll": True,
                     "checkpoint": True}
    assert torch.distributed.is_available()
