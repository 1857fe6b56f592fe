"""A run's state without Ray: verified checkpoints (truncated, zeroed, cut short by a full
disk, fenced), the choice of what to resume, pruning, the run lease (second job, stale lease,
a gone holder, --force-unlock, the workers' fence) on local storage and on the S3 server, the
config a resume may change, and which errors are retried."""
import dataclasses
import errno
import json
import os
import socket
import subprocess
import time

import pytest
import torch

import lmc
from lmc.checkpoint import MANIFEST_FILE, save_checkpoint, verify_checkpoint
from lmc.reference import CheckpointError
from lmc.train.checkpoints import RunCheckpoints, checkpoint_name
from lmc.train.control import deterministic
from lmc.train.lease import (LEASE_FILE, Holder, LeaseLost, LeaseWatch, RunLease,
                             RunLockedError, read_holder)
from lmc.train.run_folder import storage_location
from lmc.train.settings import RunSettings

CFG = lmc.preset("tiny", img_size=32, short_len=9, out_len=3, long_len=10, width=0.0625,
                 memory_slots=8, batch_size=4, iterations=4)


def weights_digest(model) -> str:
    import hashlib
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def commit_at(store: RunCheckpoints, tmp_path, iteration: int, seed: int = 0, fence=None) -> str:
    """A real checkpoint of a model seeded with ``seed``, committed as ``iteration``."""
    torch.manual_seed(seed)
    model = lmc.LMCModel(CFG)
    local = tmp_path / f"local-{iteration}-{seed}"
    save_checkpoint(local, model, CFG, {"iteration": iteration}, extra={"iteration": iteration})
    name = checkpoint_name(iteration)
    store.commit(str(local), name, **({"fence": fence} if fence else {}))
    return weights_digest(model)


@pytest.fixture
def run(tmp_path):
    loc = storage_location(str(tmp_path / "runs" / "r"))
    loc.makedirs()
    return loc


# -- verified checkpoints -------------------------------------------------------------------

def test_each_file_is_listed_with_size_and_sha256_and_written_last(run, tmp_path):
    store = RunCheckpoints(run)
    commit_at(store, tmp_path, 2)
    manifest = json.loads((tmp_path / "runs/r/checkpoint_000000002" / MANIFEST_FILE).read_text())
    assert [f["name"] for f in manifest["files"]] == ["config.json", "model.pt", "train_state.pt"]
    for f in manifest["files"]:
        assert os.path.getsize(tmp_path / "runs/r/checkpoint_000000002" / f["name"]) == f["bytes"]
    assert manifest["iteration"] == 2
    assert verify_checkpoint(tmp_path / "runs/r/checkpoint_000000002")["files"] == manifest["files"]


