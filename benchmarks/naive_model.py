"""A straightforward per-frame implementation of the same LMC-Memory math, for benchmarking.

Written the obvious way (as the reference does): every frame through E_sp on its own inside
the recurrence, two convolutions per ConvLSTM gate computation. It is built from a
``lmc.LMCModel`` (deep copies of its conv stacks, the fused gate kernels split back in two),
so the benchmark first checks that both compute the same function and then times them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NaiveCell(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv_x = nn.Conv2d(ch, 4 * ch, 3, padding=1)
        self.conv_h = nn.Conv2d(ch, 4 * ch, 3, padding=1)

    def forward(self, x, h, c):
        xi, xg, xf, xo = self.conv_x(x).chunk(4, 1)
        hi, hg, hf, ho = self.conv_h(h).chunk(4, 1)
        c = torch.sigmoid(xf + hf) * c + torch.sigmoid(xi + hi) * torch.tanh(xg + hg)
        return torch.sigmoid(xo + ho) * torch.tanh(c), c


class NaiveLMC(nn.Module):
    """Same layers as ``lmc.LMCModel`` (query='local'), looped frame by frame."""

    def __init__(self, model):
        super().__init__()
        self.cfg = model.cfg
        self.spatial_encoder = _copy(model.spatial_encoder)
        self.decoder = _copy(model.decoder)
        self.motion_context_encoder = _copy(model.motion_context_encoder)
        self.motion_matching_encoder = _copy(model.motion_matching_encoder)
        self.context_embedding = _copy(model.context_embedding)
        self.attention = _copy(model.channel_attention)
        self.slots = nn.Parameter(model.memory.slots.detach().clone())
        self.cells = nn.ModuleList()
        for cell in model.convlstm:
            naive = NaiveCell(cell.hid)
            w_x, w_h = cell.weight.detach().split([cell.hid, cell.hid], dim=1)
            naive.conv_x.weight.data.copy_(w_x)
            naive.conv_h.weight.data.copy_(w_h)
            naive.conv_x.bias.data.copy_(cell.bias_x.detach())
            naive.conv_h.bias.data.copy_(cell.bias_h.detach())
            self.cells.append(naive)

    def memory_feature(self, clip, phase):
        enc = self.motion_context_encoder if phase == 1 else self.motion_matching_encoder
        z = enc(clip)
        n, c, h, w = z.shape
        q = z.permute(0, 2, 3, 1).reshape(-1, c)
        slots = self.slots if phase == 1 else self.slots.detach()
        a = F.softmax(F.normalize(q, dim=1) @ F.normalize(slots, dim=1).t(), dim=1)
        f = (a @ slots).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return self.context_embedding(f)

    def forward(self, short, long=None, out_len=30):
        f_mem = self.memory_feature(long if long is not None else short, 1 if long is not None else 2)
        n, t_in = short.shape[:2]
        hid = self.cells[0].conv_h.in_channels
        size = self.cfg.img_size // 4
        h = [short.new_zeros(n, hid, size, size) for _ in self.cells]
        c = [short.new_zeros(n, hid, size, size) for _ in self.cells]
        preds = []
        for t in range(t_in + out_len - 1):
            x = self.spatial_encoder(short[:, t] if t < t_in else preds[-1])
            for i, cell in enumerate(self.cells):
                h[i], c[i] = cell(x, h[i], c[i])
                x = h[i]
            if t >= t_in - 1:
                a = self.attention(torch.cat([c[-1], f_mem], 1))
                preds.append(self.decoder(torch.cat([h[-1], a * f_mem], 1)))
        return torch.stack(preds, 1)


def _copy(module):
    """A deep copy with ATen's own ELU, as the reference uses (not lmc.ops' faster one)."""
    import copy
    module = copy.deepcopy(module)
    for name, child in module.named_children():
        if isinstance(child, nn.ELU):
            setattr(module, name, nn.ELU())
    return module
