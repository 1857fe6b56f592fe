"""Helpers for the pipeline tests: real encoded videos, a second decoder, bad inputs."""
from __future__ import annotations

import os
import subprocess

import numpy as np

from pipeline.synthetic import encode_avi, render_frames


def pyav_frames(path: str, size: int | None = None, gray: bool = True) -> np.ndarray:
    """Decode every frame with PyAV (an independent ffmpeg binding) -> (T, H, W, C) uint8.

    Resizing uses swscale's bilinear filter; grayscale is BT.601 luma of the RGB frame, computed
    here in floating point (the pipeline uses integer arithmetic).
    """
    import av

    with av.open(path) as container:
        frames = [f.reformat(width=size, height=size, format="rgb24", interpolation="BILINEAR")
                  .to_ndarray() if size else f.to_ndarray(format="rgb24")
                  for f in container.decode(video=0)]
    rgb = np.stack(frames)
    if not gray:
        return rgb
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.floor(y + 0.5).astype(np.uint8)[..., None]


def kth_segments(num_frames: int) -> list[tuple[int, int]]:
    """The half-open 0-based sub-sequences `write_kth_like` puts in 00sequences.txt."""
    bounds = np.linspace(0, num_frames, 5).astype(int)
    return [(a + (i > 0), b) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def expected_starts(segments, length: int, stride: int) -> list[int]:
    """Independent re-statement of the window rule: full windows inside each segment."""
    out = []
    for a, b in segments:
        s = a
        while s + length <= b:
            out.append(s)
            s += stride
    return sorted(set(out))


def write_bad_inputs(folder: str, good_avi: str) -> dict[str, str]:
    """KTH-named inputs that must be skipped -> {file name: expected words in the reason}."""
    import imageio_ffmpeg

    os.makedirs(folder, exist_ok=True)
    data = open(good_avi, "rb").read()
    bad = {}

    def put(name, payload, reason):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(payload)
        bad[name] = reason

    put("person02_boxing_d2_uncomp.avi", data[: len(data) // 2], "truncated")
    put("person02_boxing_d3_uncomp.avi", b"", "empty")
    put("person02_boxing_d4_uncomp.avi", b"this is not a video\n" * 50, "cannot open")
    zero = os.path.join(folder, "person03_boxing_d1_uncomp.avi")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi",
                    "-i", "color=c=black:s=160x120:r=25", "-frames:v", "0", "-c:v", "mpeg4",
                    zero], check=True)
    bad["person03_boxing_d1_uncomp.avi"] = "cannot open"
    encode_avi(render_frames("boxing", 3, 2, 4), os.path.join(folder, "person03_boxing_d2_uncomp.avi"))
    bad["person03_boxing_d2_uncomp.avi"] = "too short"
    big = np.repeat(np.repeat(render_frames("boxing", 3, 3, 30), 2, axis=1), 2, axis=2)
    encode_avi(big, os.path.join(folder, "person03_boxing_d3_uncomp.avi"))
    bad["person03_boxing_d3_uncomp.avi"] = "unexpected frame size 320x240"
    os.symlink(os.path.join(folder, "gone", "x.avi"),
               os.path.join(folder, "person03_boxing_d4_uncomp.avi"))
    bad["person03_boxing_d4_uncomp.avi"] = "unreadable"
    put("person99_boxing_d1_uncomp.avi", data, "file name")
    return bad
