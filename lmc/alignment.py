"""Memory alignment learning (paper §3.2, Algorithm 1): the two-phase training iteration.

One iteration runs two full optimizer steps on the same batch with a single Adam over all
parameters:
  phase 1 (storing):  F_mem from E_LMC(long clip), M trainable;
  phase 2 (matching): F_mem from E_MM(short clip), M frozen.
Each phase's unused encoder (E_MM in phase 1, E_LMC in phase 2) and, in phase 2, M get no
gradient (``grad is None``), so Adam leaves them bit-identical: no weight decay, no momentum
drift. (The reference, on its pinned PyTorch, zeroed gradients instead of clearing them, so
Adam's momentum kept moving M in phase 2; the paper says M is frozen, and here it is.)

Plain PyTorch, no Ray: the Ray Train driver wraps the model in DDP and calls ``step``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import LMCConfig
from .model import unwrap


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss; raised before the optimizer step so the weights stay as they were."""


def prediction_loss(pred, target):
    """Eq. (3): ||S^ - S||_2^2 + ||S^ - S||_1, each as the mean over all elements."""
    return F.mse_loss(pred, target) + F.l1_loss(pred, target)


class MemoryAlignment:
    """Algorithm 1 for ``model`` (an ``LMCModel``, or one wrapped in DDP).

    ``step(window, long_start=None)``: ``window`` (N, short_len + out_len, C, H, W) in [0, 1].
    short = window[:, :short_len], target = window[:, short_len:short_len+K], long =
    window[:, r:r+long_len]; ``long_start`` None draws r uniformly from
    [0, short_len + out_len - long_len] (Algorithm 1, line 1) with this object's seeded
    generator. For the first ``warmup_iterations`` only K = ``warmup_out_len`` frames are
    predicted and long = window[:, :short_len + K] (the reference's warm-up).
    """

    def __init__(self, model, lr: float | None = None, warmup_iterations: int | None = None,
                 warmup_out_len: int | None = None, autocast_dtype: torch.dtype | None = None,
                 seed: int | None = None):
        self.model = model
        core = unwrap(model)
        self.cfg: LMCConfig = core.cfg
        self.lr = self.cfg.lr if lr is None else lr
        self.warmup_iterations = self.cfg.warmup_iterations if warmup_iterations is None else warmup_iterations
        self.warmup_out_len = self.cfg.warmup_out_len if warmup_out_len is None else warmup_out_len
        self.autocast_dtype = autocast_dtype
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)  # one Adam, all params
        self.iteration = 0
        self.generator = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        if core.has_memory:
            self._frozen = {
                1: list(core.motion_matching_encoder.parameters()),                     # E_MM unused
                2: list(core.motion_context_encoder.parameters()) + [core.memory.slots],  # E_LMC, M
            }
        else:
            self._frozen = {1: [], 2: []}

    # -- Algorithm 1 --
    def step(self, window, long_start: int | None = None) -> dict[str, float]:
        cfg = self.cfg
        out_len = cfg.out_len
        if self.iteration < self.warmup_iterations:
            out_len = self.warmup_out_len
        need = cfg.short_len + out_len
        if window.dim() != 5 or window.shape[1] < need:
            raise ValueError(f"window must be (N, >= short_len + out_len = {need}, C, H, W), "
                             f"got {tuple(window.shape)}")
        short = window[:, :cfg.short_len]
        target = window[:, cfg.short_len:need]
        if out_len == cfg.out_len:
            max_r = cfg.short_len + cfg.out_len - cfg.long_len
            r = long_start if long_start is not None else int(
                torch.randint(0, max_r + 1, (1,), generator=self.generator))
            if not 0 <= r <= max_r:
                raise ValueError(f"long_start must be in [0, {max_r}], got {r}")
            long = window[:, r:r + cfg.long_len]
        else:  # warm-up: the long clip is everything up to the end of the short target
            long = window[:, :need]

        losses = {}
        if unwrap(self.model).has_memory:
            losses["loss_phase1"] = self._phase(1, short, long, target, out_len)  # lines 4-10
            losses["loss_phase2"] = self._phase(2, short, None, target, out_len)  # lines 12-18
        else:  # w/o-memory baseline: both phases are the same plain prediction step
            losses["loss_phase1"] = self._phase(1, short, None, target, out_len)
            losses["loss_phase2"] = self._phase(2, short, None, target, out_len)
        self.iteration += 1
        return losses

    def _phase(self, phase: int, short, long, target, out_len: int) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(short.device):
            pred = self.model(short, long=long, out_len=out_len)
        loss = prediction_loss(pred.float(), target)
        self._check_finite(loss, phase)
        loss.backward()
        for p in self._frozen[phase]:   # nothing may reach them, whatever wraps the model
            p.grad = None
        self.optimizer.step()
        return float(loss.detach())

    def _autocast(self, device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _check_finite(self, loss, phase: int) -> None:
        finite = torch.isfinite(loss.detach()).float()
        if dist.is_available() and dist.is_initialized():  # every rank stops, none hangs
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) at iteration {self.iteration} in phase "
                f"{phase} ({'storing' if phase == 1 else 'matching'}); the step was not applied. "
                "Lower the learning rate, check the input frames are finite floats in [0, 1], "
                "or resume from the last checkpoint.")

    # -- resumable state --
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])
