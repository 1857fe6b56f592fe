"""One Ray Train worker of a run: Algorithm 1 on its dataset shard under DDP.

``train_loop_per_worker`` is what ``TorchTrainer`` runs on every worker; it builds a ``Trainer``
and calls ``fit``, which reads top to bottom:

    while not done:  step  ->  (every eval_every) validate  ->  (every checkpoint_every) report
    finish: test evaluation under the protocol, metrics.json, curves and the prediction strip

A step is ``MemoryAlignment.step`` (phase 1 then phase 2, DESIGN §4) on the worker's batch;
DDP averages the gradients. Rank 0 validates, checkpoints (model, optimizer, iteration, RNG
states, config and the run's history through ``ray.train.report``) and writes the run folder.
A restarted worker group continues from ``ray.train.get_checkpoint()``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import torch

from ..alignment import MemoryAlignment, NonFiniteLossError
from ..baselines import BASELINES
from ..checkpoint import load_model, load_train_state, rng_state, save_checkpoint, set_rng_state
from ..config import LMCConfig
from ..metrics import load_lpips
from ..model import LMCModel, unwrap
from ..plots import save_strip, to_uint8, write_curves, write_learning_curves
from ..protocols import Protocol
from ..scoring import score_windows, summarize_scores, test_windows, validation_metrics
from .run import (ERROR_FILE, METRICS_FILE, STRIP_NAME, RunSettings, checkpoint_name,
                  storage_location)
from .tensorboard import TensorBoard

STRIP_CANDIDATES = 64     # test windows the prediction strip is chosen from


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: ``config`` is the driver's ``train_loop_config``."""
    os.environ.update(config["s3_env"])    # before any s3:// access on this worker
    Trainer(config["model"], config["settings"], config["protocol"], config["run_uri"],
            config["hooks"], config["submission"]).fit()


