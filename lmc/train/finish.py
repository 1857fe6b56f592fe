"""A finished run's last step (rank 0): the test scores under the protocol beside the
baselines, ``metrics.json`` (scores, verdict, config, settings, attempts, loss and validation
history) and the pictures: per-timestep curves, learning curves, the prediction strip. Runs
after ``Loop.fit`` returned "finished", with the loop's model and history. No Ray.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import torch

from ..plots import save_strip, to_uint8, write_curves, write_learning_curves
from ..protocols import Protocol
from ..scoring import test_windows
from .run_folder import METRICS_FILE, STRIP_NAME

STRIP_CANDIDATES = 64     # test windows the prediction strip is chosen from


def finish_run(loop) -> dict:
    """Score the test windows with ``loop``'s model, write metrics.json and the pictures into
    the run folder (fenced by the lease, as checkpoints are); returns metrics.json."""
    s, watch = loop.s, loop.control.watch
    scored = loop.score(s.test_windows)
    metrics = {"run": loop.run.uri, "iterations": loop.align.iteration,
               "starts": [a["iteration"] for a in loop.attempts], "attempts": loop.attempts,
               "workers": loop.workers, "world_size": loop.world, "config": loop.cfg.to_dict(),
               "settings": dataclasses.asdict(s), "protocol": loop.protocol.name, **scored,
               "loss_history": loop.history, "validation_history": loop.val_history,
               "last_report": loop.last_report}
    if watch:
        watch.fence()
    if s.artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            write_pictures(loop.core, s.data, loop.protocol, metrics, tmp)
            for f in sorted(os.listdir(tmp)):
                loop.run.put_file(os.path.join(tmp, f), f)
    loop.run.write_bytes(json.dumps(metrics, indent=1).encode(), METRICS_FILE)
    tb, it = loop.tensorboard, loop.align.iteration
    tb.scalars(it, {f"test/{k}": v for k, v in scored["test"]["mean"].items()})
    tb.scalars(it, {f"test/{b}_{k}": v for b, rep in scored["baselines"].items()
                    for k, v in rep["mean"].items()})
    tb.close()
    return metrics


@torch.no_grad()
def write_pictures(core, data: str, protocol: Protocol, metrics: dict, folder: str) -> None:
    """curves_<protocol>.csv/.png (baselines dashed), learning_curves.csv/.png and
    prediction.png/.gif of the test window that moves most among the first few (the largest
    copy-last-frame error: a still window would show nothing of the motion)."""
    write_curves({"protocols": {protocol.name: metrics["test"]},
                  "baselines": {protocol.name: metrics["baselines"]}}, folder)
    write_learning_curves(metrics, folder)
    s = protocol.short_len
    candidates = torch.cat(list(test_windows(data, short_len=s, out_len=protocol.out_len,
                                             batch_size=16, max_windows=STRIP_CANDIDATES)))
    motion = (candidates[:, s:] - candidates[:, s - 1:s]).square().flatten(1).sum(1)
    clip = candidates[int(motion.argmax())]
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()
    pred = core(clip[None, :s].to(device), out_len=protocol.out_len)[0]
    core.train(was_training)
    save_strip(to_uint8(clip[:s]), to_uint8(clip[s:]), to_uint8(pred), folder, name=STRIP_NAME)
