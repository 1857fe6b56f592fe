"""One worker's training loop: Algorithm 1 on its batches, the same loop with or without Ray.

``Loop(cfg, settings, protocol, run_uri, ctx).fit()`` reads top to bottom:

    while not done:  agree (go / stop / fail)  ->  step  ->  (every eval_every) validate
                     ->  (every checkpoint_every) checkpoint  ->  report

The caller hands it a ``WorkerContext``: rank, world size, device, how to wrap the model (DDP
under Ray Train), its stream of training windows, where reports go. ``lmc.train.trainer``
builds one from Ray Train's context (``train_loop_per_worker``); ``lmc.train.plain`` builds one
for a single process with no Ray (tests, ``benchmarks/learning_parity.py``). No Ray here.

A step is ``MemoryAlignment.step`` (phase 1 then phase 2, docs/design.md §4) on the worker's
batch; DDP averages the gradients. Before each step every rank agrees (``control.Control``) to
go on, to stop (the driver was asked to: checkpoint now and end), or to end on a rank's
deterministic error. Rank 0 validates and commits checkpoints (model, optimizer, iteration, RNG
states, config and the run's history) to the run folder through ``checkpoints.RunCheckpoints``,
fenced by the job's lease; reports carry metrics only. Every start, first or restarted, resumes
from the newest verified checkpoint (rank 0 chooses, every rank loads it). ``fit`` returns the
outcome (finished, stopped, failed with a message); the finishing step (test scores,
metrics.json, pictures) is ``lmc.train.finish``.
"""
from __future__ import annotations

import json
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..alignment import MemoryAlignment, NonFiniteLossError
from ..baselines import BASELINES
from ..checkpoint import load_model, load_train_state, rng_state, save_checkpoint, set_rng_state
from ..config import LMCConfig
from ..metrics import load_lpips
from ..model import LMCModel, unwrap
from ..protocols import Protocol
from ..scoring import score_windows, summarize_scores, test_windows, validation_metrics
from .checkpoints import RunCheckpoints, checkpoint_name
from .control import Control, RequestWatch, describe, deterministic
from .lease import LeaseWatch
from .progress import Pace, validation_record
from .run_folder import ATTEMPTS_FILE, read_json, storage_location
from .settings import RunSettings
from .tensorboard import TensorBoard

# How often (seconds, on rank 0's clock, shared through the per-step agreement) the ranks ask Ray
# Train about preemptions; its watcher polls the drains every 5 s (RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S)
PREEMPTION_POLL_S = 2.0


@dataclass
class WorkerContext:
    """What the loop takes from whoever runs it (Ray Train, or a plain process)."""
    rank: int
    world: int
    device: torch.device
    node_id: str                                   # where this worker runs (for attempts)
    wrap_model: Callable                           # model -> model (DDP under Ray Train)
    open_batches: Callable[..., Iterator]          # (batch_size, start iteration) -> windows
                                                   # (N, T, C, H, W), this rank's, from ``start``
    report: Callable[[dict], None]                 # every rank, at each validation/checkpoint
    progress: object = None                        # rank 0's records go to .put_nowait
    # Ray Train's preemption notice (a barrier: every rank calls it at the same step), or None
    preemption: Callable[[], object] | None = None
    # elastic runs: (requests, replies) queues of the controller's checkpoint-before-resize
    resize_requests: tuple | None = None


def batch_share(batch_size: int, world: int, rank: int) -> int:
    """Rank ``rank``'s windows of the global batch: an even split, the first ``batch_size %
    world`` ranks one more (every rank needs at least one: the driver refuses more workers
    than windows)."""
    return batch_size // world + (rank < batch_size % world)


@dataclass(frozen=True)
class Cadence:
    """When the loop logs, validates and checkpoints (iterations, counted from 0)."""
    log_every: int
    eval_every: int
    checkpoint_every: int
    total: int

    @classmethod
    def of(cls, settings: RunSettings, total: int) -> "Cadence":
        return cls(settings.log_interval(total), settings.eval_interval(total),
                   settings.checkpoint_interval(total), total)

    def log(self, done: int, start: int) -> bool:
        return done % self.log_every == 0 or done == self.total or done == start + 1

    def validate(self, done: int) -> bool:
        return done % self.eval_every == 0

    def checkpoint(self, done: int) -> bool:
        return done % self.checkpoint_every == 0 or done == self.total