class Trainer:
    def __init__(self, cfg: LMCConfig, settings: RunSettings, protocol: Protocol, run_uri: str,
                 hooks=(), submission: str = ""):
        import ray.train
        import ray.train.torch

        self.cfg, self.s, self.protocol, self.hooks = cfg, settings, protocol, list(hooks)
        self.run = storage_location(run_uri)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(settings.torch_threads)
        self.device = ray.train.torch.get_device()

        state = self._build_model()
        self._restore(state)
        self._record_attempt(submission)
        self.log_every = settings.log_interval(cfg.iterations)
        self.eval_every = settings.eval_interval(cfg.iterations)
        self.checkpoint_every = settings.checkpoint_interval(cfg.iterations)
        self.batches = self._open_batches()
        self.lpips = None
        self.val_baselines: dict = {}    # the baselines' validation scores: fixed windows, once
        self.tensorboard = TensorBoard(self.run) if self.rank == 0 else None
        self.last_report: dict = {}
        self._reset_throughput()
        for h in self.hooks:
            h.setup(self)

    def _build_model(self) -> dict | None:
        """The model, from the latest checkpoint (if any), under DDP (which broadcasts rank 0's
        weights; each phase leaves one encoder unused: find_unused_parameters), and its
        ``MemoryAlignment``. Returns the checkpoint's train state (None for a new run)."""
        import ray.train
        import ray.train.torch

        torch.manual_seed(self.cfg.seed)
        state, ckpt = None, ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                core = load_model(d, self.cfg)       # refuses another architecture, listing keys
                state = load_train_state(d)
        else:
            core = LMCModel(self.cfg)
        if self.s.memory_format == "channels_last":
            core.to_channels_last()
        if self.s.compile:
            core.compile_regions()     # per-timestep regions, not the unrolled rollout
        model = ray.train.torch.prepare_model(
            core, parallel_strategy_kwargs={"find_unused_parameters": True})
        self.core = unwrap(model)
        self.align = MemoryAlignment(
            model, autocast_dtype=torch.bfloat16 if self.s.autocast == "bf16" else None)
        return state

    def _restore(self, state: dict | None) -> None:
        """Optimizer, iteration, RNG states and the run's history from a checkpoint."""
        self.history, self.val_history, self.attempts = [], [], []
        if state is not None:
            self.align.load_state_dict(state["alignment"])
            set_rng_state(state["rng"])
            self.history, self.val_history = state["history"], state["validation"]
            self.attempts = state.get("attempts") or [   # older checkpoints kept starts only
                {"iteration": i, "submission": None} for i in state.get("starts", [])]
        self.start = self.align.iteration

    def _record_attempt(self, submission: str) -> None:
        """Where this attempt runs and why it started: a new run, the same run submitted again,
        or Ray Train restarting the worker group after a failure (same submission)."""
        self.workers = _gather_workers(self.rank, self.world)
        self.attempts = self.attempts + [{
            "iteration": self.start, "submission": submission, "started_at": time.time(),
            "first_step_at": None, "workers": self.workers,
            "cause": ("new run" if not self.attempts else
                      "restart after a failure" if self.attempts[-1]["submission"] == submission
                      else "resubmitted")}]

    def _open_batches(self):
        """This worker's endless stream of training windows (a resumed run shuffles afresh)."""
        import ray.train

        import pipeline

        cfg = self.cfg
        per_worker = cfg.batch_size // self.world
        return pipeline.iter_train_batches(
            ray.train.get_dataset_shard("train"), batch_size=per_worker,
            window_len=cfg.window_len, epochs=None,
            local_shuffle_buffer_size=pipeline.shuffle_buffer_rows(
                cfg.window_len * cfg.img_size ** 2 * cfg.channels, per_worker),
            seed=cfg.seed + 7919 * self.rank + 104_729 * self.start)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        try:
            while self.align.iteration < self.cfg.iterations:
                losses = self.step()
                done = self.align.iteration
                checkpoint_now = done % self.checkpoint_every == 0 or done == self.cfg.iterations
                if done % self.eval_every == 0 or checkpoint_now:
                    metrics = {"iteration": done, **losses, **self._throughput()}
                    if done % self.eval_every == 0 and self.rank == 0:
                        metrics.update(self.validate())
                    self.report(metrics, checkpoint_now)
        except NonFiniteLossError as e:
            # Every rank raises at the same step (the finite flag is all-reduced). Retrying from
            # the last checkpoint would replay the same batch: stop and tell the driver.
            if self.rank == 0:
                self.run.write_bytes(json.dumps({"error": "NonFiniteLossError",
                                                 "message": str(e)}).encode(), ERROR_FILE)
            return
        finally:
            for h in self.hooks:
                h.close(self)
        if self.align.iteration == self.start:   # resumed a finished run: it still needs a result
            self.report({"iteration": self.start}, with_checkpoint=False)
        if self.rank == 0:
            self.finish()

    def step(self) -> dict:
        """One iteration of Algorithm 1 on the next batch; the loss history at its interval."""
        it = self.align.iteration
        t0 = time.perf_counter()
        window = next(self.batches).to(self.device, non_blocking=True)
        self._wait += time.perf_counter() - t0
        for h in self.hooks:
            window = h.before_step(self, it, window)
        losses = self.align.step(window)              # r drawn by the alignment's generator
        self._steps += 1
        done = self.align.iteration
        if done == self.start + 1:
            self.attempts[-1]["first_step_at"] = time.time()
        if done % self.log_every == 0 or done == self.cfg.iterations or done == self.start + 1:
            self.history.append({"iteration": done, **losses})
            if self.tensorboard:
                self.tensorboard.scalars(done, {f"train/{k}": v for k, v in losses.items()})
        return losses

    def validate(self) -> dict:
        """Rank 0: the model (and, the first time, the baselines) on the validation windows."""
        scored = self.score(self.s.eval_windows,
                            baselines=() if self.val_baselines else tuple(BASELINES))
        self.val_baselines = self.val_baselines or scored["baselines"]
        val = validation_metrics(scored["test"], self.val_baselines)
        self.val_history.append({"iteration": self.align.iteration, **val})
        return val

    def report(self, metrics: dict, with_checkpoint: bool) -> None:
        """``ray.train.report`` on every rank; rank 0 attaches the checkpoint when it is due."""
        import ray.train

        self.last_report = metrics
        if self.tensorboard:
            self.tensorboard.scalars(metrics["iteration"], {
                k if k.startswith("val_") else f"train/{k}": v
                for k, v in metrics.items() if k != "iteration"})
        if with_checkpoint and self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, self.core, self.cfg, self._train_state())
                self.tensorboard.flush()
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=checkpoint_name(self.align.iteration))
        else:
            ray.train.report(metrics)
        self._reset_throughput()

    def finish(self) -> None:
        """Rank 0: the test evaluation under the protocol, metrics.json and the pictures."""
        scored = self.score(self.s.test_windows)
        metrics = {"run": self.run.uri, "iterations": self.align.iteration,
                   "starts": [a["iteration"] for a in self.attempts], "attempts": self.attempts,
                   "workers": self.workers, "world_size": self.world, "config": self.cfg.to_dict(),
                   "settings": dataclasses.asdict(self.s),
                   "protocol": self.protocol.name, **scored, "loss_history": self.history,
                   "validation_history": self.val_history, "last_report": self.last_report}
        if self.s.artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                write_pictures(self.core, self.s.data, self.protocol, metrics, tmp)
                for f in sorted(os.listdir(tmp)):
                    self.run.put_file(os.path.join(tmp, f), f)
        self.run.write_bytes(json.dumps(metrics, indent=1).encode(), METRICS_FILE)
        tb, it = self.tensorboard, self.align.iteration
        tb.scalars(it, {f"test/{k}": v for k, v in scored["test"]["mean"].items()})
        tb.scalars(it, {f"test/{b}_{k}": v for b, rep in scored["baselines"].items()
                        for k, v in rep["mean"].items()})
        tb.close()

    # -- helpers ---------------------------------------------------------------------------------
    def score(self, max_windows: int | None, baselines=tuple(BASELINES)) -> dict:
        """Phase-2 metrics of the model and of ``baselines`` on (the first ``max_windows``)
        test windows: {"test": summary, "baselines": {name: summary}, "verdict": line or None}."""
        if self.lpips is None:
            self.lpips = load_lpips(self.device)      # an LPIPSUnavailable with its reason if not
        p = self.protocol
        windows = test_windows(self.s.data, short_len=p.short_len, out_len=p.out_len,
                               batch_size=self.s.eval_batch_size, max_windows=max_windows)
        scored = summarize_scores(score_windows(self.core, windows, [p], self.lpips,
                                                baselines=baselines))
        return {"test": scored["protocols"][p.name], "baselines": scored["baselines"][p.name],
                "verdict": scored["verdict"].get(p.name)}

    def _train_state(self) -> dict:
        return {"alignment": self.align.state_dict(), "rng": rng_state(),
                "history": self.history, "validation": self.val_history, "attempts": self.attempts}

    def _reset_throughput(self) -> None:
        self._t0, self._wait, self._steps = time.perf_counter(), 0.0, 0

    def _throughput(self) -> dict:
        elapsed = time.perf_counter() - self._t0
        return {"samples_per_s": self._steps * self.cfg.batch_size / elapsed,
                "data_wait_fraction": self._wait / elapsed}


def _gather_workers(rank: int, world: int) -> list[dict]:
    """[{"rank", "node_id", "hostname"}] of every worker, on every rank (a gloo/NCCL gather)."""
    import socket

    import ray

    me = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
          "hostname": socket.gethostname()}
    if world == 1:
        return [me]
    everyone = [None] * world
    torch.distributed.all_gather_object(everyone, me)
    return sorted(everyone, key=lambda w: w["rank"])


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
