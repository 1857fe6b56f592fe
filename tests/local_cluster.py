"""A Ray cluster of several nodes on this machine, for tests: each `ray start ... --block` is its
own node (own raylet, object store and resources) in its own process group, on 127.0.0.1.

Nodes are started and ended by the test through their process ids (`os.killpg`), never by name:
`ray stop` would stop every Ray on the machine, the test session's own included.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """``LocalCluster(env).start_head(cpus=1)``, ``add_node(cpus=1)`` -> node id,
    ``kill(node_id)``, ``node_ids()``, ``shutdown()``. ``url`` is the job server's address,
    ``address`` the GCS address (host:port) workers and drivers join."""

    def __init__(self, env: dict | None = None, auth_mode: str = "disabled"):
        env = dict(env if env is not None else os.environ)
        env.pop("RAY_ADDRESS", None)
        # explicit: a `ray.init` in this process sets RAY_AUTH_MODE in its environment; "token"
        # needs RAY_AUTH_TOKEN in ``env``
        env["RAY_AUTH_MODE"] = auth_mode
        # a loaded 2-core machine starts a node's agents slowly: give the raylet more than its
        # default time to see them
        env.setdefault("RAY_agent_register_timeout_ms", "180000")
        env.setdefault("RAY_raylet_start_wait_time_s", "120")   # its wait for the agents' ports
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.env = env
        # short: Ray's socket paths must stay under the 107-byte limit
        self.temp = tempfile.mkdtemp(prefix="lmc-mn-", dir="/tmp")
        self.procs: dict[str, subprocess.Popen] = {}     # node id -> `ray start` process
        self.logs: list[str] = []                        # their output, in start order
        self.killed: set[str] = set()                    # reported alive until Ray notices
        self.state_api_error: str | None = None
        self.port, self.dash = free_port(), free_port()
        self.address, self.url = f"127.0.0.1:{self.port}", f"http://127.0.0.1:{self.dash}"

    def _agent_ports(self) -> list[str]:
        # every node needs its own agent ports (the defaults collide on one machine)
        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.temp, f"ray-start-{len(self.logs)}.log"), "w")
        self.logs.append(log.name)
        return subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args, *self._agent_ports()],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def _node_temp(self) -> str:
        """A temp dir of the node's own, as a machine of its own has. Without one a node shares
        the head's session dir, and with it the unpacked `--working-dir` package: each node's
        runtime-env agent replaces that directory when it first runs the job's code, deleting
        the working directory of processes already running there (seen as `os.getcwd()`
        failing and MKL failing to load inside a starting TrainController)."""
        path = os.path.join(self.temp, f"n{len(self.logs)}")
        os.makedirs(path, exist_ok=True)
        return path

    def _log_tail(self) -> str:
        with open(self.logs[-1]) as f:
            return f.read()[-2000:]

    def start_head(self, cpus: int = 1, extra: list[str] = (), temp_dir: bool = True,
                   timeout_s: float = 120, wait_for_node: bool = True) -> str:
        """The head (with the job server); ``temp_dir=False`` leaves Ray's default temp dir
        (RAY_TMPDIR in ``env``), where `ray start` records the cluster's address;
        ``wait_for_node=False`` returns once the job server answers (its id is then "head")."""
        proc = self._spawn(["--head", f"--port={self.port}", f"--num-cpus={cpus}",
                            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={self.dash}",
                            *([f"--temp-dir={self.temp}"] if temp_dir else []), *extra])
        deadline = time.time() + timeout_s
        while True:   # the job server answers
            try:
                urllib.request.urlopen(self.url + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    self._end(proc)
                    raise RuntimeError(f"ray head did not start (exit {proc.poll()}):\n"
                                       + self._log_tail())
                time.sleep(1)
        if not wait_for_node:
            self.procs["head"] = proc
            return "head"
        return self._register(proc, timeout_s)

    def add_node(self, cpus: int = 1, timeout_s: float = 120, tries: int = 3) -> str:
        # `ray start` gives a raylet 30 s to register (hard-coded); a loaded 2-core machine
        # can miss that, so a failed start is tried again
        for attempt in range(tries):
            try:
                return self._register(self._spawn([f"--address={self.address}",
                                                   f"--num-cpus={cpus}",
                                                   f"--temp-dir={self._node_temp()}"]),
                                      timeout_s)
            except RuntimeError:
                if attempt == tries - 1:
                    raise

    def _register(self, proc, timeout_s: float) -> str:
        """Wait until one more node is alive; that node is ``proc``'s."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            new = set(self.node_ids()) - set(self.procs) - self.killed
            if new:
                node = new.pop()
                self.procs[node] = proc
                return node
            if proc.poll() is not None:
                break
            time.sleep(1)
        self._end(proc)
        raise RuntimeError(f"node did not join (exit {proc.poll()}; last state API error: "
                           f"{self.state_api_error}):\n" + self._log_tail())

    def node_ids(self) -> list[str]:
        """Alive node ids (from the state API behind the job server)."""
        from ray.util.state import list_nodes
        try:
            return [n.node_id for n in list_nodes(address=self.url, timeout=10)
                    if n.state == "ALIVE"]
        except Exception as e:          # the state API not up yet: asked again; kept for errors
            self.state_api_error = f"{type(e).__name__}: {e}"
            return []

    def kill(self, node: str) -> float:
        """SIGKILL the node's process group (its raylet, object store, worker processes) as a
        lost machine would die; returns the time of the kill."""
        proc = self.procs.pop(node)
        self.killed.add(node)
        t = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return t

    @staticmethod
    def _end(proc) -> None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # stragglers still in the group
        except ProcessLookupError:
            pass

    def shutdown(self) -> None:
        for node in list(self.procs)[::-1]:
            self._end(self.procs.pop(node))
        if not os.environ.get("LMC_KEEP_CLUSTER_TEMP"):   # set to read Ray's logs after a test
            shutil.rmtree(self.temp, ignore_errors=True)