@pytest.mark.parametrize("damage, expect", [
    ("truncate", r"train_state\.pt is [\d,]+ bytes, its manifest says [\d,]+"),
    ("zero", r"train_state\.pt does not match its sha256"),
    ("manifest", r"has no checkpoint\.json: it was not finished"),
])
def test_a_damaged_latest_checkpoint_is_skipped_naming_the_file(run, tmp_path, damage, expect):
    store = RunCheckpoints(run)
    good = commit_at(store, tmp_path, 2, seed=1)
    commit_at(store, tmp_path, 4, seed=2)
    latest = tmp_path / "runs/r/checkpoint_000000004"
    state = latest / "train_state.pt"
    if damage == "truncate":
        with open(state, "r+b") as f:
            f.truncate(state.stat().st_size // 2)
    elif damage == "zero":
        state.write_bytes(bytes(state.stat().st_size))
    else:
        (latest / MANIFEST_FILE).unlink()
    choice = RunCheckpoints(run).newest_verified()
    assert choice.name == "checkpoint_000000002" and choice.iteration == 2
    assert [n for n, _ in choice.skipped] == ["checkpoint_000000004"]
    import re
    assert re.search(expect, choice.skipped[0][1]), choice.skipped[0][1]
    # what is restored is the verified checkpoint's weights, bit for bit
    assert weights_digest(lmc.checkpoint.load_model(str(tmp_path / "runs/r/checkpoint_000000002"))) == good
    # loading the damaged one directly is a clear error, not a torch traceback
    if damage != "manifest":
        with pytest.raises(CheckpointError, match="train_state.pt"):
            lmc.checkpoint.load_model(str(latest))


def test_no_checkpoint_verifying_is_refused_not_a_silent_new_run(run, tmp_path):
    store = RunCheckpoints(run)
    commit_at(store, tmp_path, 2)
    (tmp_path / "runs/r/checkpoint_000000002/model.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"1 checkpoint folder\(s\) and none verifies.*"
                                              r"model\.pt"):
        RunCheckpoints(run).newest_verified()


def test_a_fence_that_fails_leaves_an_uncounted_checkpoint(run, tmp_path):
    store = RunCheckpoints(run)
    commit_at(store, tmp_path, 2)

    def lost():
        raise LeaseLost("taken over")
    with pytest.raises(LeaseLost):
        commit_at(store, tmp_path, 4, fence=lost)
    assert (tmp_path / "runs/r/checkpoint_000000004/model.pt").exists()      # files, no manifest
    assert RunCheckpoints(run).newest_verified().name == "checkpoint_000000002"


def test_commit_replaces_an_unfinished_folder_but_never_a_verified_checkpoint(run, tmp_path):
    store = RunCheckpoints(run)
    commit_at(store, tmp_path, 2)
    stale = tmp_path / "runs/r/checkpoint_000000004"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    digest = commit_at(store, tmp_path, 4, seed=5)
    assert RunCheckpoints(run).newest_verified().name == "checkpoint_000000004"
    assert weights_digest(lmc.checkpoint.load_model(str(stale))) == digest
    with pytest.raises(CheckpointError, match="verified checkpoint; refusing to overwrite"):
        commit_at(RunCheckpoints(run), tmp_path, 4, seed=6)


def test_prune_keeps_the_newest_known_good_and_never_touches_newer_folders(run, tmp_path):
    store = RunCheckpoints(run)
    for it in (2, 4, 6):
        commit_at(store, tmp_path, it)
    newer = tmp_path / "runs/r/checkpoint_000000010"     # e.g. another attempt's, unverified
    newer.mkdir()
    (newer / "model.pt").write_bytes(b"x")
    assert store.prune(2) == ["checkpoint_000000002"]
    assert store.names() == ["checkpoint_000000004", "checkpoint_000000006",
                             "checkpoint_000000010"]
    # a job that resumed from 4 (verified) and committed nothing yet prunes nothing
    resumed = RunCheckpoints(run)
    resumed.known_good.add("checkpoint_000000004")
    assert resumed.prune(2) == [] and len(resumed.names()) == 3


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 2 MiB (a tmpfs; root can mount one here), unmounted after."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs on this machine (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_checkpoint_cut_short_by_a_full_disk_never_counts(small_disk, tmp_path):
    run = storage_location(str(small_disk / "r"))
    store = RunCheckpoints(run)
    for it in (2, 4):                  # 1.1 MB each: the second's train_state.pt is cut short
        local = tmp_path / f"local{it}"
        save_checkpoint(local, lmc.LMCModel(CFG), CFG, {"pad": torch.zeros(150_000)})
        if it == 2:
            store.commit(str(local), checkpoint_name(it))
        else:
            with pytest.raises(OSError) as e:
                store.commit(str(local), checkpoint_name(it))
            assert e.value.errno == errno.ENOSPC and deterministic(e.value)
    assert RunCheckpoints(run).newest_verified().name == "checkpoint_000000002"
    assert (small_disk / "r/checkpoint_000000004/model.pt").exists()   # it did start writing
    assert not (small_disk / "r/checkpoint_000000004" / MANIFEST_FILE).exists()


# -- the run lease --------------------------------------------------------------------------

def test_a_second_job_is_refused_naming_the_holder_and_a_released_lease_is_free(run):
    first = RunLease(run, job_id="raysubmit_A", heartbeat_s=0.2).acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"in use by another job \(host "
                                                 rf"{socket.gethostname()}, pid {os.getpid()}, "
                                                 r"job raysubmit_A, started .*last heartbeat"):
            RunLease(run).acquire()
        assert time.monotonic() - t0 < 5
        beats = read_holder(run).beats
        time.sleep(0.7)
        assert read_holder(run).beats > beats              # the heartbeat runs
    finally:
        first.release()
    assert not os.path.exists(os.path.join(run.root, LEASE_FILE))
    RunLease(run).acquire().release()


