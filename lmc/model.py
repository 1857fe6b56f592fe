"""LMC-Memory video prediction model (Lee et al., CVPR 2021, "Video Prediction Recalling
Long-term Motion Context via Memory Alignment Learning").

Paper §3.1 (prediction path P, Fig. 1) and §3.2 (LMC-Memory, Eq. 1-2). Layer shapes follow
the authors' reference implementation (docs/design.md §3); at ``width=1.0`` with 1 channel the model
has exactly the reference's 33,911,825 parameters, and ``from_reference_checkpoint`` loads its
published weights. Plain PyTorch: no Ray here.

Shapes: N batch, T time, C image channels, H = W = img_size; the spatial path works on a
(H/4, W/4) grid, the memory path on (H/16, W/16) cells that are upsampled back by 4.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .config import MIN_CLIP_LEN, LMCConfig


def _autocast_off(device_type: str):
    """Autocast disabled inside (an fp32 island); nothing to disable on e.g. the meta device."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class SpatialEncoder(nn.Sequential):
    """E_sp: 2D convs applied to every frame independently, (N, C, H, W) -> (N, hid, H/4, W/4)."""

    def __init__(self, cfg: LMCConfig):
        c1, hid = cfg.ch(64), cfg.hidden
        super().__init__(
            nn.Conv2d(cfg.channels, c1, 3, stride=2, padding=1), ops.ELU(),
            nn.Conv2d(c1, c1, 3, stride=1, padding=1), ops.ELU(),
            nn.Conv2d(c1, hid, 3, stride=2, padding=1), ops.ELU(),
            nn.Conv2d(hid, hid, 3, stride=1, padding=1), ops.ELU(),
        )


