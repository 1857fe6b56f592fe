"""One live job per run folder: a lease file with a heartbeat (``<run>/lease.json``).

The job's driver acquires the lease before any Ray work and keeps it fresh from a thread
(``heartbeat_s``); a second job on the same folder fails in seconds naming the holder. A lease
whose heartbeat is older than ``stale_after_s`` belongs to a job that is gone (killed, its node
lost): the next job takes it over with a warning, at once when the holder ran on this host and
its process is gone. ``force=True`` (``--force-unlock``) takes any lease. The lease also carries the driver's requests to the workers (``stop``: checkpoint at the
next step and end), and it fences the workers: rank 0 commits a checkpoint only while the lease
is still its job's and its heartbeat is fresh (``LeaseWatch``), so a killed driver's workers
commit nothing once its heartbeat has stopped (README, "What a run guarantees").

Atomicity: locally every write (create, heartbeat, takeover) checks the lease and renames a
complete new file over it under an exclusive ``flock`` of a side file, so two takers cannot both
win and a reader never sees half a lease. On S3 the store's
conditional writes do the same (``If-None-Match: *`` to create, ``If-Match: <etag>`` to
heartbeat or take over); AWS S3 supports both since 2024, as do recent MinIO and moto. A store
without them (it answers 501 NotImplemented) is refused unless ``LMC_S3_UNCONDITIONAL_LEASE=1``,
where the lease is written plainly and two jobs started within the same second may both run.
Plain Python and boto3, no Ray.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline.storage import new_temp_file

LEASE_FILE = "lease.json"
HEARTBEAT_S = 2.0          # the driver rewrites the lease this often
FENCE_S = 3 * HEARTBEAT_S  # rank 0 commits nothing once the heartbeat is this old (3 missed beats)
STALE_AFTER_S = 60.0       # a lease this old is a dead job's: taken over (wall clock; covers skew)


class RunLockedError(OSError):
    """The run folder is held by another live job."""


class LeaseLost(RuntimeError):
    """This job's lease was taken over or its heartbeat stopped: its workers must stop
    without writing (a deterministic failure: it is not retried)."""


@dataclass
class Holder:
    """Who holds a lease: the job's identity and its last heartbeat (wall clock, seconds)."""
    owner: str
    host: str
    pid: int
    job_id: str | None
    started_at: float
    heartbeat_at: float
    beats: int = 0
    stop: str | None = None          # set by the driver: "SIGINT" / "SIGTERM"

    @classmethod
    def new(cls, job_id: str | None) -> "Holder":
        now = time.time()
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), job_id, now, now)

    def describe(self) -> str:
        age = time.time() - self.heartbeat_at
        job = f", job {self.job_id}" if self.job_id else ""
        return (f"host {self.host}, pid {self.pid}{job}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started_at))}, "
                f"last heartbeat {age:.0f} s ago")

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Holder | None":
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None          # a lease cut short is nobody's


def _process_gone(holder: Holder) -> bool:
    """Whether the holder ran on this host and its process no longer exists (a killed job
    whose lease need not age out). Another host's process cannot be seen from here."""
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- backends: create / replace-if-unchanged / read / delete ------------------------------------

