"""This project's checkpoints: a folder with the weights, the training state and the config.

    <dir>/model.pt       model state dict (tensors only)
    <dir>/train_state.pt optimizer state, iteration, RNG states (torch, numpy, python, generator)
    <dir>/config.json    the LMCConfig the weights belong to

Every file is written to a temporary name and renamed, so a reader never sees half a file;
every read uses ``weights_only=True``, so loading never executes code from the file. A
reference (paper authors') ``.pt`` file is accepted too wherever a model checkpoint is read.
Plain PyTorch, no Ray: Ray Train wraps the folder in ``ray.train.Checkpoint``.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import LMCConfig, preset as make_preset
from .model import LMCModel, unwrap
from .reference import CheckpointError, from_reference_checkpoint, load_matching

MODEL_FILE, STATE_FILE, CONFIG_FILE = "model.pt", "train_state.pt", "config.json"


def _atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        if path.suffix == ".json":
            Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True))
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict:
    """The global RNG states in types that ``torch.load(weights_only=True)`` accepts (numpy's
    key array as a tensor; python's state is a tuple of ints)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(gauss)),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def save_checkpoint(directory, model, cfg: LMCConfig, train_state: dict | None = None) -> Path:
    """Write ``model`` (unwrapped from DDP if needed), ``cfg`` and an optional training state
    (e.g. ``{"alignment": align.state_dict(), "rng": rng_state(), ...}``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, directory / MODEL_FILE)
    if train_state is not None:
        _atomic_save(train_state, directory / STATE_FILE)
    _atomic_save(cfg.to_dict(), directory / CONFIG_FILE)   # last: its presence marks completeness
    return directory


def load_config(directory) -> LMCConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint folder: {CONFIG_FILE} is missing")
    try:
        return LMCConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def load_model(path, cfg: LMCConfig | None = None, map_location="cpu") -> LMCModel:
    """A model from a checkpoint folder of this project, or from a reference ``.pt`` file
    (then ``cfg`` is required: the reference files carry no config). ``cfg``, when given for a
    folder, must match the architecture stored there (mismatched keys are listed)."""
    path = Path(path)
    if path.is_file():
        if cfg is None:
            raise CheckpointError(f"{path} is a single weights file (the reference's format); "
                                  "give the config it was trained with, e.g. preset('paper-kth')")
        return from_reference_checkpoint(str(path), cfg)
    stored = load_config(path)
    cfg = cfg or stored
    model = LMCModel(cfg)
    state = _load(path / MODEL_FILE, map_location)
    load_matching(model, state, str(path / MODEL_FILE))
    return model


def load_train_state(directory, map_location="cpu") -> dict:
    return _load(Path(directory) / STATE_FILE, map_location)


def _load(path: Path, map_location):
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or not a checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def export_weights(source, destination, dtype: torch.dtype = torch.float16) -> Path:
    """A compact inference checkpoint: ``source``'s weights cast to ``dtype`` (half the bytes
    of float32) and its config, without the training state. ``load_model`` (and so
    ``jobs/evaluate.py --checkpoint``) reads it back into a float32 model; evaluate the export
    itself when its numbers are published, since the rounding moves them slightly."""
    source, destination = Path(source), Path(destination)
    cfg = load_config(source)
    state = _load(source / MODEL_FILE, "cpu")
    destination.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                 destination / MODEL_FILE)
    _atomic_save(cfg.to_dict(), destination / CONFIG_FILE)
    return destination


# ---------------------------------------------------------------------------------------------
# loading for inference (evaluate, predict, analysis)

def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when there is one, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def checkpoint_config(checkpoint, preset: str | LMCConfig | None = None) -> LMCConfig:
    """The config a checkpoint's weights belong to, without loading the weights.

    A folder of this project carries its config (``preset`` is then ignored); a single ``.pt``
    file (the reference's format) needs ``preset`` (a name such as "paper-kth" or an LMCConfig).
    """
    path = Path(checkpoint)
    if path.is_dir():
        return load_config(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if preset is None:
        raise CheckpointError(f"{path} is a single weights file (the reference's format); give "
                              "the config it was trained with, e.g. --preset paper-kth")
    return preset if isinstance(preset, LMCConfig) else make_preset(preset)


def load_for_inference(checkpoint, preset: str | LMCConfig | None = None,
                       device=None) -> tuple[LMCModel, LMCConfig]:
    """(model in eval mode on ``device``, its config) from a checkpoint folder or reference file."""
    cfg = checkpoint_config(checkpoint, preset)
    path = Path(checkpoint)
    model = load_model(path, None if path.is_dir() else cfg)
    return model.to(resolve_device(device)).eval(), cfg
