"""Elastic runs (``--num-workers MIN-MAX``): Ray Train's controller callback that keeps each
worker-group (re)start on nodes that stay.

Ray Train's elastic policy counts the workers that fit on the nodes GCS reports alive. A node
being drained for preemption is still alive until it goes, and a node killed at its deadline
stays alive for GCS until its health check gives up (~15-30 s): the restart after a preemption
then asks for a worker there, its placement group waits, and Ray Train tries again with fewer
workers only after its worker-group start timeout (60 s). ``SkipDrainingNodes`` caps each resize
at what fits on nodes that are alive and not draining (never below the run's minimum, so a
fixed-size run still waits for its workers), which makes the restart after a preemption start
at once on the nodes that stay. Ray is imported where it is used (this runs in the controller).
"""
from __future__ import annotations

try:   # the controller-side hook interface (Ray Train V2; internal, no public equivalent yet)
    from ray.train.v2._internal.execution.callback import ControllerCallback
except ImportError:                                      # pragma: no cover - older Ray
    ControllerCallback = object


def workers_that_fit(per_worker: dict, nodes: list[dict]) -> int:
    """How many workers of ``per_worker`` resources fit on ``nodes`` (each {"resources"})."""
    need = {r: v for r, v in per_worker.items() if v > 0}
    if not need:
        return 1 << 30
    return sum(int(min(n["resources"].get(r, 0.0) / v for r, v in need.items()) + 1e-9)
               for n in nodes)


class SkipDrainingNodes(ControllerCallback):
    def __init__(self, min_workers: int, per_worker: dict):
        self.min_workers, self.per_worker = min_workers, dict(per_worker)

    def before_controller_execute_resize_decision(self, resize_decision) -> None:
        staying = _nodes_that_stay()
        if staying is None:
            return
        fit = workers_that_fit(self.per_worker, staying)
        if self.min_workers <= fit < resize_decision.num_workers:
            print(f"{resize_decision.num_workers} workers would include nodes being drained or "
                     f"gone; starting {fit} on the nodes that stay")
            resize_decision.num_workers = fit


def _nodes_that_stay() -> list[dict] | None:
    """Alive nodes that are not being drained ({"id", "resources"}), or None if Ray cannot say."""
    import ray
    try:
        draining = ray._private.state.state.get_draining_nodes() or {}
        return [{"id": n["NodeID"], "resources": n.get("Resources", {})}
                for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in draining]
    except Exception:
        return None
