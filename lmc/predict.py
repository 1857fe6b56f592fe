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

from .evaluate import load_for_inference, resolve_device

GIF_MS_PER_FRAME = 200


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
    from pipeline.sources.folder import IMAGE_EXTENSIONS, _frame_key

    files = sorted((p.name for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=_frame_key)
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


def to_uint8(clip: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) float in [0, 1] (clamped) -> (T, H, W, C) uint8, rounded."""
    x = clip.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return x.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# pictures

def _image(frame: np.ndarray, scale: int):
    from PIL import Image

    img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    img = img.convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _scale_for(size: int) -> int:
    return max(1, -(-64 // size))        # cells at least 64 px wide


def strip_image(rows: list[tuple[str, np.ndarray | None]], *, scale: int | None = None):
    """A labelled grid: one row per (label, (T, H, W, C) uint8 frames or None), time in columns.
    A label may carry a second, grey line after a newline."""
    from PIL import Image, ImageDraw

    size = next(f.shape[1] for _, f in rows if f is not None)
    scale = scale or _scale_for(size)
    cell, gap, label_w = size * scale, 2, 92
    cols = max(len(f) for _, f in rows if f is not None)
    canvas = Image.new("RGB", (label_w + cols * (cell + gap), len(rows) * (cell + gap)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, frames) in enumerate(rows):
        y = r * (cell + gap)
        label, _, note = label.partition("\n")
        draw.text((4, y + cell // 2 - 12), label, fill=(0, 0, 0))
        draw.text((4, y + cell // 2 + 2), note, fill=(110, 110, 110))
        if frames is None:
            draw.text((label_w + 4, y + cell // 2 - 6), "not available", fill=(150, 150, 150))
            continue
        for c, f in enumerate(frames):
            canvas.paste(_image(f, scale), (label_w + c * (cell + gap), y))
    return canvas


def gif_frames(inputs: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, *,
               scale: int | None = None, first_frame: int = 1) -> list:
    """Three panels side by side (input | ground truth | prediction) for every time step:
    during the input all show the observed frame; then the input panel holds its last frame,
    the others show the future (ground truth greyed out where the video has none).
    ``first_frame``: the input's number of the first frame, for the captions."""
    from PIL import Image, ImageDraw

    s, k = len(inputs), len(pred)
    size = inputs.shape[1]
    scale = scale or _scale_for(size)
    cell, gap, head = size * scale, 4, 14
    blank = np.full_like(inputs[0], 200)
    out = []
    for t in range(s + k):
        if t < s:
            panels, note = [inputs[t]] * 3, f"frame {first_frame + t}: observed"
        else:
            gt = truth[t - s] if truth is not None and t - s < len(truth) else blank
            panels, note = [inputs[-1], gt, pred[t - s]], f"frame {first_frame + t}: predicted"
        canvas = Image.new("RGB", (3 * cell + 2 * gap, cell + 2 * head), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, (label, f) in enumerate(zip(("input", "ground truth", "prediction"), panels)):
            canvas.paste(_image(f, scale), (i * (cell + gap), head))
            draw.text((i * (cell + gap) + 2, 1), label, fill=(0, 0, 0))
        draw.text((2, head + cell + 1), note, fill=(200, 0, 0) if t >= s else (0, 0, 0))
        out.append(canvas)
    return out


def save_strip(inputs: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, output, *,
               name: str = "strip", first_frame: int = 1) -> tuple[Path, Path]:
    """``<name>.png`` (rows: input, ground truth, prediction) and ``<name>.gif`` (the three side
    by side over time) in ``output`` from (T, H, W, C) uint8 frames; ``truth`` may be None.
    ``first_frame``: the 1-based number of the first input frame, for the labels."""
    s, k, n = first_frame, first_frame + len(inputs) - 1, len(pred)
    future = f"frames {k + 1}-{k + n}"
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    png, gif_path = out / f"{name}.png", out / f"{name}.gif"
    strip_image([(f"input\nframes {s}-{k}", inputs), (f"ground truth\n{future}", truth),
                 (f"prediction\n{future}", pred)]).save(png)
    gif = gif_frames(inputs, truth, pred, first_frame=first_frame)
    gif[0].save(gif_path, save_all=True, append_images=gif[1:], duration=GIF_MS_PER_FRAME,
                loop=0)
    return png, gif_path


# ---------------------------------------------------------------------------------------------
# the command

def predict(checkpoint, input, output, *, out_len: int | None = None, start: int = 0,
            preset=None, device=None, log=print) -> dict:
    """Predict ``out_len`` (default: the config's) frames after frames [start, start +
    short_len) of ``input`` and write the pictures into ``output``.

    Returns {"prediction": (out_len, H, W, C) uint8, "input": ..., "ground_truth": ... or None,
    "frames_in_input": int, "files": {...}}.
    """
    from .evaluate import checkpoint_config

    cfg = checkpoint_config(checkpoint, preset)
    out_len = cfg.out_len if out_len is None else int(out_len)
    if out_len < 1:
        raise ValueError(f"out_len must be >= 1, got {out_len}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
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
