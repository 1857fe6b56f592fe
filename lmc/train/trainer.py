"""One Ray Train worker of a run: Algorithm 1 on its dataset shard under DDP.

``train_loop_per_worker`` is what ``TorchTrainer`` runs on every worker; it builds a ``Trainer``
and calls ``fit``, which reads top to bottom:

    while not done:  step  ->  (every eval_every) validate  ->  (every checkpoint_every) report
    finish: test evaluation under the protocol, metrics.json, curves and the prediction strip

A step is ``MemoryAlignment.step`` (phase 1 then phase 2, docs/design.md §4) on the worker's batch;
DDP averages the gradients. Before each step every rank agrees (``control.Control``) to go on,
to stop (the driver was asked to: checkpoint now and end), or to end on a rank's deterministic
error. Rank 0 validates and commits checkpoints (model, optimizer, iteration, RNG states,
config and the run's history) to the run folder through ``checkpoints.RunCheckpoints``, fenced
by the job's lease; ``ray.train.report`` carries metrics only. Every worker group, first or
restarted, resumes from the newest verified checkpoint (rank 0 chooses, every rank loads it).
The loop's outcome (finished, stopped, failed with a message) is the function's return value,
which Ray Train hands to the driver as ``Result.return_value``.
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
from .checkpoints import RunCheckpoints, checkpoint_name
from .control import Control, describe, deterministic
from .lease import LeaseWatch
from .progress import Pace, validation_record
from .run import METRICS_FILE, STRIP_NAME, RunSettings, storage_location
from .tensorboard import TensorBoard

STRIP_CANDIDATES = 64     # test windows the prediction strip is chosen from


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point: ``config`` is the driver's ``train_loop_config``. Returns the
    outcome: {"status": "finished" | "stopped" | "failed", "iteration", "message"}."""
    os.environ.update(config["s3_env"])    # before any s3:// access on this worker
    try:
        trainer = Trainer(config["model"], config["settings"], config["protocol"],
                          config["run_uri"], config["hooks"], config["submission"],
                          lease_owner=config.get("lease_owner"), changes=config.get("changes"),
                          data_fingerprint=config.get("data_fingerprint"),
                          progress=config.get("progress"))
    except Exception as e:
        if not deterministic(e):
            raise                            # Ray Train restarts the worker group
        return {"status": "failed", "iteration": None, "message": describe(e)}
    return trainer.fit()


