"""Speed where the hardware allows it, with the plain model as the fallback everywhere else.

- ``compile_problem(device_type)``: why ``torch.compile`` (``LMCModel.compile_regions``) cannot
  work here, or None; the run planner asks it before any Ray work (``--compile``).
- ``GraphedRollout``: phase-2 inference (short clip in, ``out_len`` frames out) captured as one
  CUDA graph for a fixed batch and horizon, then replayed: one launch instead of thousands of
  small kernels (the rollout is launch-bound on GPUs at small batch, docs/design.md §7). On a CPU, or
  for a model not on a GPU, it runs the eager model and gives exactly its result.

Training is not graph-captured: its two phases update different parameter sets, DDP's all-reduce
hooks run inside backward, and the guard's skip is data-dependent; the regional compile is the
training-side lever. Plain PyTorch, no Ray.
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch

from .model import unwrap


def compile_problem(device_type: str = "cpu") -> str | None:
    """The reason ``torch.compile`` cannot run on ``device_type`` ("cpu" or "cuda") here, or
    None when it can. Cheap: it compiles nothing."""
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        return "torch.compile does not support this Python/platform (torch._dynamo says no)"
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs Triton, which is not installed (pip install triton)"
        return None
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:   # InvalidCxxCompiler: it names the compilers it tried
        return f"torch.compile on CPU needs a working C++ compiler (install g++ or set CXX): {e}"
    return None


class GraphedRollout:
    """``rollout(short)`` = ``model(short, out_len=out_len)`` under ``torch.no_grad`` (and
    autocast to ``autocast_dtype`` if given), for ``short`` of exactly ``batch`` clips.

    On CUDA the rollout is captured once (after ``warmup`` eager runs on a side stream, as
    ``torch.cuda.graphs`` requires) and each call copies ``short`` into the captured input,
    replays, and returns a copy of the captured output. Elsewhere it is the eager call.
    The model's weights may change between calls (the graph reads them in place); its
    structure, the batch, the clip length and the horizon may not.
    """

    def __init__(self, model, batch: int, out_len: int | None = None,
                 autocast_dtype: torch.dtype | None = None, warmup: int = 3):
        self.model = model
        cfg = unwrap(model).cfg          # a DDP-wrapped model too
        self.out_len = cfg.out_len if out_len is None else int(out_len)
        self.shape = (batch, cfg.short_len, cfg.channels, cfg.img_size, cfg.img_size)
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device
        self.graph = None
        if self.device.type == "cuda":
            self._capture(warmup)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _autocast(self, cache_enabled: bool = True):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # autocast's weight-cast cache must be off inside a capture (torch.cuda.graph docs)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              cache_enabled=cache_enabled)

    def _capture(self, warmup: int) -> None:
        self.static_short = torch.zeros(self.shape, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), self._autocast(cache_enabled=False):
            for _ in range(warmup):          # lazy inits and cuDNN autotuning, off the capture
                self.model(self.static_short, out_len=self.out_len)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad(), self._autocast(cache_enabled=False):
            self.static_out = self.model(self.static_short, out_len=self.out_len)

    def __call__(self, short):
        if tuple(short.shape) != self.shape:
            raise ValueError(f"this rollout was built for short clips of shape {self.shape} "
                             f"(N, T, C, H, W), got {tuple(short.shape)}")
        if self.graph is None:
            with torch.no_grad(), self._autocast():
                return self.model(short, out_len=self.out_len)
        self.static_short.copy_(short)
        self.graph.replay()
        return self.static_out.clone()