class FrameDecoder(nn.Sequential):
    """D: [H_t; F~mem_t] -> next frame, (N, in_ch, H/4, W/4) -> (N, C, H, W)."""

    def __init__(self, cfg: LMCConfig, in_ch: int):
        c1, hid = cfg.ch(64), cfg.hidden
        layers = [
            nn.ConvTranspose2d(in_ch, hid, 3, stride=1, padding=1), ops.ELU(),
            nn.ConvTranspose2d(hid, c1, 3, stride=2, padding=1, output_padding=1), ops.ELU(),
            nn.ConvTranspose2d(c1, c1, 3, stride=1, padding=1), ops.ELU(),
            nn.ConvTranspose2d(c1, cfg.channels, 3, stride=2, padding=1, output_padding=1),
        ]
        if cfg.output_activation == "sigmoid":
            layers.append(nn.Sigmoid())
        super().__init__(*layers)


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell (Shi et al. 2015) without peepholes, zero initial state.

    The reference computes conv_x(x) + conv_h(h) with two convolutions. One convolution over
    cat(x, h) with the two kernels stacked along input channels is the same map in one call.
    The two biases stay separate parameters (their sum is what the conv adds): that keeps the
    reference's parameterisation, so Adam moves them exactly as it does in the reference.
    Gate order along channels: input i, candidate g, forget f, output o.
    """

    def __init__(self, in_ch: int, hid: int, kernel_size: int = 3):
        super().__init__()
        self.hid, self.padding = hid, kernel_size // 2
        self.weight = nn.Parameter(torch.empty(4 * hid, in_ch + hid, kernel_size, kernel_size))
        self.bias_x = nn.Parameter(torch.empty(4 * hid))
        self.bias_h = nn.Parameter(torch.empty(4 * hid))
        self.reset_parameters(in_ch, kernel_size)

    def reset_parameters(self, in_ch: int, k: int) -> None:
        # Same init as the reference's two nn.Conv2d (kaiming-uniform a=sqrt(5) per conv).
        w_x, w_h = self.weight.data.split([in_ch, self.hid], dim=1)
        for w, b, fan_in in ((w_x, self.bias_x, in_ch * k * k), (w_h, self.bias_h, self.hid * k * k)):
            nn.init.kaiming_uniform_(w, a=5 ** 0.5)
            nn.init.uniform_(b, -fan_in ** -0.5, fan_in ** -0.5)

    def forward(self, x, h, c):
        gates = F.conv2d(torch.cat([x, h], dim=1), self.weight, self.bias_x + self.bias_h,
                         padding=self.padding)
        # The cell state stays fp32 under autocast: over 39 steps c_t = f * c_{t-1} + i * g
        # adds small terms to a retained sum, which bf16's 8-bit mantissa would round away.
        i, g, f, o = gates.float().chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * ops.tanh(g)
        h = torch.sigmoid(o) * ops.tanh(c)
        return h.to(gates.dtype), c          # h feeds convolutions: back to their dtype


class MotionEncoder(nn.Sequential):
    """C3D stack (E_LMC or E_MM) on difference frames: clip (N, T, C, H, W) -> (N, c, H/16, W/16).

    Time is pooled by 8 and then averaged away; space is pooled by 16. c = 512 at width 1.
    """

    def __init__(self, cfg: LMCConfig):
        c64, c128, c256, c512 = cfg.ch(64), cfg.ch(128), cfg.ch(256), cfg.ch(512)
        super().__init__(
            nn.Conv3d(cfg.channels, c64, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(c64, c128, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(c128, c256, 3, padding=1), nn.ReLU(),
            nn.Conv3d(c256, c256, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(c256, c512, 3, padding=1), nn.ReLU(),
            nn.Conv3d(c512, c512, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d(2),
        )

    def forward(self, clip):
        # clip: (N, T, C, H, W) frames -> difference frames x[t+1] - x[t]
        x = (clip[:, 1:] - clip[:, :-1]).transpose(1, 2)      # (N, C, T-1, H, W)
        for layer in self:
            if isinstance(layer, nn.Conv3d) and _bf16_weight_grad_unsound(x):
                with _autocast_off("cpu"):
                    x = layer(x.float())
            else:
                x = layer(x)
        return x.mean(dim=2)                                  # (N, c, H/16, W/16)


def _bf16_weight_grad_unsound(x) -> bool:
    """Whether a Conv3d on ``x`` must leave CPU bf16 autocast. oneDNN's bf16 Conv3d weight
    gradient (3.12, in torch 2.14, jit_bf16 backward_weights) reads memory it never wrote when
    its input is 2 frames deep, so the weights would get garbage, at times inf/NaN; a 10-frame
    clip's last two convs see such inputs (``tests/test_numerics.py`` reproduces it). Depth 1
    leaves too (as cheap, and an edge of the same kernel). The forward kernels are sound, so
    without a backward to follow (inference) nothing leaves. CUDA autocast is left alone."""
    return (x.device.type == "cpu" and x.shape[2] <= 2 and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu"))


class LMCMemory(nn.Module):
    """The LMC-Memory M (s x c) with cosine addressing, paper §3.2."""

    def __init__(self, cfg: LMCConfig):
        super().__init__()
        self.slots = nn.Parameter(torch.randn(cfg.memory_slots, cfg.ch(512)))  # M, init N(0, 1)

    def forward(self, queries, trainable: bool = True):
        """Eq. (2): f = sum_i a_i m_i, read from the unnormalised M. (Q, c) -> (Q, c), (Q, s).

        ``trainable=False`` (phase 2) reads a detached M: no gradient reaches it, so it is
        frozen for any optimizer, also under DDP (Algorithm 1, line 18)."""
        slots = self.slots if trainable else self.slots.detach()
        # fp32 under autocast: cosines of near-orthogonal 512-d vectors differ in the third
        # digit, which is all bf16 keeps, and the softmax over slots amplifies the rounding.
        # (Q x s x c is a tiny matmul, so fp32 costs nothing.)
        with _autocast_off(queries.device.type):
            queries, slots = queries.float(), slots.float()
            sim = F.normalize(queries, dim=1) @ F.normalize(slots, dim=1).t()
            addressing = sim.softmax(dim=1)                   # Eq. (1)
            return addressing @ slots, addressing             # Eq. (2)


class ContextEmbedding(nn.Sequential):
    """2D deconvs that bring F_mem to the ConvLSTM grid: (N, c, H/16, W/16) -> (N, hid, H/4, W/4)."""

    def __init__(self, cfg: LMCConfig):
        super().__init__(
            nn.ConvTranspose2d(cfg.ch(512), cfg.ch(256), 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(cfg.ch(256), cfg.hidden, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
        )


class ChannelAttention(nn.Module):
    """A_t = sigmoid(FC(ReLU(FC(avgpool([C_t; F~mem]))))), paper §3.1; (N, 2 hid, h, w) -> (N, hid, 1, 1)."""

    def __init__(self, cfg: LMCConfig):
        super().__init__()
        self.fc1 = nn.Linear(2 * cfg.hidden, cfg.ch(16))
        self.fc2 = nn.Linear(cfg.ch(16), cfg.hidden)

    def forward(self, x):
        a = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return a[:, :, None, None]


class LMCModel(nn.Module):
    """LMC-Memory predictor.

    ``model(short, out_len=K)``: phase 2 / inference, the memory is queried by E_MM(short).
    ``model(short, long=long, out_len=K)``: phase 1, the memory is queried by E_LMC(long).
    ``short``/``long`` are (N, T, C, H, W) floats in [0, 1]; returns (N, K, C, H, W).
    """

    def __init__(self, cfg: LMCConfig):
        super().__init__()
        self.cfg = cfg
        hid = cfg.hidden
        self.spatial_encoder = SpatialEncoder(cfg)
        self.convlstm = nn.ModuleList(ConvLSTMCell(hid, hid) for _ in range(cfg.convlstm_layers))
        self.has_memory = cfg.query != "none"
        if self.has_memory:
            self.motion_context_encoder = MotionEncoder(cfg)    # E_LMC, phase 1 (long clips)
            self.motion_matching_encoder = MotionEncoder(cfg)   # E_MM, phase 2 (short clips)
            self.memory = LMCMemory(cfg)
            self.context_embedding = ContextEmbedding(cfg)
            self.channel_attention = ChannelAttention(cfg)
        self.decoder = FrameDecoder(cfg, in_ch=2 * hid if self.has_memory else hid)
        self._compiled = None    # (recur, predict_step) once compile_regions has run

    # -- memory path (lower path of Fig. 1) --
    def memory_addressing(self, clip, phase: int):
        """Memory read for a clip: returns F_mem (N, c, h, w) before embedding and the
        addressing vectors (N, q, s), q = h*w local queries (1 for query='global')."""
        if not self.has_memory:
            raise ValueError("this model has no memory (query='none')")
        encoder = self.motion_context_encoder if phase == 1 else self.motion_matching_encoder
        z = encoder(clip)                                         # (N, c, h, w)
        n, c, h, w = z.shape
        if self.cfg.query == "global":
            queries = z.mean(dim=(2, 3))                          # (N, c): one pooled query
        else:
            queries = z.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N*h*w, c) local queries
        f_mem, addressing = self.memory(queries, trainable=phase == 1)  # Eq. (1), (2)
        if self.cfg.query == "global":
            f_mem = f_mem[:, :, None, None].expand(n, c, h, w)    # same context in every cell
        else:
            f_mem = f_mem.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (N, c, h, w)
        return f_mem, addressing.reshape(n, -1, addressing.shape[-1])

    def memory_feature(self, clip, phase: int):
        """F~mem (N, hid, H/4, W/4): the recalled motion context on the ConvLSTM grid."""
        f_mem, _ = self.memory_addressing(clip, phase)
        return self.context_embedding(f_mem)

    # -- prediction path P (upper path of Fig. 1) --
    def forward(self, short, long=None, out_len: int | None = None):
        self._check_input(short, "short")
        if long is not None:
            if not self.has_memory:
                raise ValueError("a long clip was given but this model has no memory (query='none')")
            self._check_input(long, "long")
        out_len = self.cfg.out_len if out_len is None else int(out_len)
        if out_len < 1:
            raise ValueError(f"out_len must be >= 1, got {out_len}")

        n, t_in = short.shape[:2]
        f_mem = None
        if self.has_memory:   # computed once per sequence (Algorithm 1, lines 5 and 13)
            f_mem = self.memory_feature(long, 1) if long is not None else self.memory_feature(short, 2)

        # E_sp on the known frames but the last in one batched call: (N, T-1, hid, h, w)
        enc = self.spatial_encoder(short[:, :-1].flatten(0, 1)).unflatten(0, (n, t_in - 1))
        h = [enc.new_zeros(n, cell.hid, *enc.shape[-2:]) for cell in self.convlstm]
        c = [torch.zeros_like(z, dtype=torch.float32) for z in h]   # fp32 cell state
        recur, predict = self._compiled or (LMCModel.recur, LMCModel.predict_step)
        for t in range(t_in - 1):
            h, c = recur(self, enc[:, t], h, c)
        frame, preds = short[:, -1].contiguous(), []   # contiguous like every later frame
        for _ in range(out_len):              # the last known frame, then each prediction fed
            frame, h, c = predict(self, frame, h, c, f_mem)   # back (no teacher forcing)
            preds.append(frame)
        return torch.stack(preds, dim=1)                          # (N, out_len, C, H, W)

    # -- one timestep: the regions compile_regions compiles (same code at every t) --
    def recur(self, x, h, c):
        """The ConvLSTM stack on one encoded frame x (N, hid, h, w): per-layer (h, c) -> new."""
        h, c = list(h), list(c)
        for layer, cell in enumerate(self.convlstm):
            h[layer], c[layer] = cell(x, h[layer], c[layer])
            x = h[layer]
        return h, c

    def predict_step(self, frame, h, c, f_mem):
        """frame (N, C, H, W) -> E_sp -> ConvLSTM -> D([H_t; A_t * F~mem]): (next frame, h, c)."""
        h, c = self.recur(self.spatial_encoder(frame), h, c)
        return self._decode(h[-1], c[-1], f_mem), h, c

    def compile_regions(self, **compile_kwargs) -> "LMCModel":
        """Regional compilation: ``torch.compile`` the per-timestep work (``recur`` and
        ``predict_step``) instead of the unrolled rollout. The 39 steps of a rollout reuse two
        small graphs, so compiling costs the same at any horizon; the memory path and the
        batched E_sp run once per sequence and stay eager. ``compile_problem`` says beforehand
        where this cannot work. The functions, not bound methods, are compiled: a copy of the
        model then runs its own weights, not this model's."""
        self._compiled = (torch.compile(LMCModel.recur, **compile_kwargs),
                          torch.compile(LMCModel.predict_step, **compile_kwargs))
        return self

    def to_channels_last(self) -> "LMCModel":
        """The 2D conv weights in NHWC (channels_last), so that the frames' activations follow:
        oneDNN's forward convs run ~15% faster in it on CPU, and it is the layout of cuDNN's
        tensor-core kernels. The C3D's 5-D weights stay: channels_last_3d was no faster there.
        (``Module.to(memory_format=...)`` refuses a model with 5-D weights.) The NHWC strides
        are set explicitly: for a weight with one channel (the last ConvTranspose of a
        grayscale decoder) ``contiguous(memory_format=channels_last)`` keeps NCHW strides,
        while its gradient comes back NHWC, which DDP's gradient buckets flag on every run."""
        for p in self.parameters():
            if p.dim() == 4:
                o, i, h, w = p.shape
                p.data = torch.empty_strided(p.shape, (i * h * w, 1, w * i, i), dtype=p.dtype,
                                             device=p.device).copy_(p.data)
        return self

    def _decode(self, h_top, c_top, f_mem):
        if f_mem is None:
            return self.decoder(h_top)
        attention = self.channel_attention(torch.cat([c_top, f_mem], dim=1))  # A_t from C_t
        return self.decoder(torch.cat([h_top, attention * f_mem], dim=1))      # D([H_t; A_t * F~mem])

    def _check_input(self, x, name: str) -> None:
        cfg = self.cfg
        if not torch.is_tensor(x) or x.dim() != 5:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"'{name}' must be a (N, T, C, H, W) tensor, got {shape}")
        _, t, ch, hh, ww = x.shape
        if (ch, hh, ww) != (cfg.channels, cfg.img_size, cfg.img_size):
            raise ValueError(
                f"'{name}' frames are {ch}x{hh}x{ww} (C x H x W) but the model config expects "
                f"{cfg.channels}x{cfg.img_size}x{cfg.img_size} (channels, img_size)")
        min_len = MIN_CLIP_LEN if self.has_memory else 1
        if t < min_len:
            raise ValueError(f"'{name}' has {t} frames; this model needs >= {min_len} "
                             "(the motion encoders pool time by 8 over difference frames)")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def unwrap(model) -> LMCModel:
    """The ``LMCModel`` inside a DDP / DataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
