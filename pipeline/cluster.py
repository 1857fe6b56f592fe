"""Which Ray cluster a job runs on: the one at ``address`` (a job's ``--address``) or in
RAY_ADDRESS (set by ``ray job submit``), else a fresh embedded Ray in this process.

Never Ray's own fallback of "the last cluster ``ray start`` made on this machine": after a head
died uncleanly its address file stays behind and ``ray.init()`` would wait on it for minutes.
A given address is probed first, so a dead one fails in seconds, naming the address and the fix.
Joining a cluster from a checkout ships this checkout's top-level packages (``checkout_packages``:
``pipeline`` and the packages beside it) to its workers, which may live on machines that do not
have them; a driver started by ``ray job submit --working-dir`` has them in its working dir
already.
"""
from __future__ import annotations

import os
import socket

PROBE_TIMEOUT_S = 5.0


def cluster_address(address: str | None = None) -> str | None:
    """The address a job joins: ``address``, else RAY_ADDRESS, else None (embedded Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def add_address_flag(parser) -> None:
    """Every job's ``--address`` (argparse), read by ``connect``."""
    parser.add_argument("--address", help="Ray cluster to join, the head's host:port (default: "
                        "RAY_ADDRESS, as under `ray job submit`, else an embedded Ray)")


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConnectionError within ``timeout_s`` unless something listens at host:port."""
    if "://" in address and not address.startswith("ray://"):
        raise ValueError(f"Ray address {address!r} is a URL (the job server's, for `ray job "
                         "submit --address URL -- python jobs/...`); a job joins the head's GCS "
                         "address host:port (e.g. 127.0.0.1:6379) or ray://host:port")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Ray address {address!r}: expected host:port (the head's GCS port, "
                         "e.g. 127.0.0.1:6379) or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(
            f"no Ray cluster answers at {address} ({type(e).__name__}: {e}); start one "
            "(`ray start --head`), pass the right --address, or unset RAY_ADDRESS to run on an "
            "embedded Ray") from None


def quiet_ray_logs() -> None:
    """Ray's per-step and per-epoch INFO lines off in this process (a worker's setup hook, and
    the driver): Ray Train's "Reporting training result N: ..." at every report, Ray Data's
    "Dataset ... execution finished" at every epoch of the training split, and the deprecation
    warning Ray Train's own data config raises for ``exclude_resources``. Warnings and errors
    still show."""
    import importlib
    import logging
    import warnings

    importlib.import_module("ray.data")     # configures its loggers first, so these levels stay
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*exclude_resources.* is deprecated")
    try:                                    # a private module: other Ray versions may lack it
        context = importlib.import_module("ray.train.v2._internal.execution.context")
        logging.getLogger(context.__file__).setLevel(logging.WARNING)   # Ray names it by file
    except ImportError:
        pass


QUIET_HOOK = "pipeline.cluster.quiet_ray_logs"


def checkout_packages() -> list[str]:
    """The top-level packages of the checkout this ``pipeline`` lives in, as folder paths (Ray
    ``py_modules``): every folder beside ``pipeline`` that holds an ``__init__.py``, when that
    root is a project checkout (it holds ``pyproject.toml``). An installed ``pipeline`` (in
    site-packages, beside every other installed package) ships nothing: the cluster's machines
    import their own installed copies."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "pyproject.toml")):
        return []
    return sorted(os.path.join(root, p) for p in os.listdir(root)
                  if os.path.isfile(os.path.join(root, p, "__init__.py")))


def connect(address: str | None = None, **init_kwargs) -> None:
    """``ray.init`` on the cluster this job should use (see the module docstring); a no-op when
    Ray is already initialised in this process. Ray's per-step INFO lines are turned off in
    every worker (``quiet_ray_logs``)."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    env = {"worker_process_setup_hook": QUIET_HOOK}
    if address is None:
        ray.init(address="local", runtime_env=env, **init_kwargs)
    else:
        probe(address)
        packages = checkout_packages()
        if packages and not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a `ray job
            env["py_modules"] = packages                 # submit` driver's working_dir ships them
        ray.init(address=address, runtime_env=env, **init_kwargs)
    quiet_ray_logs()