def _plant(run, **fields) -> Holder:
    other = Holder.new("raysubmit_other")
    for k, v in fields.items():
        setattr(other, k, v)
    with open(os.path.join(run.root, LEASE_FILE), "wb") as f:
        f.write(other.to_bytes())
    return other


def test_a_stale_lease_is_taken_over_with_a_warning(run):
    _plant(run, host="node-that-died", pid=4242, heartbeat_at=time.time() - 120)
    said = []
    lease = RunLease(run, warn=said.append, stale_after_s=60).acquire()
    lease.release()
    assert len(said) == 1 and "took over the lease" in said[0] and "node-that-died" in said[0]
    assert "no heartbeat for 120 s" in said[0]


def test_a_fresh_lease_of_a_gone_process_on_this_host_is_taken_over_at_once(run):
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    _plant(run, host=socket.gethostname(), pid=proc.pid)
    said = []
    RunLease(run, warn=said.append).acquire().release()
    assert "its process is gone" in said[0]


def test_force_unlock_takes_a_live_looking_lease(run):
    _plant(run, host="elsewhere", pid=1)
    with pytest.raises(RunLockedError):
        RunLease(run).acquire()
    said = []
    RunLease(run, warn=said.append).acquire(force=True).release()
    assert "--force-unlock" in said[0]


def test_the_workers_fence_fails_once_the_heartbeat_stops_or_the_lease_is_taken(run):
    lease = RunLease(run, heartbeat_s=0.1).acquire()
    watch = LeaseWatch(run, lease.holder.owner, interval_s=0.05, fence_s=0.5)
    try:
        time.sleep(0.3)
        watch.fence()                                      # a live job may write
        assert watch.problem is None and watch.stop is None
        lease.request_stop("SIGTERM")
        time.sleep(0.2)
        assert watch.stop == "SIGTERM"
        lease._stopped.set()                               # the driver dies: no more beats
        time.sleep(1.0)
        with pytest.raises(LeaseLost, match="heartbeat stopped"):
            watch.fence()
    finally:
        watch.close()
    os.remove(os.path.join(run.root, LEASE_FILE))
    other = RunLease(run).acquire()                        # another job holds the folder now
    watch = LeaseWatch(run, lease.holder.owner, interval_s=0.05)
    try:
        with pytest.raises(LeaseLost, match="taken over by another job"):
            watch.fence()
    finally:
        watch.close()
        other.release()


def test_lease_on_s3_is_exclusive_and_taken_over_when_stale(s3_env):
    s3_env.put_object(Bucket="lmc", Key="runs/keep.txt", Body=b"x")
    run = storage_location("s3://lmc/runs/s3lease")
    first = RunLease(run, heartbeat_s=0.2).acquire()
    try:
        with pytest.raises(RunLockedError, match="in use by another job"):
            RunLease(run).acquire()
        beats = read_holder(run).beats
        time.sleep(0.7)
        assert read_holder(run).beats > beats
        watch = LeaseWatch(run, first.holder.owner, interval_s=0.05)
        watch.fence()
        watch.close()
    finally:
        first.release()
    assert read_holder(run) is None
    stale = Holder.new(None)
    stale.host, stale.heartbeat_at = "gone", time.time() - 600
    s3_env.put_object(Bucket="lmc", Key="runs/s3lease/lease.json", Body=stale.to_bytes())
    said = []
    RunLease(run, warn=said.append).acquire().release()
    assert "took over" in said[0] and "gone" in said[0]


