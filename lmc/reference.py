"""Load the reference implementation's published checkpoints into ``LMCModel``.

The reference saves ``nn.DataParallel(Predictor).state_dict()``: keys carry a ``module.``
prefix and use its own names (``convlstm_list.0.conv2d_x.weight``, ``memory.memory_w``, ...).
Like nanoGPT's ``from_pretrained``, this module lists the foreign keys, maps each to ours,
stacks the two ConvLSTM gate kernels into our fused one, and checks every shape; user files
get a clear error (never an assert), and nothing in the file is executed (``weights_only``).
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch

from .config import LMCConfig
from .model import LMCModel


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match the model's architecture."""


# reference name prefix -> our module prefix (sub-module indices are the same on both sides)
_PREFIX_MAP = (
    ("encoder.", "spatial_encoder."),
    ("decoder.", "decoder."),
    ("memory.memory_w", "memory.slots"),
    ("memory.motion_matching_encoder.", "motion_matching_encoder."),
    ("memory.motion_context_encoder.", "motion_context_encoder."),
    ("memory.embedder.", "context_embedding."),
    ("attention_func.2.", "channel_attention.fc1."),
    ("attention_func.4.", "channel_attention.fc2."),
)
_CONVLSTM = re.compile(r"convlstm_list\.(\d+)\.conv2d_([xh])\.(weight|bias)$")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; a non-checkpoint file is a CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


def convert_reference_state_dict(ref: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference's keys to ours (``module.`` prefix optional) and fuse the ConvLSTM
    gate convolutions: weight = cat([W_x, W_h], dim=1); biases stay separate.

    Unknown keys are kept under their reference name so that the caller can report them."""
    ref = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ref.items()}
    out: dict[str, torch.Tensor] = {}
    gate_parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in ref.items():
        m = _CONVLSTM.match(key)
        if m:
            layer, src, kind = int(m.group(1)), m.group(2), m.group(3)
            gate_parts.setdefault(layer, {})[f"{kind}_{src}"] = value
            continue
        for old, new in _PREFIX_MAP:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value
    for layer, parts in sorted(gate_parts.items()):
        if "weight_x" in parts and "weight_h" in parts:
            if parts["weight_x"].shape[0] != parts["weight_h"].shape[0]:
                raise CheckpointError(f"convlstm_list.{layer}: conv2d_x and conv2d_h have different "
                                      f"output widths {parts['weight_x'].shape[0]} vs "
                                      f"{parts['weight_h'].shape[0]}")
            out[f"convlstm.{layer}.weight"] = torch.cat([parts["weight_x"], parts["weight_h"]], dim=1)
        else:
            for name in ("weight_x", "weight_h"):
                if name in parts:
                    out[f"convlstm_list.{layer}.conv2d_{name[-1]}.weight"] = parts[name]
        for src in "xh":
            if f"bias_{src}" in parts:
                out[f"convlstm.{layer}.bias_{src}"] = parts[f"bias_{src}"]
    return out


def from_reference_checkpoint(path_or_state_dict, cfg: LMCConfig) -> LMCModel:
    """An ``LMCModel(cfg)`` holding the reference's weights.

    ``path_or_state_dict``: a file written by the reference's ``train.py`` (``torch.save`` of
    an ``nn.DataParallel`` state dict) or such a dict, with or without the ``module.`` prefix.
    ``cfg`` must describe the same network (``preset("paper-mmnist")`` or ``preset("paper-kth")``:
    width 1, 4 ConvLSTM layers, local queries). Mismatches raise ``CheckpointError`` listing
    every missing, unexpected and mis-shaped key.
    """
    if isinstance(path_or_state_dict, Mapping):
        ref = dict(path_or_state_dict)
        where = "the given state dict"
    else:
        ref = load_state_dict_file(path_or_state_dict)
        where = os.fspath(path_or_state_dict)
    ref_in_ch = next((v.shape[1] for k, v in ref.items()
                      if k.removeprefix("module.") == "encoder.0.weight" and v.dim() == 4), None)
    if ref_in_ch is not None and ref_in_ch != cfg.channels:
        raise CheckpointError(f"{where} was trained on {ref_in_ch}-channel frames but the config "
                              f"has channels={cfg.channels}; set channels={ref_in_ch}")
    model = LMCModel(cfg)
    load_matching(model, convert_reference_state_dict(ref), where)
    return model


def load_matching(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)`` with one clear error listing every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or mis_shaped:
        def show(keys):
            return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")
        lines = [f"{where} does not match the model's architecture:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {show(mis_shaped)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
