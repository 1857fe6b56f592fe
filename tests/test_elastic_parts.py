"""The parts of elastic runs that need no cluster: the controller callback's cap on a resize
(nodes being drained do not count), its checkpoint request before a grow, and rank 0's side of
that request (``control.RequestWatch``), with plain queues standing in for Ray's."""
import queue
import threading
import time
from dataclasses import dataclass

import pytest

from lmc.train import elastic
from lmc.train.control import RequestWatch
from lmc.train.elastic import ElasticCallback
from lmc.train.placement import workers_that_fit


@dataclass
class Decision:                 # Ray Train's ResizeDecision: what the hook may change
    num_workers: int
    resources_per_worker: dict


def node(cpus, gpus=0):
    return {"resources": {"CPU": cpus, "GPU": gpus}}


def test_workers_that_fit_count_whole_workers_per_node():
    assert workers_that_fit({"CPU": 2}, [node(1), node(2), node(5)]) == 0 + 1 + 2
    assert workers_that_fit({"CPU": 1, "GPU": 1}, [node(8, 1), node(8, 0), node(2, 4)]) == 1 + 0 + 2
    assert workers_that_fit({"CPU": 0.5}, [node(1)]) == 2


@pytest.mark.parametrize("staying, asked, started", [
    ([node(1), node(2)], 2, 1),      # the drained node's worker is left out
    ([node(2), node(2)], 2, 2),      # nothing drained: Ray's decision stands
    ([node(1)], 2, 2),               # fewer than MIN fit: left to Ray (it waits / retries)
    (None, 2, 2)])                   # Ray cannot say: left to Ray
def test_a_resize_skips_nodes_being_drained(monkeypatch, staying, asked, started):
    monkeypatch.setattr(elastic, "_nodes_that_stay", lambda: staying)
    decision = Decision(asked, {"CPU": 2})
    ElasticCallback(1, {"CPU": 2}).before_controller_execute_resize_decision(decision)
    assert decision.num_workers == started


class RunningState:             # the names the callback reads, as Ray Train's states are named
    pass


class ResizingState:
    pass


def test_a_grow_waits_for_rank_0s_checkpoint(capsys):
    requests, replies = queue.Queue(), queue.Queue()
    watch = RequestWatch(requests, replies)
    callback = ElasticCallback(1, {"CPU": 1}, requests, replies)
    callback.after_controller_state_update(RunningState(), RunningState())   # not a resize
    assert requests.empty()

    def rank_0():               # the loop: sees the request at a step, commits, answers
        while watch.pending is None:
            time.sleep(0.01)
        watch.answer(381)
    worker = threading.Thread(target=rank_0)
    worker.start()
    callback.after_controller_state_update(RunningState(), ResizingState())
    worker.join(timeout=10)
    watch.close()
    assert "resizing the workers after checkpoint_000000381" in capsys.readouterr().out
    assert watch.pending is None


def test_a_grow_goes_ahead_without_an_answer(monkeypatch, capsys):
    monkeypatch.setattr(elastic, "CHECKPOINT_BEFORE_RESIZE_S", 0.2)
    requests, replies = queue.Queue(), queue.Queue()
    replies.put({"request": 0, "iteration": 5})          # a late answer to an older request
    ElasticCallback(1, {"CPU": 1}, requests, replies).after_controller_state_update(
        RunningState(), ResizingState())
    assert requests.get_nowait() == 1
    assert "no checkpoint from the workers within 0 s; resizing from the newest one" in \
        capsys.readouterr().out
