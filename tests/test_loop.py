"""The training loop without Ray (``lmc.train.plain``): the same ``Loop`` Ray Train runs, in
this process. Algorithm 1's invariants step by step, the run folder it leaves, and a resume
that continues exactly where the uninterrupted run would be."""
import dataclasses
import json

import lmc
from lmc.train import RunSettings
from lmc.train.checkpoints import RunCheckpoints
from lmc.train.hooks import TraceParameters, _digest
from lmc.train.plain import train_plain
from lmc.train.run_folder import storage_location
from test_train import CFG, OUT, SHORT


def settings(shards, storage, name, **kw):
    return RunSettings(**{**dict(data=shards, storage=str(storage), name=name, checkpoint_every=2,
                                 eval_windows=4, eval_batch_size=4, test_windows=8,
                                 artifacts=False), **kw})


def test_the_plain_loop_runs_algorithm_1_and_leaves_a_run_folder(kth_train_shards, tmp_path,
                                                                 one_thread):
    trace = tmp_path / "trace"
    outcome, reports = train_plain(CFG, settings(kth_train_shards, tmp_path, "plain"),
                                   hooks=[TraceParameters(str(trace))])
    assert outcome["status"] == "finished" and outcome["iteration"] == CFG.iterations
    steps = json.loads((trace / "rank0-start0.json").read_text())
    assert len(steps) == 3 * CFG.iterations
    for it in range(CFG.iterations):
        before, p1, p2 = steps[3 * it:3 * it + 3]
        assert p1["memory"] != before["memory"] and p2["memory"] == p1["memory"]  # M frozen
        assert p1["e_mm"] == before["e_mm"] and p2["e_lmc"] == p1["e_lmc"]
    assert [r["iteration"] for r in reports] == [2, 4]       # one report per checkpoint
    m = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert m["iterations"] == CFG.iterations and m["protocol"] == f"{SHORT}-{OUT}"
    assert m["world_size"] == 1 and m["attempts"][0]["cause"] == "new run"
    store = RunCheckpoints(storage_location(str(tmp_path / "plain")))
    assert store.names() == ["checkpoint_000000002", "checkpoint_000000004"]
    assert store.newest_verified().name == "checkpoint_000000004"
    final = lmc.checkpoint.load_model(str(tmp_path / "plain" / "checkpoint_000000004"))
    assert _digest(final.parameters()) == steps[-1]["all"]


def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(kth_train_shards, tmp_path,
                                                                     one_thread):
    """Model, Adam's moments, the iteration, every RNG (torch, numpy, python, the long-clip
    offset's generator) and the batch order survive a checkpoint: bit-identical weights."""
    cfg = dataclasses.replace(CFG, iterations=4)
    train_plain(cfg, settings(kth_train_shards, tmp_path, "straight"))
    train_plain(dataclasses.replace(cfg, iterations=2), settings(kth_train_shards, tmp_path, "resumed"))
    outcome, _ = train_plain(cfg, settings(kth_train_shards, tmp_path, "resumed"))
    assert outcome["status"] == "finished"
    m = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert m["starts"] == [0, 2] and m["attempts"][1]["resumed_from"] == "checkpoint_000000002"
    straight, resumed = (lmc.checkpoint.load_model(str(tmp_path / n / "checkpoint_000000004"))
                         for n in ("straight", "resumed"))
    assert _digest(straight.parameters()) == _digest(resumed.parameters())
