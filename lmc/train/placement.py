"""Where a run's workers go: what each reserves (``worker_resources``) and whether the cluster
can ever place them (``check_placement``), decided on the driver before ``TorchTrainer.fit``
from the alive nodes (``_alive_nodes``) and whether an autoscaler may add more
(``_has_autoscaler``). Ray is imported inside the two functions that ask the cluster.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ConfigError

if TYPE_CHECKING:
    from .settings import RunSettings


def worker_resources(s: RunSettings, nodes: list[dict], log=print) -> dict:
    """What Ray reserves per worker on these ``nodes`` (each {"id", "resources"}): a GPU with
    --gpus, and CPUs. Ray Data's read tasks need CPUs too: on a small cluster where the workers
    would take every CPU the shard reading would wait forever, so reserve less per worker there,
    leaving one CPU to Ray Data (whose reads ask for ``driver.READ_TASK_CPUS`` each, so they
    fit on a node's leftover; the torch thread count, ``s.torch_threads``, stays)."""
    gpu = {"GPU": 1} if s.use_gpu else {}
    total = sum(n["resources"].get("CPU", 0) for n in nodes)
    if s.use_gpu or total - s.num_workers * s.cpus_per_worker >= 1 or total <= 1:
        return {"CPU": s.cpus_per_worker, **gpu}
    cpw = max(0.1, (total - 1) / s.num_workers)
    if log:
        log(f"reserving {cpw:.2f} CPU per worker (not {s.cpus_per_worker}) so that Ray Data "
            f"keeps 1 of the cluster's {total:g} CPUs for reading shards")
    return {"CPU": cpw, **gpu}


def workers_that_fit(per_worker: dict, nodes: list[dict]) -> int:
    """How many workers of ``per_worker`` resources fit on ``nodes`` (each {"resources"})."""
    need = {r: v for r, v in per_worker.items() if v > 0}
    if not need:
        return 1 << 30
    return sum(int(min(n["resources"].get(r, 0.0) / v for r, v in need.items()) + 1e-9)
               for n in nodes)


def check_placement(s: RunSettings, per_worker: dict, nodes: list[dict], *,
                    autoscaling=False, log=print) -> None:
    """Fail early, naming the flag, the request and what the cluster has, when the workers'
    placement group can never be placed on these ``nodes`` (each {"id", "resources"}); with
    an autoscaler that may add nodes, only say what the run will wait for. ``autoscaling``: a
    bool, or a callable asked only when the placement does not fit."""
    def fits(res: dict, k: int = 1) -> bool:
        return all(res.get(r, 0) >= k * v - 1e-9 for r, v in per_worker.items())

    def fmt(res: dict) -> str:
        return ", ".join(f"{r} {res.get(r, 0):g}" for r in per_worker)

    if s.elastic and s.placement_strategy == "STRICT_PACK":
        raise ConfigError(f"--placement-strategy STRICT_PACK puts every worker on one node, which "
                          f"an elastic run (--num-workers {s.workers}) cannot outlive; use PACK "
                          "or SPREAD (or STRICT_SPREAD where a node holds one worker)")
    # an elastic run starts once its minimum fits (Ray Train takes as many as fit, up to the max)
    least = s.min_workers if s.elastic else s.num_workers
    want = (f"{least} to {s.num_workers} worker(s) of {fmt(per_worker)}" if s.elastic
            else f"{s.num_workers} worker(s) of {fmt(per_worker)}")
    holders = [n for n in nodes if fits(n["resources"])]
    problem = None
    if not holders:
        problem = (f"no node can hold one worker ({fmt(per_worker)}; --cpus-per-worker / "
                   "--gpus)")
    elif s.placement_strategy == "STRICT_SPREAD" and len(holders) < least:
        problem = (f"--placement-strategy STRICT_SPREAD puts each of the {least} workers "
                   f"on its own node, but {len(holders)} node(s) can hold one")
    elif s.placement_strategy == "STRICT_PACK" and not any(fits(n["resources"], least)
                                                           for n in nodes):
        problem = (f"--placement-strategy STRICT_PACK puts all {s.num_workers} workers on one "
                   "node, but no node can hold them all")
    elif workers_that_fit(per_worker, nodes) < least:
        problem = f"the cluster cannot hold {want} at once (--num-workers)"
    if problem is None:
        return
    have = "; ".join(f"node {n['id'][:8]}: {fmt(n['resources'])}" for n in nodes) or "no nodes"
    message = f"{problem}. Requested: {want}; the cluster has {have}"
    if not (autoscaling() if callable(autoscaling) else autoscaling):
        raise ConfigError(message)
    if log:
        log(f"waiting for the autoscaler: {message}")


def _alive_nodes() -> list[dict]:
    import ray
    return [{"id": n["NodeID"], "resources": n.get("Resources", {})}
            for n in ray.nodes() if n.get("Alive")]


def _has_autoscaler() -> bool:
    """Whether an autoscaler that can add nodes runs for this cluster. Its monitor publishes a
    status in the GCS key-value store (what `ray status` reads); a cluster started without an
    autoscaling config runs a read-only monitor whose node types are the nodes themselves
    ("node_<id>"). Ray has no public call for this yet."""
    import json
    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get
        status = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}")
    except Exception:
        return False
    types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(t != f"node_{node}" for node, t in types.items())

