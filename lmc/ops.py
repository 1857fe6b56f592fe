"""ELU and tanh that run at vector speed on CPU.

ATen's CPU ``elu`` evaluates ``expm1`` one element at a time, and its ``tanh`` is several times
slower than its ``sigmoid``, so in a model made of small convolutions the activations of E_sp
and D cost a noticeable share of an inference (README, Benchmarks, has the measurements).
Here both are written with the vectorised ``exp`` / ``sigmoid``:

    elu(x)  = max(x, 0) + exp(min(x, 0)) - 1
    tanh(x) = 2 sigmoid(2x) - 1

Both differ from ATen's by at most ~3e-7 (absolute; ``exp(x) - 1`` loses relative precision
for x just below 0, where fp32 holds elu(x) = x to ~1e-7 anyway). bf16 inputs are computed in
fp32 and rounded once, as ATen's own bf16 kernels do. CUDA tensors and code being compiled
(inductor writes its own fused kernels) keep the ATen ops.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _fast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


class _CPUELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        xf = x.float()
        out = torch.exp(xf.clamp(max=0)).sub_(1).add_(xf.clamp(min=0)).to(x.dtype)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        # d elu / dx is 1 where x > 0 (there out > 0) and exp(x) = out + 1 elsewhere
        return grad * (out.clamp(max=0) + 1)


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU with alpha = 1."""
    return _CPUELU.apply(x) if _fast(x) else F.elu(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    if not _fast(x) or x.dtype != torch.float32:
        return torch.tanh(x)
    return torch.sigmoid(2 * x).mul(2).sub(1)


class ELU(nn.ELU):
    """``nn.ELU()`` (alpha 1, same repr and state dict) computed by ``elu`` above."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        return elu(x)
