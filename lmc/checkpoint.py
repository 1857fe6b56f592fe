"""This project's checkpoints: a folder with the weights, the training state and the config.

    <dir>/model.pt       model state dict (tensors only)
    <dir>/train_state.pt optimizer state, iteration, RNG states (torch, numpy, python, generator)
    <dir>/config.json    the LMCConfig the weights belong to
    <dir>/checkpoint.json  written last: every other file's name, size and sha256

A checkpoint exists only once ``checkpoint.json`` is written and every file it lists verifies
(as torch.distributed.checkpoint's metadata file, written last): files copied to storage in
any order, a copy cut short by a full disk, a truncated or zeroed file all fail
``verify_checkpoint`` with the file named. Every file is written to a temporary name and
renamed; every read uses ``weights_only=True``, so loading never executes code from the file.
A reference (paper authors') ``.pt`` file is accepted too wherever a model checkpoint is read,
and a folder without ``checkpoint.json`` (written before it existed, or by hand) loads for
inference with nothing to verify against. Plain PyTorch, no Ray.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
from pathlib import Path

import numpy as np
import torch

from .config import LMCConfig, preset as make_preset
from .model import LMCModel, unwrap
from .reference import CheckpointError, from_reference_checkpoint, load_matching

MODEL_FILE, STATE_FILE, CONFIG_FILE = "model.pt", "train_state.pt", "config.json"
MANIFEST_FILE = "checkpoint.json"
MANIFEST_FORMAT = "lmc-checkpoint"
_CHUNK = 8 << 20


def atomic_write(path, write) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed over it:
    a reader never sees half a file. The file gets an ordinary file's mode (0o666 less the
    umask, as open() gives), not mkstemp's 0600."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_save(obj, path: Path) -> None:
    if path.suffix == ".json":
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True)))
    else:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_stream(read) -> tuple[int, str]:
    """(bytes, sha256 hex) of what ``read(n)`` yields until it returns b""."""
    h, n = hashlib.sha256(), 0
    for chunk in iter(lambda: read(_CHUNK), b""):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def write_manifest(directory, extra: dict | None = None) -> dict:
    """List every file of ``directory`` (name, bytes, sha256) in ``checkpoint.json``, written
    last and atomically: from then on the folder is a checkpoint."""
    directory = Path(directory)
    files = []
    for f in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_FILE
                    and not p.name.startswith(".")):
        with open(f, "rb") as fh:
            size, digest = sha256_stream(fh.read)
        files.append({"name": f.name, "bytes": size, "sha256": digest})
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": files, **(extra or {})}
    _atomic_save(manifest, directory / MANIFEST_FILE)
    return manifest


def parse_manifest(data: bytes, where: str) -> dict:
    """A checkpoint manifest from its bytes (``CheckpointError`` naming ``where`` if it is not one)."""
    try:
        m = json.loads(data)
        ok = (m.get("format") == MANIFEST_FORMAT and isinstance(m.get("files"), list)
              and all({"name", "bytes", "sha256"} <= set(f) for f in m["files"]))
    except (ValueError, AttributeError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{where} is corrupt (not a checkpoint manifest)")
    return m


def verify_files(manifest: dict, size_of, open_file, where: str) -> None:
    """Every file ``manifest`` lists has its size (``size_of(name)``, None if missing) and its
    sha256 (read through ``open_file(name)``); ``CheckpointError`` naming the first that does not."""
    for f in manifest["files"]:
        size = size_of(f["name"])
        if size is None:
            raise CheckpointError(f"{where}/{f['name']} is missing")
        if size != f["bytes"]:
            raise CheckpointError(f"{where}/{f['name']} is {size:,} bytes, its manifest says "
                                  f"{f['bytes']:,} (cut short or replaced)")
        with open_file(f["name"]) as fh:
            _, digest = sha256_stream(fh.read)
        if digest != f["sha256"]:
            raise CheckpointError(f"{where}/{f['name']} does not match its sha256 in "
                                  f"{MANIFEST_FILE} (corrupt or replaced)")


def verify_checkpoint(directory) -> dict | None:
    """Check a local checkpoint folder against its ``checkpoint.json``: the manifest, or None
    when the folder has none (one put together by hand: nothing to verify against).
    ``CheckpointError`` naming the file that does not verify."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = parse_manifest(path.read_bytes(), str(path))
    verify_files(manifest, lambda n: (directory / n).stat().st_size if (directory / n).is_file()
                 else None, lambda n: open(directory / n, "rb"), str(directory))
    return manifest


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


def save_checkpoint(directory, model, cfg: LMCConfig, train_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``model`` (unwrapped from DDP if needed), ``cfg`` and an optional training state
    (e.g. ``{"alignment": align.state_dict(), "rng": rng_state(), ...}``) into ``directory``,
    then the manifest (with ``extra``, e.g. the iteration, in it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, directory / MODEL_FILE)
    if train_state is not None:
        _atomic_save(train_state, directory / STATE_FILE)
    _atomic_save(cfg.to_dict(), directory / CONFIG_FILE)
    write_manifest(directory, extra)
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
    verify_checkpoint(path)
    stored = load_config(path)
    cfg = cfg or stored
    model = LMCModel(cfg)
    state = _load(path / MODEL_FILE, map_location)
    load_matching(model, state, str(path / MODEL_FILE))
    return model


def load_train_state(directory, map_location="cpu") -> dict:
    """The training state of a checkpoint folder (verified by ``load_model`` beforehand)."""
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
    verify_checkpoint(source)
    cfg = load_config(source)
    state = _load(source / MODEL_FILE, "cpu")
    destination.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                 destination / MODEL_FILE)
    _atomic_save(cfg.to_dict(), destination / CONFIG_FILE)
    write_manifest(destination)
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
