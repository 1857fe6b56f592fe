"""Memory alignment learning (paper §3.2, Algorithm 1): the two-phase training iteration.

One iteration runs two full optimizer steps on the same batch with a single Adam over all
parameters:
  phase 1 (storing):  F_mem from E_LMC(long clip), M trainable;
  phase 2 (matching): F_mem from E_MM(short clip), M frozen.
Each phase's unused encoder (E_MM in phase 1, E_LMC in phase 2) and, in phase 2, M get no
gradient (``grad is None``), so Adam leaves them bit-identical: no weight decay, no momentum
drift. (The reference, on its pinned PyTorch, zeroed gradients instead of clearing them, so
Adam's momentum kept moving M in phase 2; the paper says M is frozen, and here it is.)

The guard: a phase whose loss or any gradient is NaN/inf (agreed across DDP ranks) applies no
update, nor does any later phase of the iteration: fused Adam skips on the device when its
``found_inf`` flag is set, as under ``torch.amp.GradScaler``. The iteration then stops with
``NonFiniteLossError`` naming it and the phase, so no non-finite value reaches a weight or a
checkpoint. The losses and the guard's flags are read back to the host together, once per
iteration: no ``float(loss)`` or ``.item()`` per phase, so a GPU runs a phase's kernels without
waiting for the host.

Plain PyTorch, no Ray: the Ray Train driver wraps the model in DDP and calls ``step``.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import LMCConfig
from .model import unwrap


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss or gradient: the phase it happened in (and any later one) applied no
    update, so every weight is as finite as before. Raised at the end of the iteration."""


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
        # One Adam over all parameters; fused, because the fused kernel skips a whole update on
        # the device when the guard's flag says so (no host sync).
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, fused=True)
        self.iteration = 0
        # This rank's share of the global batch, relative to an even split: DDP averages the
        # ranks' gradients, so a rank with n of B windows over W ranks weighs its mean loss by
        # W * n / B and the update is the global batch's mean gradient (uneven splits too).
        self.loss_weight = 1.0
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

        if not unwrap(self.model).has_memory:   # w/o-memory baseline: two plain prediction steps
            long = None
        loss1, bad1 = self._phase(1, short, long, target, out_len)           # lines 4-10
        loss2, bad2 = self._phase(2, short, None, target, out_len, skip=bad1)  # lines 12-18
        # The iteration's one host sync: both losses and both guard flags in one read.
        loss1, loss2, bad1, bad2 = torch.stack([loss1, loss2, bad1, bad2]).tolist()
        if bad1 or bad2:
            phase, loss = (1, loss1) if bad1 else (2, loss2)
            raise NonFiniteLossError(self._stop_message(phase, loss))
        self.iteration += 1
        return {"loss_phase1": loss1, "loss_phase2": loss2}

    def _phase(self, phase: int, short, long, target, out_len: int, skip=None):
        """One optimizer step of Algorithm 1 -> (detached loss, flag), both 0-dim on the device;
        flag = 1.0 if the loss or a gradient was non-finite. No update is applied when the flag
        or ``skip`` (an earlier phase's flag) is set."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(short.device):
            pred = self.model(short, long=long, out_len=out_len)
        loss = prediction_loss(pred.float(), target)
        (loss if self.loss_weight == 1.0 else loss * self.loss_weight).backward()
        for p in self._frozen[phase]:   # nothing may reach them, whatever wraps the model
            p.grad = None
        bad = self._non_finite(loss)
        self.optimizer.found_inf = bad if skip is None else torch.maximum(bad, skip)
        try:
            self.optimizer.step()       # a no-op on the device when found_inf is 1
        finally:
            del self.optimizer.found_inf
        return loss.detach(), bad

    def _autocast(self, device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _non_finite(self, loss):
        """1.0 (a 0-dim float tensor on the loss's device) if the loss or any gradient is NaN/inf
        on any rank, else 0.0; computed without a host sync."""
        bad = torch.isfinite(loss.detach()).logical_not().float()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # GradScaler's check: sets ``bad`` to 1 if any gradient has a NaN/inf (scale 1: no-op)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, bad, bad.new_ones(()))
        if dist.is_available() and dist.is_initialized():  # every rank skips and stops alike
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad

    def _stop_message(self, phase: int, loss: float) -> str:
        what = f"loss ({loss})" if not math.isfinite(loss) else f"gradient (the loss, {loss:.6g}, is finite)"
        applied = ("neither phase's update was applied" if phase == 1 else
                   "phase 1's update was applied, phase 2's was not")
        return (f"non-finite {what} at iteration {self.iteration} in phase {phase} "
                f"({'storing' if phase == 1 else 'matching'}); {applied}, so every weight is "
                "still finite. Lower the learning rate, check the input frames are finite floats "
                "in [0, 1], or resume from the last checkpoint.")

    # -- resumable state --
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        _match_param_layouts(self.optimizer)
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])


def _match_param_layouts(optimizer) -> None:
    """Give every loaded state tensor (Adam's moments) its parameter's memory layout. A
    checkpoint keeps the layout it was saved with, and the fused kernel walks param, grad and
    moments as flat memory: moments saved contiguous, resumed beside channels_last weights,
    would be applied to the wrong elements without an error."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
