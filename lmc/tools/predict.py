"""Predict the future of one video (any file decord reads) or one folder of frames.

    from lmc.predict import predict
    result = predict("runs/kth/checkpoint", "person17_walking_d1_uncomp.avi", "pred/", out_len=40)

Frames are brought to the model's config exactly as the data pipeline does it: decord resizes
at decode and grayscale is the BT.601 luma of the decoded colour frame (``pipeline.decode``,
in its crash-isolated child process); frame folders are read with PIL, resized bilinearly and
converted the same way. From frame ``start``, ``short_len`` frames go in (phase 2: the memory
is queried from the short clip) and ``out_len`` frames come out. Written to ``output``:

    pred/frame_001.png ...   the predicted frames, at the model's resolution
    strip.png                rows: input | ground truth (when the video has it) | prediction
    strip.gif                the same three panels side by side, over time

No Ray here; ``pipeline.decode`` imports none either.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import checkpoint_config, load_for_inference, resolve_device
from ..plots import _image, save_strip, to_uint8
from .checks import check_device, check_output_folder

# The longest prediction: time, memory and files grow with every predicted frame (measured: 0.21
# s per frame for paper-kth on one CPU thread, so 1000 frames take minutes, 10^6 days and 65 GB).
MAX_OUT_LEN = 1000
OUT_LEN_LIMIT_WHY = (
    "the prediction is rolled out one model step per frame (about 0.2 s each for paper-kth on "
    "one CPU thread), held in memory as (out_len, C, H, W) floats, and written as one PNG, one "
    f"strip column and one GIF frame per frame; {MAX_OUT_LEN} is 25 times the paper's longest "
    "horizon (40)")
OUTPUT_HOLDS = "pred/frame_NNN.png, strip.png, strip.gif"


class VideoTooShortError(ValueError):
    """The input has fewer frames than the prediction needs; names the file and the lengths."""


# ---------------------------------------------------------------------------------------------
# reading frames

def read_frames(path, *, img_size: int, channels: int, start: int = 0,
                count: int | None = None) -> tuple[np.ndarray, int]:
    """Frames [start, start + count) of a video file or frame folder, resized to ``img_size``
    and converted to ``channels`` the pipeline's way -> ((T, S, S, C) uint8, total frames).

    Fewer than ``count`` frames come back when the input ends earlier."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        return _read_frame_folder(path, img_size, channels, start, count)
    from pipeline.decode import DecodeError, IsolatedDecoder

    decoder = IsolatedDecoder(timeout_s=600)
    try:
        info = decoder.open(str(path), size=img_size, channels=channels)
        stop = info.num_frames if count is None else min(info.num_frames, start + count)
        frames = (decoder.read(start, stop) if stop > start
                  else np.zeros((0, img_size, img_size, channels), np.uint8))
        return frames, info.num_frames
    except DecodeError as e:
        raise ValueError(f"{path}: cannot decode: {e}") from None
    finally:
        decoder.close()


def _read_frame_folder(folder: Path, img_size: int, channels: int, start: int,
                       count: int | None) -> tuple[np.ndarray, int]:
    """Image files of a folder in frame-number order, as the pipeline's frame-folder source
    reads them (PIL, RGB, bilinear resize, BT.601 luma for 1 channel)."""
    from PIL import Image

    from pipeline.decode import luma
    from pipeline.sources.folder import IMAGE_EXTENSIONS, frame_files

    files = frame_files(folder)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    chosen = files[start:] if count is None else files[start:start + count]
    frames = []
    for name in chosen:
        with Image.open(folder / name) as im:
            rgb = np.asarray(im.convert("RGB").resize((img_size, img_size), Image.BILINEAR))
        frames.append(luma(rgb) if channels == 1 else rgb)
    arr = np.stack(frames) if frames else np.zeros((0, img_size, img_size, channels), np.uint8)
    return arr, len(files)


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (1, T, C, H, W) float32 in [0, 1] (the loader's conversion)."""
    x = torch.from_numpy(np.array(frames.transpose(0, 3, 1, 2)))          # a writable copy
    return x.to(torch.float32).div_(255.0)[None]


# ---------------------------------------------------------------------------------------------
# pictures

# ---------------------------------------------------------------------------------------------
# the command

def check_out_len(out_len: int | None, what: str = "out_len") -> None:
    """1 <= out_len <= MAX_OUT_LEN (None: the config's, checked once it is known)."""
    if out_len is not None and not 1 <= int(out_len) <= MAX_OUT_LEN:
        raise ValueError(f"{what} {int(out_len)} is out of range: allowed 1 to {MAX_OUT_LEN} "
                         f"frames. Why a limit: {OUT_LEN_LIMIT_WHY}")


def predict(checkpoint, input, output, *, out_len: int | None = None, start: int = 0,
            preset=None, device=None, log=print) -> dict:
    """Predict ``out_len`` (default: the config's; at most ``MAX_OUT_LEN``) frames after
    frames [start, start + short_len) of ``input`` and write the pictures into the folder
    ``output``. ``device``: None/"auto", "cpu", "cuda" or "cuda:N". Arguments are checked
    before anything is read or written.

    Returns {"prediction": (out_len, H, W, C) uint8, "input": ..., "ground_truth": ... or None,
    "frames_in_input": int, "files": {...}}.
    """
    check_out_len(out_len)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    check_device(device)
    check_output_folder(output, OUTPUT_HOLDS)
    cfg = checkpoint_config(checkpoint, preset)
    if out_len is None:
        out_len = cfg.out_len
        check_out_len(out_len, "the checkpoint's config field out_len")
    out_len = int(out_len)
    frames, total = read_frames(input, img_size=cfg.img_size, channels=cfg.channels,
                                start=start, count=cfg.short_len + out_len)
    need = start + cfg.short_len
    if total < need:
        raise VideoTooShortError(
            f"{input} has {total} frames; predicting from frame {start} needs {need} "
            f"(start {start} + short_len {cfg.short_len} from the checkpoint's config)")

    dev = resolve_device(device)
    model, cfg = load_for_inference(checkpoint, preset, dev)
    inputs, truth = frames[:cfg.short_len], frames[cfg.short_len:]
    with torch.no_grad():
        pred = model(to_clip(inputs).to(dev), out_len=out_len)[0]       # (K, C, H, W)
    pred_u8 = to_uint8(pred)
    truth = truth if len(truth) else None

    out = Path(output)
    (out / "pred").mkdir(parents=True, exist_ok=True)
    files = []
    for i, f in enumerate(pred_u8):
        p = out / "pred" / f"frame_{i + 1:03d}.png"
        _image(f, 1).convert("L" if f.shape[-1] == 1 else "RGB").save(p)
        files.append(p)
    strip_png, strip_gif = save_strip(inputs, truth, pred_u8, out, first_frame=start + 1)
    if log:
        gt = "none" if truth is None else f"{len(truth)} frames"
        log(f"{input}: {total} frames; input frames {start + 1}-{need}, predicted {out_len} "
            f"(ground truth: {gt}) -> {out}/pred/*.png, strip.png, strip.gif")
    return {"prediction": pred_u8, "input": inputs, "ground_truth": truth,
            "frames_in_input": total,
            "files": {"pred": files, "strip": strip_png, "gif": strip_gif}}