class Loop:
    def __init__(self, cfg: LMCConfig, settings: RunSettings, protocol: Protocol, run_uri: str,
                 ctx: WorkerContext, hooks=(), submission: str = "",
                 lease_owner: str | None = None, changes: dict | None = None,
                 data_fingerprint: str | None = None):
        self.cfg, self.s, self.protocol, self.hooks = cfg, settings, protocol, list(hooks)
        self.ctx = ctx
        self.run = storage_location(run_uri)
        self.checkpoints = RunCheckpoints(self.run)
        self.data_fingerprint = data_fingerprint      # recorded in each checkpoint's manifest
        self.rank, self.world, self.device = ctx.rank, ctx.world, ctx.device
        torch.set_num_threads(settings.torch_threads)
        # rank 0 watches the lease (the driver's stop request, the fence on commits)
        watch = LeaseWatch(self.run, lease_owner) if lease_owner and self.rank == 0 else None
        requests = (RequestWatch(*ctx.resize_requests)
                    if ctx.resize_requests and self.rank == 0 else None)
        self.control = Control(self.rank, self.world, watch,
                               poll_every_s=PREEMPTION_POLL_S if ctx.preemption else None,
                               requests=requests)

        state = self._build_model()
        self._restore(state)
        self._record_attempt(submission, changes or {})
        self.cadence = Cadence.of(settings, cfg.iterations)
        share = batch_share(cfg.batch_size, self.world, self.rank)
        self.align.loss_weight = self.world * share / cfg.batch_size
        self.batches = ctx.open_batches(share, self.start)
        # rank 0's pace, for the driver's progress lines (None: nobody shows them)
        self.progress = ctx.progress if self.rank == 0 else None
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
        model = self.ctx.wrap_model(core)
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
        """Where this attempt runs, on how many workers, and why it started: a new run, the
        same run submitted again (with the config changes the user allowed), or Ray Train
        restarting the worker group within the same submission: after a preemption (the
        previous attempt took a just-in-time checkpoint on the notice), to grow (an elastic run
        on more workers than before, nothing failed that this run saw) or after a failure."""
        self.workers = _gather_workers(self.ctx)
        if self.rank == 0:      # the run's whole history, not only the restored checkpoint's
            logged = (read_json(self.run, ATTEMPTS_FILE) or {}).get("attempts") or []
            if len(logged) > len(self.attempts):
                self.attempts = logged
        previous = self.attempts[-1] if self.attempts else None
        restart = previous is not None and previous["submission"] == submission
        if previous is None:
            cause = "new run"
        elif not restart:
            cause = "resubmitted"
        elif previous.get("preemption"):
            cause = "restart after a preemption"
        elif self.world > previous.get("world_size", len(previous["workers"])):
            cause = "scale-up"
        else:
            cause = "restart after a failure"
        self.attempts = self.attempts + [{
            "iteration": self.start, "submission": submission, "started_at": time.time(),
            "first_step_at": None, "world_size": self.world, "workers": self.workers,
            "resumed_from": self.resumed_from, "changes": {} if restart else changes,
            "cause": cause}]
        self._log_attempts()

    def _log_attempts(self) -> None:
        """Rank 0: the attempts to the run folder's attempt log (``ATTEMPTS_FILE``)."""
        if self.rank == 0:
            self.run.write_bytes(json.dumps({"attempts": self.attempts}, indent=1).encode(),
                                 ATTEMPTS_FILE)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Steps until the iteration budget, a stop or a deterministic failure; the outcome
        {"status": "finished" | "stopped" | "failed", "iteration", "message", "checkpoint"}."""
        try:
            return self._loop()
        finally:
            self.control.close()
            for h in self.hooks:
                h.close(self)

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
            if verdict.poll:
                failure = self._on_preemption_notice()
                if failure:
                    return self._outcome("failed", failure)
            if verdict.checkpoint:
                failure = self._checkpoint_before_resize()
                if failure:
                    return self._outcome("failed", failure)
            try:
                losses = self.step(window)
            except NonFiniteLossError as e:   # raised on every rank alike (the guard all-reduces)
                return self._outcome("failed", describe(e))
            done = self.align.iteration
            self._show(self.pace.step(done, losses, waited))
            validate, checkpoint = self.cadence.validate(done), self.cadence.checkpoint(done)
            if validate or checkpoint:
                failure = self._boundary({"iteration": done, **losses, **self._throughput()},
                                         validate=validate, checkpoint=checkpoint)
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

    def _on_preemption_notice(self) -> str | None:
        """Every rank asks Ray Train (at the same step: ``get_preemption_info`` is a barrier)
        whether a node of the run is being drained for preemption; on the first notice the run
        commits a just-in-time checkpoint at this step boundary and carries on until Ray Train
        restarts it on the nodes that stay. The failure message if the commit failed."""
        info = self.ctx.preemption()
        if info is None or "preemption" in self.attempts[-1]:     # none, or handled already
            return None
        done = self.align.iteration
        deadline = info.deadline_ms / 1000 if info.deadline_ms else None
        self.attempts[-1]["preemption"] = {
            "iteration": done, "noticed_at": time.time(), "deadline": deadline,
            "nodes": list(info.preempted_node_ids), "ranks": list(info.preempted_ranks)}
        self._log_attempts()
        self._show({"kind": "notice", "line": (
            f"preemption notice at iteration {done}: node(s) "
            f"{', '.join(n[:8] for n in info.preempted_node_ids)} (ranks "
            f"{', '.join(map(str, info.preempted_ranks))}) go"
            + (f" in {max(0.0, deadline - time.time()):.0f} s" if deadline else "")
            + "; checkpointing now")})
        return self._checkpoint_here()

    def _checkpoint_before_resize(self) -> str | None:
        """Ray Train is about to restart the workers larger (an elastic run's scale-up): commit
        this step's checkpoint, which the larger group resumes from, and tell the controller
        (rank 0). The failure message if the commit failed."""
        failure = self._checkpoint_here()
        if failure is None and self.control.requests is not None:
            self.control.requests.answer(self.align.iteration)
        return failure

    def _checkpoint_here(self) -> str | None:
        """Every rank: commit this step's checkpoint at a boundary (unless it is committed
        already, or nothing was trained since this attempt's start); the failure message if
        the commit failed."""
        done = self.align.iteration
        fresh = checkpoint_name(done) in self.checkpoints.known_good
        return self._boundary({"iteration": done, **self._throughput()}, validate=False,
                              checkpoint=not fresh and done > self.start)

    def _stop(self, reason: str) -> dict:
        """The driver was asked to stop: checkpoint this step (unless just done) and end."""
        failure = self._checkpoint_here()
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
            attempt = self.attempts[-1]
            attempt["first_step_at"] = time.time()
            self._log_attempts()
            self._show({"kind": "notice", "line": (
                f"attempt {len(self.attempts)} training on {self.world} worker(s) "
                f"({attempt['cause']}, from {attempt['resumed_from'] or 'the start'})")})
        if self.cadence.log(done, self.start):
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
        """``metrics`` to the context's report on every rank (under Ray Train a barrier; no
        checkpoint: the run folder's verified checkpoints are the only record)."""
        self.last_report = metrics
        if self.tensorboard:
            self.tensorboard.scalars(metrics["iteration"], {
                k if k.startswith("val_") else f"train/{k}": v
                for k, v in metrics.items() if k != "iteration"})
        self.ctx.report(metrics)
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

    # -- helpers ---------------------------------------------------------------------------------
    def score(self, max_windows: int | None, baselines=tuple(BASELINES)) -> dict:
        """Phase-2 metrics of the model and of ``baselines`` on (the first ``max_windows``)
        test windows: {"test": summary, "baselines": {name: summary}, "verdict": per baseline}."""
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


def _gather_workers(ctx: WorkerContext) -> list[dict]:
    """[{"rank", "node_id", "hostname"}] of every worker, on every rank (a gloo/NCCL gather)."""
    me = {"rank": ctx.rank, "node_id": ctx.node_id, "hostname": socket.gethostname()}
    if ctx.world == 1:
        return [me]
    everyone = [None] * ctx.world
    torch.distributed.all_gather_object(everyone, me)
    return sorted(everyone, key=lambda w: w["rank"])