def test_checkpoints_on_s3_verify_and_a_truncated_file_is_skipped(s3_env, tmp_path):
    run = storage_location("s3://lmc/runs/s3ckpt")
    store = RunCheckpoints(run)
    good = commit_at(store, tmp_path, 2, seed=3)
    commit_at(store, tmp_path, 4, seed=4)
    key = "runs/s3ckpt/checkpoint_000000004/model.pt"
    body = s3_env.get_object(Bucket="lmc", Key=key)["Body"].read()
    s3_env.put_object(Bucket="lmc", Key=key, Body=body[: len(body) // 3])
    choice = RunCheckpoints(run).newest_verified()
    assert choice.name == "checkpoint_000000002"
    assert "checkpoint_000000004/model.pt is" in choice.skipped[0][1]
    with RunCheckpoints(run).local_copy(choice.name) as d:
        assert weights_digest(lmc.checkpoint.load_model(d)) == good


# -- what a resume may change ----------------------------------------------------------------

def _resumable(kth_train_shards, tmp_path, cfg=CFG):
    s = RunSettings(data=kth_train_shards, storage=str(tmp_path / "runs"), name="drift")
    run = storage_location(str(tmp_path / "runs" / "drift"))
    local = tmp_path / "local"
    from pipeline.shards import read_manifest
    fp = read_manifest(kth_train_shards)["fingerprint"]
    save_checkpoint(local, lmc.LMCModel(cfg), cfg, {"x": 1},
                    extra={"iteration": 2, "data_fingerprint": fp})
    RunCheckpoints(run).commit(str(local), checkpoint_name(2))
    return s


def test_a_changed_config_is_refused_listing_each_field_unless_allowed(kth_train_shards,
                                                                       tmp_path):
    from lmc.train import validate
    s = _resumable(kth_train_shards, tmp_path)
    changed = dataclasses.replace(CFG, lr=0.05, seed=7, iterations=10)
    with pytest.raises(lmc.ConfigError, match=r"would change what it trains \(lr: 0\.001 -> "
                                              r"0\.05; seed: 1234 -> 7\).*--allow-change lr,seed"):
        validate(changed, s)
    plan = validate(changed, s, allow_change=("lr", "seed"))
    assert plan.resume_from == "checkpoint_000000002"
    assert plan.changes == {"lr": [0.001, 0.05], "seed": [1234, 7]}
    # the iteration budget is free; unknown names are refused listing the allowed ones
    assert validate(dataclasses.replace(CFG, iterations=99), s).changes == {}
    with pytest.raises(lmc.ConfigError, match=r"--allow-change learning_rate: unknown field; "
                                              r"allowed: data, .*\blr\b"):
        validate(CFG, s, allow_change=("learning_rate",))


# -- what is retried ---------------------------------------------------------------------------

def test_deterministic_errors_are_the_ones_a_retry_would_meet_again():
    from pipeline import DataError
    from lmc.alignment import NonFiniteLossError
    for e in (DataError("x"), CheckpointError("x"), lmc.ConfigError("x"), LeaseLost("x"),
              NonFiniteLossError("x"), OSError(errno.ENOSPC, "No space left on device"),
              OSError(errno.EACCES, "Permission denied"),
              OSError("When uploading part: No space left on device")):
        assert deterministic(e), e
    for e in (RuntimeError("collective aborted"), ConnectionResetError("peer"),
              OSError(errno.ECONNREFUSED, "refused")):
        assert not deterministic(e), e


def test_infinite_cpus_per_worker_is_a_clear_error():
    with pytest.raises(lmc.ConfigError, match=r"'cpus_per_worker' = inf is invalid; allowed: a "
                                              r"finite number > 0"):
        RunSettings(data="d", storage="s", name="n", cpus_per_worker=float("inf"))