class _LocalLeaseFile:
    def __init__(self, folder: str):
        self.path = os.path.join(folder, LEASE_FILE)
        self.lock_path = os.path.join(folder, f".{LEASE_FILE}.lock")

    def read(self) -> tuple[bytes, str] | None:
        """(content, version) or None; the version is what ``replace`` checks."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        return data, f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    @contextmanager
    def _locked(self):
        """Writers take an exclusive flock on a side file; readers need none (every write is
        a rename of a complete file, so a reader sees the old lease or the new one)."""
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _put(self, data: bytes) -> None:
        fd, tmp = new_temp_file(os.path.dirname(self.path), prefix=".lease-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def create(self, data: bytes) -> bool:
        with self._locked():
            if os.path.exists(self.path):
                return False
            self._put(data)
            return True

    def replace(self, data: bytes, version: str) -> bool:
        """Swap the lease for ``data`` if it is still at ``version``."""
        with self._locked():
            now = self.read()
            if now is None or now[1] != version:
                return False
            self._put(data)
            return True

    def delete(self) -> None:
        with self._locked():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


class _S3LeaseFile:
    def __init__(self, bucket: str, key: str):
        import boto3

        from pipeline.storage import s3_client_kwargs
        self.bucket, self.key = bucket, key
        self.client = boto3.client("s3", **s3_client_kwargs())
        self.unconditional = os.environ.get("LMC_S3_UNCONDITIONAL_LEASE") == "1"

    def _code(self, e) -> str:
        return e.response.get("Error", {}).get("Code", "") if hasattr(e, "response") else ""

    def read(self):
        from botocore.exceptions import ClientError
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if self._code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return r["Body"].read(), r["ETag"]

    def _put(self, data: bytes, **condition) -> bool:
        from botocore.exceptions import ClientError
        if self.unconditional:
            condition = {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)
            return True
        except ClientError as e:
            code = self._code(e)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            if code in ("NotImplemented", "501"):
                raise OSError(f"s3://{self.bucket}/{self.key}: this S3 store does not support "
                              "conditional writes, so a run lease cannot be exclusive there; "
                              "set LMC_S3_UNCONDITIONAL_LEASE=1 to use a best-effort lease") from None
            raise

    def create(self, data: bytes) -> bool:
        if self.unconditional and self.read() is not None:
            return False
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: str) -> bool:
        return self._put(data, IfMatch=version)

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


def lease_file(run):
    """The lease of the run at ``run`` (a ``pipeline.storage.Location``)."""
    if run.is_local:
        os.makedirs(run.root, exist_ok=True)
        return _LocalLeaseFile(run.root)
    bucket, _, prefix = run.root.partition("/")
    return _S3LeaseFile(bucket, f"{prefix}/{LEASE_FILE}" if prefix else LEASE_FILE)


def read_holder(run) -> Holder | None:
    got = lease_file(run).read()
    return Holder.from_bytes(got[0]) if got else None


# -- the driver's side --------------------------------------------------------------------------

@dataclass
class RunLease:
    """The driver's lease on a run folder: ``acquire`` (or ``RunLockedError``), a heartbeat
    thread, ``request_stop``, ``release``. ``warn`` receives the takeover warnings."""
    run: object                                   # pipeline.storage.Location
    job_id: str | None = None
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    warn: object = print
    holder: Holder = field(init=False)
    _version: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopped: threading.Event = field(default_factory=threading.Event, init=False)
    _lost: str | None = field(default=None, init=False)

    def acquire(self, force: bool = False) -> "RunLease":
        self.file = lease_file(self.run)
        self.holder = Holder.new(self.job_id)
        for _ in range(5):
            if self.file.create(self.holder.to_bytes()):
                break
            got = self.file.read()
            if got is None:
                continue                           # released meanwhile: try again
            other = Holder.from_bytes(got[0])
            age = time.time() - other.heartbeat_at if other else float("inf")
            gone = other is not None and _process_gone(other)
            if other and age <= self.stale_after_s and not force and not gone:
                raise RunLockedError(
                    f"run {self.run.uri} is in use by another job ({other.describe()}); wait "
                    f"for it to end, or if that job is gone pass --force-unlock (a lease "
                    f"without a heartbeat for {self.stale_after_s:.0f} s is taken over "
                    "automatically)")
            if self.file.replace(self.holder.to_bytes(), got[1]):
                why = ("its process is gone" if gone else
                       "--force-unlock" if force and age <= self.stale_after_s else
                       f"no heartbeat for {age:.0f} s" if other else "the lease file was unreadable")
                self.warn(f"warning: took over the lease of run {self.run.uri} from "
                          f"{other.describe() if other else 'an unknown holder'} ({why})")
                break
        else:
            raise RunLockedError(f"run {self.run.uri}: could not acquire its lease (other jobs "
                                 "keep taking it)")
        self._version = self.file.read()[1]
        self._thread = threading.Thread(target=self._beat, name="lmc-lease", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        """One heartbeat (caller holds the lock); marks the lease lost if it was taken."""
        if self._lost:
            return
        self.holder.heartbeat_at, self.holder.beats = time.time(), self.holder.beats + 1
        if not self.file.replace(self.holder.to_bytes(), self._version):
            self._lost = "the lease was taken over by another job"
            return
        got = self.file.read()
        self._version = got[1] if got else None

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            try:
                with self._lock:
                    self._write()
            except Exception as e:      # a storage hiccup: the next beat tries again
                self.warn(f"warning: lease heartbeat failed ({type(e).__name__}: {e})")

    @property
    def lost(self) -> str | None:
        return self._lost

    def request_stop(self, reason: str) -> None:
        """Ask the workers to checkpoint at the next step boundary and end."""
        with self._lock:
            self.holder.stop = reason
            self._write()

    def release(self) -> None:
        self._stopped.set()
        if getattr(self, "_thread", None):
            self._thread.join(timeout=10)
        with self._lock:
            got = self.file.read() if getattr(self, "file", None) else None
            if got and got[1] == self._version and not self._lost:
                self.file.delete()


# -- the workers' side --------------------------------------------------------------------------

class LeaseWatch:
    """Rank 0's view of its job's lease, refreshed by a thread every ``interval_s``:
    ``stop`` (the driver asked to stop) and ``problem`` (lost, or no heartbeat seen to advance
    for ``fence_s`` of this process's monotonic clock: skew between hosts does not matter)."""

    def __init__(self, run, owner: str, interval_s: float = HEARTBEAT_S / 2,
                 fence_s: float = FENCE_S):
        self.run, self.owner, self.fence_s = run, owner, fence_s
        self.file = lease_file(run)
        self.stop: str | None = None
        self._lost: str | None = None
        self._beats, self._seen_at = -1, time.monotonic()
        self._done = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,),
                                        name="lmc-lease-watch", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        try:
            got = self.file.read()
        except Exception:
            return                       # unreachable storage: the fence decides
        holder = Holder.from_bytes(got[0]) if got else None
        if holder is None or holder.owner != self.owner:
            self._lost = ("its lease was taken over by another job" if holder else
                          "its lease is gone")
            return
        self.stop = holder.stop
        if holder.beats != self._beats:
            self._beats, self._seen_at = holder.beats, time.monotonic()

    def _loop(self, interval_s: float) -> None:
        while not self._done.wait(interval_s):
            self.refresh()

    @property
    def problem(self) -> str | None:
        if self._lost:
            return self._lost
        quiet = time.monotonic() - self._seen_at
        if quiet > self.fence_s:
            return f"its driver's heartbeat stopped {quiet:.0f} s ago (driver killed or lost)"
        return None

    def fence(self) -> None:
        """Raise ``LeaseLost`` unless this job may still write (read afresh, not cached)."""
        self.refresh()
        if self.problem:
            raise LeaseLost(f"run {self.run.uri}: not writing: {self.problem}")

    def close(self) -> None:
        self._done.set()