class Trainer:
    def __init__(self, cfg: LMCConfig, settings: RunSettings, protocol: Protocol, run_uri: str,
                 hooks=(), submission: str = "", lease_owner: str | None = None,
                 changes: dict | None = None, data_fingerprint: str | None = None,
                 progress=None):
        import ray.train
        import ray.train.torch

        self.cfg, self.s, self.protocol, self.hooks = cfg, settings, protocol, list(hooks)
        self.run = storage_location(run_uri)
        self.checkpoints = RunCheckpoints(self.run)
        self.data_fingerprint = data_fingerprint      # recorded in each checkpoint's manifest
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(settings.torch_threads)
        self.device = ray.train.torch.get_device()
        # rank 0 watches the lease (the driver's stop request, the fence on commits)
        watch = LeaseWatch(self.run, lease_owner) if lease_owner and self.rank == 0 else None
        self.control = Control(self.rank, self.world, watch)

        state = self._build_model()
        self._restore(state)
        self._record_attempt(submission, changes or {})
        self.log_every = settings.log_interval(cfg.iterations)
        self.eval_every = settings.eval_interval(cfg.iterations)
        self.checkpoint_every = settings.checkpoint_interval(cfg.iterations)
        self.batches = self._open_batches()
        # rank 0's pace, for the driver's progress lines (a Ray queue; None: nobody shows them)
        self.progress = progress if self.rank == 0 else None
        self.pace = Pace(cfg.iterations, self.start, cfg.batch_size)
        self.lpips = None
        self.val_baselines: dict = {}    # the baselines' validation scores: fixed windows, once
        self.tensorboard = TensorBoard(self.run) if self.rank == 0 else None
        self.last_report: dict = {}
        self._reset_throughput()
        for h in self.hooks:
            h.setup(self)

    def _resume_point(self) -> str | None:
        """The newest verified checkpoint, chosen by rank 0 (the same function the driver
        announced with) and broadcast, so every rank loads the same one."""
        choice = [None]
        if self.rank == 0:
            found = self.checkpoints.newest_verified()
            if found.skipped:
                print(found.describe(), flush=True)
            choice = [found.name]
        if self.world > 1:
            torch.distributed.broadcast_object_list(choice, src=0, group=self.control.group)
        return choice[0]

    def _build_model(self) -> dict | None:
        """The model, from the newest verified checkpoint (if any), under DDP (which broadcasts
        rank 0's weights; each phase leaves one encoder unused: find_unused_parameters), and
        its ``MemoryAlignment``. Returns the checkpoint's train state (None for a new run)."""
        import ray.train.torch

        torch.manual_seed(self.cfg.seed)
        state, self.resumed_from = None, self._resume_point()
        if self.resumed_from is not None:
            self.checkpoints.known_good.add(self.resumed_from)
            with self.checkpoints.local_copy(self.resumed_from) as d:
                core = load_model(d, self.cfg)  # verifies; refuses another architecture
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
            # the config's lr, not the checkpoint's: a change the driver allowed is applied
            self.align.lr = self.cfg.lr
            for group in self.align.optimizer.param_groups:
                group["lr"] = self.cfg.lr
            set_rng_state(state["rng"])
            self.history, self.val_history = state["history"], state["validation"]
            self.attempts = state.get("attempts") or [   # older checkpoints kept starts only
                {"iteration": i, "submission": None} for i in state.get("starts", [])]
        self.start = self.align.iteration

    def _record_attempt(self, submission: str, changes: dict) -> None:
        """Where this attempt runs and why it started: a new run, the same run submitted again
        (with the config changes the user allowed), or Ray Train restarting the worker group
        after a failure (same submission)."""
        self.workers = _gather_workers(self.rank, self.world)
        restart = bool(self.attempts) and self.attempts[-1]["submission"] == submission
        self.attempts = self.attempts + [{
            "iteration": self.start, "submission": submission, "started_at": time.time(),
            "first_step_at": None, "workers": self.workers, "resumed_from": self.resumed_from,
            "changes": {} if restart else changes,
            "cause": ("new run" if not self.attempts else
                      "restart after a failure" if restart else "resubmitted")}]

    def _open_batches(self):
        """This worker's endless stream of training windows (a resumed run shuffles afresh)."""
        import ray.train

        import pipeline

        cfg = self.cfg
        per_worker = cfg.batch_size // self.world
        return pipeline.iter_train_batches(
            ray.train.get_dataset_shard("train"), batch_size=per_worker,
            window_len=cfg.window_len, epochs=None,
            expect={"channels": cfg.channels, "height": cfg.img_size, "width": cfg.img_size},
            local_shuffle_buffer_size=pipeline.shuffle_buffer_rows(
                cfg.window_len * cfg.img_size ** 2 * cfg.channels, per_worker),
            seed=cfg.seed + 7919 * self.rank + 104_729 * self.start)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Steps until the iteration budget, a stop or a deterministic failure; the outcome."""
        try:
            outcome = self._loop()
        finally:
            self.control.close()
            for h in self.hooks:
                h.close(self)
        if outcome["status"] == "finished" and self.rank == 0:
            try:
                self.finish()
            except Exception as e:
                if not deterministic(e):
                    raise
                return self._outcome("failed", describe(e))
        return outcome

    def _loop(self) -> dict:
        if self.align.iteration >= self.cfg.iterations:   # a finished run: it still needs a result
            self.report({"iteration": self.start}, with_checkpoint=False)
            return self._outcome("finished")
        while self.align.iteration < self.cfg.iterations:
            window, failure, t0 = None, None, time.perf_counter()
            try:
                window = next(self.batches)
            except Exception as e:
                if not deterministic(e):
                    raise
                failure = describe(e)
            waited = time.perf_counter() - t0
            self._wait += waited
            verdict = self.control.agree(failure)
            if verdict.failure or verdict.abort:
                return self._outcome("failed", verdict.failure or
                                     f"run {self.run.uri}: stopped without writing: {verdict.abort}")
            if verdict.stop:
                return self._stop(verdict.stop)
            try:
                losses = self.step(window)
            except NonFiniteLossError as e:   # raised on every rank alike (the guard all-reduces)
                return self._outcome("failed", describe(e))
            done = self.align.iteration
            self._show(self.pace.step(done, losses, waited))
            checkpoint_now = done % self.checkpoint_every == 0 or done == self.cfg.iterations
            if done % self.eval_every == 0 or checkpoint_now:
                failure = self._boundary({"iteration": done, **losses, **self._throughput()},
                                         validate=done % self.eval_every == 0,
                                         checkpoint=checkpoint_now)
                if failure:
                    return self._outcome("failed", failure)
        return self._outcome("finished")

    def _boundary(self, metrics: dict, *, validate: bool, checkpoint: bool) -> str | None:
        """Rank 0 validates and commits; every rank agrees on how that went, then reports.
        The failure message when any rank met a deterministic error."""
        failure = None
        try:
            if validate and self.rank == 0:
                metrics.update(self.validate())
                self._show(validation_record(metrics["iteration"], metrics))
            if checkpoint and self.rank == 0:
                self.commit_checkpoint()
        except Exception as e:
            if not deterministic(e):
                raise
            failure = describe(e)
        verdict = self.control.agree(failure)
        if verdict.failure or verdict.abort:
            return verdict.failure or f"run {self.run.uri}: stopped without writing: {verdict.abort}"
        self.report(metrics)
        return None

    def _stop(self, reason: str) -> dict:
        """The driver was asked to stop: checkpoint this step (unless just done) and end."""
        done = self.align.iteration
        fresh = checkpoint_name(done) in self.checkpoints.known_good
        failure = self._boundary({"iteration": done, **self._throughput()}, validate=False,
                                 checkpoint=not fresh and done > self.start)
        if failure:
            return self._outcome("failed", failure)
        return self._outcome("stopped", reason)

    def _show(self, record: dict | None) -> None:
        """Hand a progress record to the driver (rank 0; never blocks on a full queue)."""
        if record is None or self.progress is None:
            return
        try:
            self.progress.put_nowait(record)
        except Exception:                # full, or the driver is gone: progress is optional
            pass

    def _outcome(self, status: str, message: str | None = None) -> dict:
        newest = max(self.checkpoints.known_good, default=None)
        return {"status": status, "iteration": self.align.iteration, "message": message,
                "checkpoint": newest}

    def step(self, window) -> dict:
        """One iteration of Algorithm 1 on ``window``; the loss history at its interval."""
        it = self.align.iteration
        t0 = time.perf_counter()
        window = window.to(self.device, non_blocking=True)
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

    def report(self, metrics: dict, with_checkpoint: bool = False) -> None:
        """``ray.train.report`` of ``metrics`` on every rank (a barrier; no checkpoint: the run
        folder's verified checkpoints are the only record, see ``checkpoints``)."""
        import ray.train

        self.last_report = metrics
        if self.tensorboard:
            self.tensorboard.scalars(metrics["iteration"], {
                k if k.startswith("val_") else f"train/{k}": v
                for k, v in metrics.items() if k != "iteration"})
        ray.train.report(metrics)
        self._reset_throughput()

    def commit_checkpoint(self) -> None:
        """Rank 0: this iteration's checkpoint, committed to the run folder (fenced by the
        lease), then the checkpoints beyond ``num_to_keep`` pruned."""
        watch = self.control.watch
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, self.core, self.cfg, self._train_state(),
                            extra={"iteration": self.align.iteration,
                                   "data_fingerprint": self.data_fingerprint})
            if self.tensorboard:
                self.tensorboard.flush()
            self.checkpoints.commit(tmp, checkpoint_name(self.align.iteration),
                                    fence=watch.fence if watch else (lambda: None))
        self.checkpoints.prune(self.s.num_to_keep)

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
        if self.control.watch:
            self.control.watch.fence()
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
