"""Elastic runs (``--num-workers MIN-MAX``): Ray Train's controller callback that keeps each
worker-group (re)start on nodes that stay, and checkpoints before Ray Train grows the workers.

Ray Train's elastic policy counts the workers that fit on the nodes GCS reports alive. A node
being drained for preemption is still alive until it goes, and a node killed at its deadline
stays alive for GCS until its health check gives up (~15-30 s): the restart after a preemption
then asks for a worker there, its placement group waits, and Ray Train tries again with fewer
workers only after its worker-group start timeout (60 s). ``ElasticCallback`` caps each resize
at what fits on nodes that are alive and not draining (never below the run's minimum, so a
fixed-size run still waits for its workers), which makes the restart after a preemption start
at once on the nodes that stay. Ray is imported where it is used (this runs in the controller).
"""
from __future__ import annotations

from .placement import _alive_nodes, workers_that_fit

try:   # the controller-side hook interface (Ray Train V2; internal, no public equivalent yet)
    from ray.train.v2._internal.execution.callback import ControllerCallback
except ImportError:                                      # pragma: no cover - older Ray
    ControllerCallback = object


# How long the controller waits for the workers' checkpoint before a grow restarts them anyway
CHECKPOINT_BEFORE_RESIZE_S = 120.0


class ElasticCallback(ControllerCallback):
    """``before_controller_execute_resize_decision``: skip draining nodes (above).
    ``after_controller_state_update``: when Ray Train is about to restart a healthy worker
    group larger, ask the workers for a checkpoint first (a request on ``requests``, rank 0
    answers on ``replies`` once it is committed) and wait for it, so growing loses no
    iteration; without an answer within ``CHECKPOINT_BEFORE_RESIZE_S`` it goes ahead."""

    def __init__(self, min_workers: int, per_worker: dict, requests=None, replies=None):
        self.min_workers, self.per_worker = min_workers, dict(per_worker)
        self.requests, self.replies, self._asked = requests, replies, 0

    def after_controller_state_update(self, previous_state, current_state) -> None:
        if self.requests is None or not (type(previous_state).__name__ == "RunningState"
                                         and type(current_state).__name__ == "ResizingState"):
            return
        self._asked += 1
        while not self.replies.empty():            # a late answer to an earlier request
            self.replies.get_nowait()
        self.requests.put(self._asked)
        try:
            answer = self.replies.get(timeout=CHECKPOINT_BEFORE_RESIZE_S)
            print(f"resizing the workers after checkpoint_{answer['iteration']:09d}")
        except Exception:
            print(f"no checkpoint from the workers within {CHECKPOINT_BEFORE_RESIZE_S:.0f} s; "
                  "resizing from the newest one")

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
        return [n for n in _alive_nodes() if n["id"] not in draining]
    except Exception:
        return None
